"""Every error a user sees is a ``FiretitanError`` (and the builtin type they would expect)."""

from __future__ import annotations

import inspect
import warnings

import pytest

import firetitan_async
import firetitan_async.loops
from firetitan_async import (
    FiretitanError,
    InvalidInput,
    NotAwaited,
    Pending,
    RetryPolicy,
    ServiceSession,
    UnsupportedAwaitable,
    UsageError,
    aresult,
)
from firetitan_async._session._session import client_side
from firetitan_async.local import LocalTrainer, sft_datum

pytestmark = pytest.mark.anyio


def test_every_exported_error_derives_from_firetitan_error() -> None:
    errors = [
        getattr(firetitan_async, name)
        for name in firetitan_async.__all__
        if isinstance(getattr(firetitan_async, name), type)
        and issubclass(getattr(firetitan_async, name), BaseException)
    ]
    assert {"ProtocolError", "UsageError", "UnsupportedAwaitable"} <= {e.__name__ for e in errors}
    assert all(issubclass(e, FiretitanError) for e in errors), errors


def test_plain_misuse_raises_firetitan_errors_of_the_expected_builtin_type() -> None:
    pending: Pending[int] = Pending("op")
    with pytest.raises(UsageError) as not_done:
        pending.result()
    assert isinstance(not_done.value, RuntimeError)
    with pytest.raises(InvalidInput, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidInput, match="base_url") as insecure:
        ServiceSession("http://example.com")
    assert isinstance(insecure.value, ValueError)


async def test_a_result_attribute_asked_of_a_pending_hints_at_the_missing_await(
    local_trainer: LocalTrainer,
) -> None:
    async with ServiceSession(local_trainer.base_url) as session:
        client = await session.create_training_client("local/tiny-byte-lm", lora_rank=2)
        pending = client.forward([sft_datum("forgot await")], "cross_entropy")
        hint = r"did you forget `await`\? \(await pending\)\.metrics"
        with pytest.raises(NotAwaited, match=hint):
            pending.metrics  # noqa: B018
        with pytest.raises(AttributeError, match="forward"):  # still an AttributeError
            pending.metrics  # noqa: B018
        assert isinstance(NotAwaited("x"), FiretitanError)
        assert not hasattr(pending, "loss_fn_outputs")  # hasattr keeps working
        assert getattr(pending, "metrics", None) is None
        assert (await pending).metrics  # awaited, the result has them
    with pytest.raises(AttributeError) as dunder:
        pending.__deepcopy_hook__  # noqa: B018  # dunders and private names: a plain miss
    assert not isinstance(dunder.value, NotAwaited)


async def test_async_misuse_raises_firetitan_errors(local_trainer: LocalTrainer) -> None:
    with pytest.raises(UnsupportedAwaitable) as unsupported:
        await aresult(42)  # type: ignore[arg-type]
    assert isinstance(unsupported.value, TypeError)
    session = ServiceSession(local_trainer.base_url)
    async with session:
        with pytest.raises(UsageError, match="only once"):
            await session.__aenter__()
        await session.create_training_client("local/tiny-byte-lm", lora_rank=2)
        with pytest.raises(InvalidInput, match="already has a training client"):
            await session.create_training_client("local/tiny-byte-lm", lora_rank=2)


# -- no plumbing on the public surface (issue 16 item 5) -------------------------------------

# What a user may touch on a session: its lifetime (``async with``, ``wait_for_ready``), what it is
# connected to, the ``create_*`` methods, and tinker's checkpoint REST calls (its RestClient's,
# by tinker's names, on the session that holds the connection). Everything the clients need is
# private.
_SESSION_SURFACE = {
    "add_event_hook",
    "base_url",
    "create_base_training_client",
    "create_custom_loss",
    "create_sampling_client",
    "create_training_client",
    "create_training_client_from_state",
    "create_training_client_from_state_with_optimizer",
    "delete_checkpoint_from_tinker_path",
    "dialect",
    "events",
    "from_job",
    "get_server_capabilities",
    "get_external_weights_urls",
    "list_checkpoints",
    "list_user_checkpoints",
    "managed",
    "session_id",
    "set_checkpoint_ttl_from_tinker_path",
    "throughput",
    "wait_for_ready",
    "wait_ready",  # deprecated alias of wait_for_ready (one release)
}
_PLUMBING_NAMES = {
    "spawn_operation",
    "track_operation",
    "transport",
    "client_config",
    "codec",
    "next_sampling_session_seq_id",
    "session",
    "ops",
}

# Fireworks serverless (docs/serverless.md).
_SERVERLESS_SURFACE = {
    "create_serverless_sampler",
    "delete_training_session",
    "list_session_checkpoints",
    "promote_session_checkpoint",
    "serverless",
    "training_session_id",
    "training_session_name",
    "weights_info",
}
_SESSION_SURFACE |= _SERVERLESS_SURFACE


def _public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def _plumbing_values(obj: object) -> dict[str, str]:
    """Public attributes of ``obj`` whose value is a piece of the session's machinery."""
    import httpx

    from firetitan_async._http._transport import Transport
    from firetitan_async._session._ordered_ops import OrderedOps
    from firetitan_async.wire import dialect_named

    codecs = tuple(type(dialect_named(name)) for name in ("fireworks", "tinker"))
    machinery = (Transport, httpx.AsyncClient, OrderedOps, ServiceSession, *codecs)
    found = {}
    for name in _public(obj):
        value = getattr(obj, name)
        if isinstance(value, machinery):
            found[name] = type(value).__name__
    return found


async def test_public_surface_of_the_session_and_clients_holds_no_plumbing(
    local_trainer: LocalTrainer,
) -> None:
    assert _public(ServiceSession) == _SESSION_SURFACE
    async with ServiceSession(local_trainer.base_url, dialect="tinker") as session:
        assert _public(session) == _SESSION_SURFACE
        training = await session.create_training_client("local/tiny-byte-lm", lora_rank=2)
        sampling = await session.create_sampling_client(base_model="local/tiny-byte-lm")
        for obj in (session, training, sampling):
            assert not _public(obj) & _PLUMBING_NAMES, type(obj).__name__
            assert _plumbing_values(obj) == {}, type(obj).__name__
        # The private interface the clients use is still there (a rename would break them).
        assert training._session is sampling._session is client_side(session)


# -- consistent names; the old ones warn for one release (design.md) ------------------------

# New names this release, each exported from the package.
NEW_NAMES = {"ReplyTooLarge", "ManagedConfig", "ManagedSetup", "Cleanup", "RolloutsFailing"}
# Old name -> (the object that still carries it, its new name).
DEPRECATED_ALIASES: dict[str, tuple[object, str]] = {
    "ServiceSession.wait_ready": (ServiceSession, "wait_for_ready"),
    # It publishes policy versions (a Publisher), like DeploymentPolicy; it is not a sampler.
    "loops.TrainerSampler": (firetitan_async.loops, "TrainerPolicy"),
}
# Names in the loops package that are new this release.
NEW_LOOPS_NAMES = {
    "TrainerPolicy",
    # run_rl's schedule, rollout-failure policy, breaker error and KL penalty (issue 25).
    "KLPenalty",
    "LRSchedule",
    "RetryGroup",
    "RolloutsFailing",
    "constant",
    "cosine",
    "linear",
    "warmup_stable_decay",
}


def test_new_names_are_exported() -> None:
    assert set(firetitan_async.__all__) >= NEW_NAMES
    assert all(hasattr(firetitan_async, name) for name in NEW_NAMES)


def test_every_deprecated_alias_still_exists_next_to_its_new_name() -> None:
    assert set(firetitan_async.loops.__all__) >= NEW_LOOPS_NAMES
    for old, (owner, new) in DEPRECATED_ALIASES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert hasattr(owner, old.rsplit(".", 1)[1]) and hasattr(owner, new), old
        # An alias is not advertised: a star import or the docs list only the new name.
        assert old.rsplit(".", 1)[1] not in getattr(owner, "__all__", ()), old


def test_trainer_sampler_warns_and_is_trainer_policy() -> None:
    with pytest.warns(DeprecationWarning, match="TrainerPolicy"):
        from firetitan_async.loops import TrainerSampler
    assert TrainerSampler is firetitan_async.loops.TrainerPolicy
    with pytest.raises(AttributeError, match="NoSuchName"):
        firetitan_async.loops.NoSuchName  # noqa: B018


async def test_wait_ready_warns_and_still_waits(local_trainer: LocalTrainer) -> None:
    async with ServiceSession(local_trainer.base_url) as session:
        with pytest.warns(DeprecationWarning, match="wait_for_ready"):
            await session.wait_ready()
        await session.wait_for_ready()
        assert session.session_id


def test_sampling_calls_have_one_shape() -> None:
    """docs/architecture.md: a call in a session's ordered operations returns a ``Pending`` at
    once (it reserves its sequence id at the call); a call to a stateless endpoint is
    ``async def``. Both are awaited the same way."""
    from firetitan_async import DeploymentSampler, SamplingClient
    from firetitan_async.loops import DeploymentPolicySampler

    assert not inspect.iscoroutinefunction(SamplingClient.sample)
    assert "Pending[" in str(inspect.signature(SamplingClient.sample).return_annotation)
    for stateless in (DeploymentSampler.sample, DeploymentSampler.sample_many,
                      DeploymentPolicySampler.sample):
        assert inspect.iscoroutinefunction(stateless), stateless.__qualname__


def test_the_serverless_names_are_exported() -> None:
    # Fireworks serverless (docs/serverless.md): the session-checkpoint row type; the calls
    # are ServiceSession methods (_SESSION_SURFACE) and RetryPolicy(capacity_409=...).
    assert "SessionCheckpoint" in firetitan_async.__all__
    assert firetitan_async.SessionCheckpoint.__module__.startswith("firetitan_async.")
    assert "capacity_409" in inspect.signature(RetryPolicy).parameters
