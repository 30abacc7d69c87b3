"""The sans-IO wire codec: request bodies and reply parsing, in two dialects.

Nothing here does I/O. The shared parts are datum validation (:mod:`.validation`), chunking
and the merge of chunk results (:mod:`.chunking`), the server-side futures of
``retrieve_future`` (:mod:`.futures`) and the protobuf codecs (:mod:`.fwdbwd`, :mod:`.sample`).
Each dialect is one module with one :class:`Dialect` object: :mod:`.tinker` (the tinker SDK
0.38 wire) and :mod:`.fireworks` (the Fireworks Training SDK 1.2.30 wire).

Example::

    from firetitan_async.wire import dialect_named
    codec = dialect_named("fireworks")
    body = codec.create_session_body(user_metadata=None)
"""
