"""``examples/web_backend.py``'s front door: Host and Origin allowlists, token, JSON only.

The app's own ``Guard`` in front of the real app (the refusals never reach it, so its
lifespan, which starts a trainer, is not needed), and in front of an echoing app for what it
lets through. What a real browser does with the token is ``test_dashboard_browser.py``'s.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

pytestmark = pytest.mark.anyio

TOKEN = "guard-test-token-0123456789"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web_backend.py"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _web_backend() -> Any:
    name = "web_backend_guard"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _client(app: Any, host: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=f"http://{host}")


async def test_the_real_app_refuses_cross_site_foreign_hosts_and_missing_tokens() -> None:
    wb = _web_backend()
    app = wb.create_app("http://127.0.0.1:9", token=TOKEN)
    async with _client(app) as http:
        # What any web page can make the user's browser send: a "simple" cross-site POST.
        cross_site = await http.post(
            "/runs", content=b'{"steps": 100000}',
            headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
        )
        assert cross_site.status_code == 403
        # Same, with the token (it cannot know it): still the Origin that decides.
        foreign_origin = await http.post(
            "/runs", json={"steps": 1}, headers={**AUTH, "Origin": "http://evil.example:8000"}
        )
        assert foreign_origin.status_code == 403
        null_origin = await http.post("/runs", json={}, headers={**AUTH, "Origin": "null"})
        assert null_origin.status_code == 403
        no_token = await http.post("/runs", json={"steps": 1})
        assert no_token.status_code == 401
        wrong = await http.post("/runs", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        stop = await http.post("/runs/1/stop", json={})
        assert stop.status_code == 401
        not_json = await http.post(
            "/runs", content=b"steps=1", headers={**AUTH, "Content-Type": "text/plain"}
        )
        assert not_json.status_code == 415
        form = await http.post("/runs", data={"steps": "1"}, headers=AUTH)
        assert form.status_code == 415
    async with _client(app, host="attacker.example:8000") as rebound:  # DNS rebinding
        assert (await rebound.get("/")).status_code == 403
        assert (await rebound.get("/events")).status_code == 403
        assert (await rebound.post("/runs", json={}, headers=AUTH)).status_code == 403


async def test_what_the_guard_lets_through() -> None:
    wb = _web_backend()

    async def echo(request: Request) -> Response:
        return JSONResponse({"method": request.method, "body": (await request.body()).decode()})

    inner = Starlette(routes=[Route("/{p:path}", echo, methods=["GET", "POST"])])
    app = wb.Guard(inner, TOKEN, wb.LOOPBACK_HOSTS | {"trainer-box.lan"})
    async with _client(app) as http:
        assert (await http.get("/runs/1")).status_code == 200  # reads need no token
        same_origin = {**AUTH, "Origin": "http://127.0.0.1:8000"}
        ok = await http.post("/runs", json={"steps": 2}, headers=same_origin)
        assert ok.status_code == 200 and ok.json()["body"] == '{"steps":2}'
        charset = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
        assert (await http.post("/runs", content=b"{}", headers=charset)).status_code == 200
    for host in ("localhost:8000", "[::1]:8000", "trainer-box.lan:8000"):
        async with _client(app, host=host) as http:
            assert (await http.post("/runs", json={}, headers=AUTH)).status_code == 200, host
    async with _client(app, host="other.lan") as http:
        assert (await http.get("/")).status_code == 403
