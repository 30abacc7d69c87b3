"""Serve a small ASGI app on a free loopback port for one test (uvicorn in a thread).

For servers the tests need beside the local trainer (an echoing server, a proxy, a
throttling server): one place starts and stops them.

Example::

    with serve_on_loopback(app) as url:
        httpx.get(f"{url}/anything")
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from firetitan_async.local._lifetime import PromptServer, bind_listener


@contextmanager
def serve_on_loopback(app: Any) -> Iterator[str]:
    """``app`` served at the yielded ``http://127.0.0.1:PORT`` until the block ends."""
    sock = bind_listener("127.0.0.1", 0)
    # h11 whether or not httptools is installed (the local extra has it): the forward proxy
    # of test_proxy reads an absolute-form target from scope["path"], which only h11 keeps.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http="h11")
    server = PromptServer(config)  # stops in ~1 ms, not uvicorn's 0.15-0.2 s
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.stop_soon()
        thread.join(10)
        sock.close()
