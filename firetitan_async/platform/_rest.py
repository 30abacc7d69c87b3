"""``RestCore``: the Fireworks control plane's HTTP core, shared by ``TrainerJobs`` and
``Deployments`` (``RestClient`` is their common lifetime: each owns one core).

One ``httpx.AsyncClient`` per owner, and every request built as the Fireworks SDK 1.2.30
builds it (study §2.1): ``Content-Type: application/json`` (also on GET and DELETE),
``X-Api-Key: <key>``, ``X-Fireworks-Client-Source`` / ``X-Fireworks-Session-Id`` from
``$FIREWORKS_CLIENT_SOURCE`` / ``$FIREWORKS_SESSION_ID`` when they are well-formed, then the
caller's ``additional_headers`` (replacing same-named headers case-insensitively). No
``Authorization`` header, except on calls that ask for ``bearer=True`` (the trainer health
probe, hot-load).

The account is resolved from the key on first use with ``GET /v1/accounts?pageSize=2``
(zero or several accounts raise a :class:`~firetitan_async.FiretitanError` that says so).
Per-request timeouts are the SDK's (:data:`READ_TIMEOUT_S` for GET/DELETE,
:data:`WRITE_TIMEOUT_S` for create/resume, :data:`LONG_WRITE_TIMEOUT_S` for promotion,
:data:`HEALTHZ_TIMEOUT_S` for the probe). Retries follow the one policy (``_retry.py``)
through the one loop (``_send.send_with_retry``), with jitter and ``Retry-After`` honoured
(the SDK has neither). Failed replies become :class:`PlatformAPIError` (``google.rpc``
bodies parsed); every text passes through the one :class:`~firetitan_async._http._redact.Redactor`.

Example::

    async with RestCore(api_key, base_url="https://api.fireworks.ai") as rest:
        account = await rest.account_id()
        record = await rest.call("GET", f"/v1/accounts/{account}/rlorTrainerJobs/job-1")
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypedDict, Unpack, cast

import anyio
import httpx

from .._http._environment import API_KEY_VARS, resolve_api_key
from .._http._redact import SECRET_HEADERS, Redactor
from .._http._retry import RetryPolicy
from .._http._send import send_with_retry
from .._http._transport import check_url_security, is_loopback_url
from .._version import USER_AGENT
from ..errors import FiretitanError, InvalidInput, SessionClosed
from ._rpc_status import platform_error

__all__ = [
    "DEFAULT_BASE_URL",
    "HEALTHZ_TIMEOUT_S",
    "LONG_WRITE_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "WRITE_TIMEOUT_S",
    "RestClient",
    "RestCore",
    "RestOptions",
]

logger = logging.getLogger("firetitan_async.platform")

DEFAULT_BASE_URL: Final = "https://api.fireworks.ai"
#: GET and DELETE (the SDK's ``HTTP_READ_TIMEOUT_S``).
READ_TIMEOUT_S: Final = 30.0
#: create, resume and other POSTs (``HTTP_WRITE_TIMEOUT_S``).
WRITE_TIMEOUT_S: Final = 60.0
#: checkpoint promotion (``HTTP_LONG_WRITE_TIMEOUT_S``).
LONG_WRITE_TIMEOUT_S: Final = 300.0
#: the trainer's ``/api/v1/healthz`` probe.
HEALTHZ_TIMEOUT_S: Final = 5.0

_CLIENT_SOURCE_RE: Final = re.compile(
    r"^fireworks-training-skill(?:/[0-9A-Za-z][0-9A-Za-z._+-]{0,63})?$"
)
# The SDK's control-plane budget is 300 s of retries; ours is the same, with jitter.
_DEFAULT_RETRY: Final = RetryPolicy(
    max_attempts=8, backoff_base_s=0.5, backoff_cap_s=30.0, deadline_s=300.0
)
_TIMEOUTS: Final = {"GET": READ_TIMEOUT_S, "DELETE": READ_TIMEOUT_S}


def _client_source() -> str | None:
    value = os.environ.get("FIREWORKS_CLIENT_SOURCE")
    if not value or len(value) > 128 or not _CLIENT_SOURCE_RE.fullmatch(value):
        return None
    return value


def _session_id() -> str | None:
    value = os.environ.get("FIREWORKS_SESSION_ID")
    if not value or len(value) > 36:
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return value if str(parsed) == value.lower() else None


class RestOptions(TypedDict, total=False):
    """How a control-plane client connects: :class:`RestCore`'s keywords, which
    ``TrainerJobs`` and ``Deployments`` take too (declared once, here).

    ``base_url`` (the Fireworks API), ``account_id`` (``None``: from the key),
    ``additional_headers``, ``transport`` (replaces the network, for tests), ``retry`` and
    ``allow_insecure_http`` (``False``).

    Example::

        options: RestOptions = {"base_url": lt.control_plane_url}
        async with TrainerJobs(**options) as jobs: ...
    """

    base_url: str
    account_id: str | None
    additional_headers: Mapping[str, str] | None
    transport: httpx.AsyncBaseTransport | None
    retry: RetryPolicy | None
    allow_insecure_http: bool


_REST_OPTIONS = frozenset(RestOptions.__annotations__)


class RestCore:
    """The control plane's HTTP client: headers, account, timeouts, retries, errors.

    ``api_key`` defaults to ``$FIREWORKS_API_KEY``; it is required unless ``base_url`` is a
    loopback address (the local trainer), and never appears in a log line, repr or error.
    ``account_id=None`` resolves the account from the key on first use. Plain ``http://`` to a
    host that is not loopback is refused unless ``allow_insecure_http``. ``transport``
    replaces the network (tests).

    Example::

        async with RestCore(None, base_url=lt.control_plane_url) as rest:
            print(await rest.account_id())
    """

    def __init__(self, api_key: str | None = None, **options: Unpack[RestOptions]) -> None:
        unknown = sorted(set(options) - _REST_OPTIONS)
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        base_url = options.get("base_url", DEFAULT_BASE_URL)
        account_id = options.get("account_id")
        additional_headers = options.get("additional_headers")
        transport = options.get("transport")
        retry = options.get("retry")
        allow_insecure_http = options.get("allow_insecure_http", False)
        if account_id is not None and (
            not isinstance(account_id, str) or not account_id or "/" in account_id
        ):
            raise InvalidInput(
                "account_id", f"must be None or a bare account id, got {account_id!r}"
            )
        try:
            self.base_url = check_url_security(base_url, allow_insecure_http=allow_insecure_http)
        except ValueError as exc:
            raise InvalidInput("base_url", str(exc)) from None
        self.api_key = resolve_api_key(api_key)
        if self.api_key is None and not is_loopback_url(self.base_url):
            raise FiretitanError(
                f"no API key for {self.base_url}: pass api_key=... or set "
                f"{' or '.join(API_KEY_VARS)}"
            )
        self.allow_insecure_http = allow_insecure_http
        self.retry = retry or _DEFAULT_RETRY
        self._additional = dict(additional_headers or {})
        # Credentials passed as extra headers are secrets too (a bearer token also bare).
        extra_secrets = [v for k, v in self._additional.items() if k.lower() in SECRET_HEADERS]
        extra_secrets += [v.split(" ", 1)[1] for v in extra_secrets if " " in v]
        self.redactor = Redactor.of(self.api_key, *extra_secrets)
        self._account_id = account_id
        self._account_lock: anyio.Lock | None = None
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT},  # the SDK sends httpx's default
            timeout=httpx.Timeout(60.0),
            transport=transport,
        )
        self._closed = False

    def __repr__(self) -> str:
        key = "<redacted>" if self.api_key else None
        return (
            f"RestCore(base_url={self.base_url!r}, account_id={self._account_id!r}, api_key={key})"
        )

    async def __aenter__(self) -> RestCore:
        self.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client; later calls raise :class:`~firetitan_async.SessionClosed`."""
        self._closed = True
        await self._client.aclose()

    def check_open(self) -> None:
        """Raise :class:`~firetitan_async.SessionClosed` after :meth:`aclose`."""
        if self._closed:
            raise SessionClosed("this control-plane client has been closed")

    @property
    def known_account_id(self) -> str | None:
        """The account id if given or already resolved, else ``None`` (no request)."""
        return self._account_id

    # -- headers and account ---------------------------------------------------------------

    def headers(self, *, bearer: bool = False, **extra: str) -> dict[str, str]:
        """The headers of one request, as the SDK sends them (see the module docstring).

        Example::

            rest.headers(bearer=True)   # X-Api-Key and Authorization: Bearer (health probe)
        """
        headers: dict[str, str] = {"Content-Type": "application/json"}
        if self.api_key:
            headers["X-Api-Key"] = self.api_key
        if source := _client_source():
            headers["X-Fireworks-Client-Source"] = source
        if session := _session_id():
            headers["X-Fireworks-Session-Id"] = session
        if self._additional:
            explicit = {name.lower() for name in self._additional}
            headers = {k: v for k, v in headers.items() if k.lower() not in explicit}
            headers.update(self._additional)
        if bearer and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra)
        return headers

    async def account_id(self) -> str:
        """The account id: as given, or resolved once from the key (``GET /v1/accounts``).

        Example::

            account = await rest.account_id()     # "my-account"
        """
        if self._account_id is not None:
            return self._account_id
        if self._account_lock is None:
            self._account_lock = anyio.Lock()
        async with self._account_lock:
            if self._account_id is None:
                self._account_id = await self._resolve_account_id()
        return self._account_id

    async def _resolve_account_id(self) -> str:
        reply = await self.call("GET", "/v1/accounts", params={"pageSize": 2})
        accounts = reply.get("accounts") if isinstance(reply, dict) else None
        if not isinstance(accounts, list) or not accounts:
            raise FiretitanError(
                f"the API key is not associated with any Fireworks account ({self.base_url}); "
                "check the key, or pass account_id=..."
            )
        names = [
            str(a.get("name", "")).removeprefix("accounts/") if isinstance(a, dict) else "?"
            for a in accounts
        ]
        if len(accounts) > 1:
            raise FiretitanError(
                f"the API key has access to several accounts ({', '.join(names)}, ...): "
                "pass account_id=... to choose one"
            )
        if not names[0] or names[0] == "?" or "/" in names[0]:
            raise FiretitanError(f"malformed account listing: {reply!r:.200}")
        logger.info("resolved the account from the API key: %s", names[0])
        return names[0]

    # -- requests --------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | Sequence[tuple[str, str | int]] | None = None,
        timeout: float | None = None,
        replay_safe: bool | None = None,
        bearer: bool = False,
        headers: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
        accept: Callable[[httpx.Response, int], bool] | None = None,
    ) -> httpx.Response:
        """One control-plane request through the retry loop; returns the final reply.

        ``url`` is a path under ``base_url`` or an absolute URL (another host of the platform,
        e.g. a hot-load endpoint). ``replay_safe`` defaults to true for GET/DELETE/PATCH and
        false for POST (see :func:`~firetitan_async._http._send.send_with_retry`). ``timeout``
        defaults to the SDK's for the method. A reply that ``accept`` takes is returned as
        is; any other non-2xx raises :class:`PlatformAPIError`.

        Example::

            response = await rest.request("DELETE", path, accept=lambda r, n: r.status_code == 404)
        """
        self.check_open()
        if url.startswith(("http://", "https://")):
            try:
                check_url_security(url, allow_insecure_http=self.allow_insecure_http)
            except ValueError as exc:
                raise InvalidInput("url", str(exc)) from None
        all_headers = self.headers(bearer=bearer)
        if headers:
            all_headers.update(headers)
        content = None if json_body is None else json.dumps(json_body).encode()
        request = self._client.build_request(
            method,
            url,
            content=content,
            params=cast(Any, params),  # a mapping or (key, value) pairs, as httpx takes them
            headers=all_headers,
            timeout=timeout if timeout is not None else _TIMEOUTS.get(method, WRITE_TIMEOUT_S),
        )
        return await send_with_retry(
            self._client,
            request,
            policy=self.retry,
            redactor=self.redactor,
            replay_safe=method != "POST" if replay_safe is None else replay_safe,
            max_attempts=max_attempts,
            accept=accept,
            error=platform_error,
            log=logger,
        )

    async def call(
        self,
        method: str,
        url: str,
        **kwargs: Any,
    ) -> Any:
        """:meth:`request`, then the reply's JSON (``{}`` for an empty body).

        Example::

            reply = await rest.call("GET", "/v1/accounts", params={"pageSize": 2})
        """
        return self.json_of(await self.request(method, url, **kwargs))

    async def list_all(
        self, path: str, keys: Sequence[str], *, page_size: int | str, what: str
    ) -> list[Any]:
        """Every item of a paged listing: ``GET path?pageSize=N[&pageToken=T]`` until a page
        has no ``nextPageToken``. A page's items are under the first of ``keys`` it has; a
        malformed page, or a token that repeats, raises :class:`FiretitanError` naming ``what``.

        Example::

            records = await rest.list_all(path, ["deployments"], page_size=200,
                                          what="deployment listing")
        """
        items: list[Any] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            params: dict[str, str | int] = {"pageSize": page_size}
            if token:
                params["pageToken"] = token
            reply = await self.call("GET", path, params=params)
            if not isinstance(reply, dict):
                raise FiretitanError(f"malformed {what}: {reply!r:.200}")
            page: Any = next((reply[key] for key in keys if reply.get(key)), [])
            if not isinstance(page, list):
                raise FiretitanError(f"malformed {what}: {keys[0]!r} is not a list: {page!r:.200}")
            items.extend(page)
            token = reply.get("nextPageToken") or reply.get("next_page_token") or None
            if token is None:
                return items
            if not isinstance(token, str) or token in seen:
                raise FiretitanError(f"{what}: the page token {token!r:.100} repeats")
            seen.add(token)

    def json_of(self, response: httpx.Response) -> Any:
        """The JSON of a reply (``{}`` when empty), every secret in it redacted (a server may
        echo what it was sent, and the value ends up in records, logs and errors);
        :class:`FiretitanError` if it is not JSON."""
        if not response.content:
            return {}
        try:
            return self.redactor.value(response.json())
        except ValueError:
            raise FiretitanError(
                f"{response.request.method} {response.request.url.path}: expected JSON, got "
                f"{response.headers.get('content-type', 'no content type')}: "
                f"{self.redactor.cut(response.text, 200)!r}"
            ) from None

    async def probe(self, url: str, *, timeout: float = HEALTHZ_TIMEOUT_S) -> int | None:
        """GET ``url`` once with ``X-Api-Key`` and ``Authorization: Bearer`` (the SDK's health
        probe): the HTTP status, or ``None`` when the server could not be reached.

        Example::

            ready = await rest.probe(f"{endpoint.base_url}/api/v1/healthz") == 200
        """
        self.check_open()
        try:
            check_url_security(url, allow_insecure_http=self.allow_insecure_http)
        except ValueError as exc:
            raise InvalidInput("url", str(exc)) from None
        try:
            response = await self._client.get(
                url, headers=self.headers(bearer=True), timeout=timeout
            )
        except httpx.TransportError as exc:
            logger.debug("probe %s: %s", url, self.redactor.exception(exc))
            return None
        return response.status_code


class RestClient:
    """The lifetime of a control-plane client built on one :class:`RestCore` it owns
    (``TrainerJobs``, ``Deployments``): ``async with`` checks it is open and closes it on exit,
    :meth:`aclose` closes it, and ``base_url`` is the core's.

    Example::

        class Models(RestClient):
            def __init__(self, api_key: str | None = None) -> None:
                super().__init__(RestCore(api_key))
    """

    def __init__(self, rest: RestCore) -> None:
        self._rest = rest
        self.base_url = rest.base_url

    @property
    def api_key(self) -> str | None:
        """The key this client sends (a session on one of its jobs sends it too; never in a
        repr or an error)."""
        return self._rest.api_key

    async def __aenter__(self) -> Self:
        self._rest.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client; later calls raise :class:`~firetitan_async.SessionClosed`."""
        await self._rest.aclose()

