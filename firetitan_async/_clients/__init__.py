"""The clients: training, sampling and deployment sampling, and the values they return.

Owns :class:`~firetitan_async.TrainingClient` (:mod:`._training`),
:class:`~firetitan_async.SamplingClient` (:mod:`._sampling`),
:class:`~firetitan_async.DeploymentSampler` and its concurrency controllers
(:mod:`._deployment_sampler`, :mod:`._concurrency`), client-side custom losses
(:mod:`._custom_loss`), snapshot and checkpoint values (:mod:`._snapshots`) and the Fireworks
SDK's value types accepted in place of tinker's (:mod:`._fireworks_types`).

May import: :mod:`firetitan_async._session`, :mod:`firetitan_async._http`,
:mod:`firetitan_async.wire`, ``errors``, ``_sdk_private``, ``_version``.

Example::

    client = await session.create_lora_training_client(base_model="local/tiny-byte-lm")
    result = await client.forward_backward(data, "cross_entropy")
"""
