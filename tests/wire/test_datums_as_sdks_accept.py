"""Datums as the SDKs accept them: integer ``weights`` and the Fireworks SDK's
``ModelInput.from_ints(..., routing_matrices=...)`` (router replay), against the local trainer
behind a recording proxy, compared with what the unmodified Fireworks SDK 1.2.30 sends for the
same data (asyncio and trio for ours).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import pytest
from fireworks.training.sdk import FiretitanServiceClient
from fireworks.training.sdk import types as ft
from tinker import types

from firetitan_async import APIStatusError, InvalidInput, ServiceSession
from firetitan_async.local import LocalTrainer
from firetitan_async.local._recorder import Recorder
from firetitan_async.wire.fireworks import estimate_datum_bytes

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
KEY = "fw-datums-key-0123456789"
SEED = 7
TEXTS = ["integer weights", "as the cookbook's RL data"]
ADAM = {"learning_rate": 5e-2}


def _parts(text: str) -> tuple[list[int], list[int], np.ndarray]:
    tokens = list(text.encode())
    mask = np.asarray([i % 4 != 0 for i in range(len(tokens) - 1)], dtype=np.int64)
    return tokens[:-1], tokens[1:], mask


def int_batch() -> list[types.Datum]:
    return [
        types.Datum(
            model_input=types.ModelInput.from_ints(inputs),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(np.asarray(targets)),
                "weights": types.TensorData.from_numpy(mask),
            },
        )
        for inputs, targets, mask in map(_parts, TEXTS)
    ]


def float_batch() -> list[types.Datum]:
    return [
        types.Datum(
            model_input=types.ModelInput.from_ints(inputs),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(np.asarray(targets)),
                "weights": types.TensorData.from_numpy(mask.astype(np.float32)),
            },
        )
        for inputs, targets, mask in map(_parts, TEXTS)
    ]


def _matrices(n: int) -> list[str]:
    return [base64.b64encode(bytes([i % 256, 7])).decode() for i in range(n)]


def routed(make: Any = ft.Datum) -> Any:
    inputs, targets, mask = _parts(TEXTS[0])
    return make(
        model_input=ft.ModelInput.from_ints(inputs, routing_matrices=_matrices(len(inputs))),
        loss_fn_inputs={"target_tokens": np.asarray(targets), "weights": mask},
    )


@attrs.frozen
class SdkRun:
    fwdbwd: tuple[dict[str, Any], ...]  # the forward_backward_input of each call
    losses: tuple[float, ...]


def _inputs(rec: Recorder) -> tuple[dict[str, Any], ...]:
    return tuple(
        ex.body["forward_backward_input"] for ex in rec.records if ex.endpoint == "forward_backward"
    )


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=3, api_key=KEY) as lt:
        yield lt


@pytest.fixture(scope="module")
def sdk_run(trainer: LocalTrainer) -> SdkRun:
    """The unmodified Fireworks SDK: integer weights, a step, then a routed datum."""
    with Recorder(trainer.base_url) as rec:
        svc = FiretitanServiceClient(base_url=rec.base_url, api_key=KEY)
        try:
            tc = svc.create_training_client(MODEL, lora_rank=0, seed=SEED)
            sdk_batch = [
                ft.Datum(model_input=ft.ModelInput.from_ints(d.model_input.to_ints()),
                         loss_fn_inputs={k: v.to_numpy() for k, v in d.loss_fn_inputs.items()})  # type: ignore[misc]
                for d in int_batch()
            ]
            first = tc.forward_backward(sdk_batch, "cross_entropy").result()
            tc.optim_step(ft.AdamParams(**ADAM)).result()
            after = tc.forward(sdk_batch, "cross_entropy").result()
            with pytest.raises(Exception, match="routing replay is not supported"):
                tc.forward_backward([routed()], "cross_entropy").result()
        finally:
            svc.close()
        return SdkRun(
            fwdbwd=_inputs(rec),
            losses=(first.metrics["loss:sum"], after.metrics["loss:sum"]),
        )


async def _run_ours(url: str, batch: list[types.Datum]) -> tuple[float, float]:
    async with ServiceSession(url, api_key=KEY, dialect="fireworks") as session:
        client = await session.create_training_client(MODEL, lora_rank=0, seed=SEED)
        first = await client.forward_backward(batch, "cross_entropy")
        await client.optim_step(types.AdamParams(**ADAM))
        after = await client.forward(batch, "cross_entropy")
    return first.metrics["loss:sum"], after.metrics["loss:sum"]


async def test_integer_weights_are_sent_and_train_as_the_sdk_does(
    trainer: LocalTrainer, sdk_run: SdkRun
) -> None:
    with Recorder(trainer.base_url) as rec:
        ours = await _run_ours(rec.base_url, int_batch())
    sent = _inputs(rec)[0]
    assert sent == sdk_run.fwdbwd[0]  # the same JSON, int64 weights and all
    assert sent["data"][0]["loss_fn_inputs"]["weights"]["dtype"] == "int64"
    assert ours == sdk_run.losses
    as_floats = await _run_ours(trainer.base_url, float_batch())
    assert as_floats == ours  # the same weights, whatever their dtype


async def test_integer_weights_in_the_tinker_dialect(trainer: LocalTrainer) -> None:
    async with ServiceSession(trainer.base_url, api_key=KEY, dialect="tinker") as session:
        client = await session.create_training_client(MODEL, seed=SEED)
        ints = await client.forward(int_batch(), "cross_entropy")
        floats = await client.forward(float_batch(), "cross_entropy")
    assert ints.metrics["loss:sum"] == floats.metrics["loss:sum"]


@pytest.mark.parametrize("make", [ft.Datum, types.Datum], ids=["sdk-datum", "tinker-datum"])
async def test_routing_matrices_are_sent_as_the_sdk_sends_them(
    trainer: LocalTrainer, sdk_run: SdkRun, make: Any
) -> None:
    with Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, api_key=KEY, dialect="fireworks") as session:
            client = await session.create_training_client(MODEL, lora_rank=0, seed=SEED)
            # the local model has no experts: the trainer refuses, after reading them
            with pytest.raises(APIStatusError, match="routing replay is not supported"):
                await client.forward_backward([routed(make)], "cross_entropy")
    sent = _inputs(rec)
    assert sent == sdk_run.fwdbwd[1:]
    assert sent[0]["data"][0]["model_input"]["routing_matrices"] == _matrices(
        len(_parts(TEXTS[0])[0])
    )


def test_the_chunking_estimate_counts_routing_bytes_as_the_sdk() -> None:
    from firetitan_async._clients._fireworks_types import to_tinker_data

    datum = to_tinker_data([routed()])[0]
    plain = types.Datum(
        model_input=types.ModelInput.from_ints(datum.model_input.to_ints()),
        loss_fn_inputs=datum.loss_fn_inputs,
    )
    routing = ',"routing_matrices":' + '["' + '","'.join(_matrices(len(_parts(TEXTS[0])[0]))) + '"]'
    assert estimate_datum_bytes(datum) - estimate_datum_bytes(plain) == len(routing)


async def test_what_cannot_be_routed_is_refused_before_sending(trainer: LocalTrainer) -> None:
    inputs, targets, mask = _parts(TEXTS[0])
    short = ft.Datum(
        model_input=ft.ModelInput.from_ints(inputs, routing_matrices=_matrices(3)),
        loss_fn_inputs={"target_tokens": np.asarray(targets), "weights": mask},
    )
    not_str = ft.Datum(
        model_input=ft.ModelInput.model_construct(
            chunks=ft.ModelInput.from_ints(inputs).chunks, routing_matrices=[1] * len(inputs)
        ),
        loss_fn_inputs={"target_tokens": np.asarray(targets), "weights": mask},
    )
    with Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, api_key=KEY, dialect="fireworks") as session:
            client = await session.create_training_client(MODEL, lora_rank=0, seed=SEED)
            before = len(rec.records)
            with pytest.raises(InvalidInput, match=r"data\[1\].*3 matrices, model_input has"):
                client.forward_backward([int_batch()[0], short], "cross_entropy")
            with pytest.raises(InvalidInput, match="routing_matrices: must be base64 strings"):
                client.forward_backward([not_str], "cross_entropy")
            assert len(rec.records) == before
        async with ServiceSession(rec.base_url, api_key=KEY, dialect="tinker") as session:
            client = await session.create_training_client(MODEL, seed=SEED)
            before = len(rec.records)
            with pytest.raises(InvalidInput, match="Fireworks-only"):
                client.forward_backward([routed()], "cross_entropy")
            assert len(rec.records) == before
