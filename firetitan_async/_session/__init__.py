"""The session and its futures: what every client runs on.

Owns :class:`~firetitan_async.ServiceSession` (:mod:`._session`: the HTTP client, the
server-side session, its heartbeat and the tasks of its operations), the future every operation
returns (:mod:`._pending`), ordered operations (:mod:`._ordered_ops`), operation tracking,
deadlines and events (:mod:`._tracking`, :mod:`._deadlines`, :mod:`._events`) and what is
measured from events (:mod:`._throughput`, :mod:`._otel`).

May import: :mod:`firetitan_async._http`, :mod:`firetitan_async.wire`, ``errors``,
``_version``. The clients use the session through its protocol, not its private members.

Example::

    from firetitan_async import ServiceSession

    async with ServiceSession(base_url, api_key=key) as session:
        client = await session.create_lora_training_client(base_model="local/tiny-byte-lm")
"""
