"""Profiling one worker run with pyinstrument (installed on demand: ``pip install pyinstrument``).

Example::

    python benchmarks/run.py --worker throughput --client ours --url URL --profile prof.txt
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["profiled"]


@contextmanager
def profiled(path: str) -> Iterator[None]:
    """Profile the block (all threads' time as seen from the main thread, async-aware) and
    write pyinstrument's text report to ``path`` (and an HTML twin next to it)."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(path).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        Path(path).with_suffix(".html").write_text(profiler.output_html())
