"""The HTTP layer: every byte the library sends or receives passes through here.

Owns the transport (:mod:`._transport`: one ``httpx.AsyncClient`` per session, auth headers,
timeouts, the retrieve-future long-poll), the sans-IO HTTP/1.1 codec and its pooled transport
(:mod:`._http11`, :mod:`._http11_transport`), CPU turns (:mod:`._cpu_turns`), the one retry
loop and policy (:mod:`._send`, :mod:`._retry`), the one redactor (:mod:`._redact`), where the
API key and the service URLs come from (:mod:`._environment`: one rule) and what the transport
reports about an exchange (:mod:`._progress`: the session's tracker listens).

May import: ``firetitan_async.errors``, ``firetitan_async._version``, :mod:`firetitan_async.wire`
(bodies and reply classification). Nothing above it: no session, no client, no CLI.

Example::

    from firetitan_async._http._retry import RetryPolicy
    policy = RetryPolicy(max_attempts=3)
"""
