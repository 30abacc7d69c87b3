"""The local trainer's numerical core: gradients, losses, AdamW, LoRA, state and sampling."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from firetitan_async.local._losses import LOSS_FUNCTIONS, REQUIRED_INPUTS
from firetitan_async.local._model import (
    EOS_TOKEN,
    MODEL_NAME,
    VOCAB_SIZE,
    AdamConfig,
    DatumArrays,
    ModelInputError,
    TinyByteLM,
    _unique_rows,
    context_indices,
    logits_from_weights,
)
from firetitan_async.local._sampler import SampledSequence, prompt_logprobs, sample

TEXT = b"the quick brown fox jumps over the lazy dog. pack my box with five dozen jugs."


def _tokens(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64)


def sft(text: bytes, weight: float = 1.0) -> DatumArrays:
    t = _tokens(text)
    w = np.full(len(t) - 1, weight, dtype=np.float32)
    return DatumArrays(tokens=t[:-1], inputs={"target_tokens": t[1:], "weights": w})


def rl_datum(model: TinyByteLM, text: bytes, rng: np.random.Generator) -> DatumArrays:
    """An RL datum whose sampler logprobs sit near the model's (ratios around 1, some clipped)."""
    t = _tokens(text)
    d = sft(text)
    lp = model.forward_backward([d], "cross_entropy", backward=False).logprobs[0]
    n = len(t) - 1
    q = (lp + rng.normal(0.0, 0.25, n)).astype(np.float32)
    adv = rng.normal(0.0, 1.0, n).astype(np.float32)
    return DatumArrays(
        tokens=t[:-1], inputs={"target_tokens": t[1:], "logprobs": q, "advantages": adv}
    )


def batch_for(loss_fn: str, model: TinyByteLM, seed: int = 0) -> list[DatumArrays]:
    rng = np.random.default_rng(seed)
    texts = [TEXT[:30], TEXT[30:52]]
    if loss_fn == "cross_entropy":
        return [
            DatumArrays(
                tokens=sft(t).tokens,
                inputs={
                    "target_tokens": sft(t).inputs["target_tokens"],
                    "weights": rng.uniform(-0.5, 1.5, len(t) - 1).astype(np.float32),
                },
            )
            for t in texts
        ]
    return [rl_datum(model, t, rng) for t in texts]


def full_state(model: TinyByteLM) -> dict[str, np.ndarray]:
    state = model.state(optimizer=True)
    state.update({f"grad/{k}": v for k, v in model.gradients().items()})
    return state


def assert_states_equal(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def train(model: TinyByteLM, batch: list[DatumArrays], steps: int, lr: float = 1e-2) -> list[float]:
    losses = []
    for _ in range(steps):
        out = model.forward_backward(batch, "cross_entropy", backward=True)
        model.optim_step(AdamConfig(learning_rate=lr))
        losses.append(out.metrics["loss:sum"])
    return losses


# ------------------------------------------------------------------ gradients


def _randomize_trainable(model: TinyByteLM, seed: int) -> None:
    """Move the trained parameters off their init (LoRA B is zero there, hiding dL/dA)."""
    rng = np.random.default_rng(seed)
    state = model.state(optimizer=False)
    for k in model.trainable_weights():
        key = f"param/{k}"
        state[key] = state[key] + 0.05 * rng.standard_normal(state[key].shape)
    model.load_state(state, optimizer=False)


@pytest.mark.parametrize("lora_rank", [0, 4])
@pytest.mark.parametrize("loss_fn", sorted(LOSS_FUNCTIONS))
def test_gradients_match_finite_differences(loss_fn: str, lora_rank: int) -> None:
    model = TinyByteLM(seed=3, lora_rank=lora_rank, dtype=np.float64)
    _randomize_trainable(model, seed=4)
    batch = batch_for(loss_fn, model)
    config = {"beta": 0.3} if loss_fn == "dro" else None

    base = model.state(optimizer=False)
    fd_batch, fd_loss = batch, loss_fn
    if loss_fn == "cispo":  # the clipped ratio is a stop-gradient coefficient: freeze it,
        # i.e. check against cross_entropy with weights = clip(ratio)·A (the same gradient)
        lps = model.forward_backward(batch, loss_fn, backward=False).logprobs
        fd_batch, fd_loss = [], "cross_entropy"
        for d, lp in zip(batch, lps, strict=True):
            ratio = np.exp(lp.astype(np.float64) - d.inputs["logprobs"])
            w = np.clip(ratio, 0.8, 1.2) * d.inputs["advantages"]
            fd_batch.append(DatumArrays(d.tokens, {**d.inputs, "weights": w}))
        fd_config = None
    else:
        fd_config = config

    def loss_at(state: Mapping[str, np.ndarray]) -> float:
        model.load_state(state, optimizer=False)
        return model.forward_backward(fd_batch, fd_loss, fd_config, backward=False).metrics[
            "loss:sum"
        ]

    model.forward_backward(batch, loss_fn, config, backward=True)
    grads = model.gradients()
    assert set(grads) == set(model.trainable_weights())
    rng = np.random.default_rng(5)
    eps = 1e-6
    for name, g in grads.items():
        direction = rng.standard_normal(g.shape)
        plus, minus = dict(base), dict(base)
        plus[f"param/{name}"] = base[f"param/{name}"] + eps * direction
        minus[f"param/{name}"] = base[f"param/{name}"] - eps * direction
        numeric = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        analytic = float((g * direction).sum())
        assert abs(analytic) > 1e-6, name  # a zero gradient would pass vacuously
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-7), name


def test_ppo_clipped_tokens_get_no_gradient() -> None:
    model = TinyByteLM(seed=0)
    d = sft(TEXT[:20])
    lp = model.forward_backward([d], "cross_entropy", backward=False).logprobs[0]
    n = lp.shape[0]
    # ratio = 2 (above 1.2) with A > 0: the clipped term is the minimum -> no gradient
    inputs = {
        "target_tokens": d.inputs["target_tokens"],
        "logprobs": (lp - np.log(2.0)).astype(np.float32),
        "advantages": np.ones(n, np.float32),
    }
    out = model.forward_backward([DatumArrays(d.tokens, inputs)], "ppo", backward=True)
    assert out.metrics["loss:sum"] == pytest.approx(-1.2 * n, rel=1e-5)
    assert all(not g.any() for g in model.gradients().values())
    # with A < 0 the unclipped term is the minimum -> gradient flows
    inputs["advantages"] = -inputs["advantages"]
    out = model.forward_backward([DatumArrays(d.tokens, inputs)], "ppo", backward=True)
    assert out.metrics["loss:sum"] == pytest.approx(2.0 * n, rel=1e-4)
    assert any(g.any() for g in model.gradients().values())


def test_loss_values_follow_documented_formulas() -> None:
    model = TinyByteLM(seed=1)
    rng = np.random.default_rng(0)
    [d] = [rl_datum(model, TEXT[:40], rng)]
    lp = model.forward_backward([d], "importance_sampling", backward=False).logprobs[0]
    lp64 = lp.astype(np.float64)
    q = d.inputs["logprobs"].astype(np.float64)
    a = d.inputs["advantages"].astype(np.float64)
    ratio = np.exp(lp64 - q)
    clipped = np.clip(ratio, 0.9, 1.1)
    expected = {
        "importance_sampling": -(ratio * a).sum(),
        "ppo": -np.minimum(ratio * a, clipped * a).sum(),
        "cispo": -(clipped * a * lp64).sum(),
        "dro": -(lp64 * a - 0.5 * 0.1 * (lp64 - q) ** 2).sum(),
    }
    configs: dict[str, dict[str, float | str]] = {
        "ppo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
        "cispo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
        "dro": {"beta": 0.1},
    }
    for loss_fn, value in expected.items():
        out = model.forward_backward([d], loss_fn, configs.get(loss_fn), backward=False)
        assert out.metrics["loss:sum"] == pytest.approx(value, rel=1e-5), loss_fn
        assert all(k.split(":")[1] in {"sum", "mean", "min", "max"} for k in out.metrics)


# ------------------------------------------------------------- accumulation


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_accumulated_gradients_equal_one_big_batch(lora_rank: int) -> None:
    a, b = TinyByteLM(seed=7, lora_rank=lora_rank), TinyByteLM(seed=7, lora_rank=lora_rank)
    part1, part2 = [sft(TEXT[:25])], [sft(TEXT[25:60]), sft(TEXT[10:20])]
    adam = AdamConfig(learning_rate=1e-2)
    for _ in range(2):  # two rounds so LoRA B is non-zero in the second
        a.forward_backward(part1, "cross_entropy", backward=True)
        a.forward_backward(part2, "cross_entropy", backward=True)
        b.forward_backward(part1 + part2, "cross_entropy", backward=True)
        for name, g in a.gradients().items():
            np.testing.assert_allclose(g, b.gradients()[name], rtol=1e-4, atol=1e-5)
        a.optim_step(adam)
        b.optim_step(adam)
        assert not any(g.any() for g in a.gradients().values())  # cleared
    for name, w in a.trainable_weights().items():
        np.testing.assert_allclose(w, b.trainable_weights()[name], rtol=1e-4, atol=1e-5)


def test_forward_leaves_gradients_and_weights_untouched() -> None:
    model = TinyByteLM(seed=2)
    model.forward_backward([sft(TEXT[:30])], "cross_entropy", backward=True)
    before = full_state(model)
    fwd = model.forward_backward([sft(TEXT[5:50])], "cross_entropy", backward=False)
    assert_states_equal(before, full_state(model))
    bwd = model.forward_backward([sft(TEXT[5:50])], "cross_entropy", backward=True)
    assert np.array_equal(fwd.logprobs[0], bwd.logprobs[0])
    assert fwd.metrics == bwd.metrics
    assert fwd.logprobs[0].dtype == np.float32 and fwd.logprobs[0].shape == (44,)


# ------------------------------------------------------------------- AdamW


def _reference_adamw(
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    m: dict[str, np.ndarray],
    v: dict[str, np.ndarray],
    t: int,
    cfg: AdamConfig,
) -> float:
    """Textbook AdamW (PyTorch's), float64; returns the pre-clip gradient norm."""
    norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())))
    coef = min(1.0, cfg.grad_clip_norm / (norm + 1e-6)) if cfg.grad_clip_norm > 0 else 1.0
    for k in params:
        g = grads[k].astype(np.float64) * coef
        params[k] = params[k] * (1 - cfg.learning_rate * cfg.weight_decay)
        m[k] = cfg.beta1 * m[k] + (1 - cfg.beta1) * g
        v[k] = cfg.beta2 * v[k] + (1 - cfg.beta2) * g * g
        m_hat = m[k] / (1 - cfg.beta1**t)
        v_hat = v[k] / (1 - cfg.beta2**t)
        params[k] = params[k] - cfg.learning_rate * m_hat / (np.sqrt(v_hat) + cfg.eps)
    return norm


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_adamw_matches_reference(lora_rank: int) -> None:
    model = TinyByteLM(seed=11, lora_rank=lora_rank)
    ref = {k: w.astype(np.float64) for k, w in model.trainable_weights().items()}
    m = {k: np.zeros_like(w) for k, w in ref.items()}
    v = {k: np.zeros_like(w) for k, w in ref.items()}
    configs = [
        AdamConfig(learning_rate=1e-2, weight_decay=0.1, grad_clip_norm=0.5),  # clips
        AdamConfig(learning_rate=5e-3, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.01),
        AdamConfig(learning_rate=1e-2, grad_clip_norm=1e6),  # clip inactive
    ]
    for t, cfg in enumerate(configs, start=1):
        model.forward_backward([sft(TEXT[: 20 + 10 * t])], "cross_entropy", backward=True)
        grads = model.gradients()
        norm = _reference_adamw(ref, grads, m, v, t, cfg)
        metrics = model.optim_step(cfg)
        assert metrics["grad_norm:mean"] == pytest.approx(norm, rel=1e-6)
        assert metrics["learning_rate:mean"] == cfg.learning_rate
        if t == 1:
            assert norm > 0.5  # the clip was active
        for k, w in model.trainable_weights().items():
            np.testing.assert_allclose(w, ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert model.optim_steps == 3


def test_optim_step_rejects_bad_adam_params_without_change() -> None:
    model = TinyByteLM(seed=0)
    model.forward_backward([sft(TEXT[:20])], "cross_entropy", backward=True)
    before = full_state(model)
    for cfg, field in [
        (AdamConfig(learning_rate=-1.0), "adam_params.learning_rate"),
        (AdamConfig(beta2=1.0), "adam_params.beta2"),
        (AdamConfig(eps=float("nan")), "adam_params.eps"),
    ]:
        with pytest.raises(ModelInputError) as info:
            model.optim_step(cfg)
        assert info.value.field == field
        assert_states_equal(before, full_state(model))


# ------------------------------------------------------ determinism, LoRA, learning


def _run(seed: int, lora_rank: int) -> dict[str, np.ndarray]:
    model = TinyByteLM(seed=seed, lora_rank=lora_rank)
    train(model, [sft(TEXT[:40]), sft(TEXT[40:])], steps=5)
    model.forward_backward([sft(TEXT[3:33])], "cross_entropy", backward=True)
    return full_state(model)


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_same_seed_and_ops_give_bit_identical_state(lora_rank: int) -> None:
    assert_states_equal(_run(1, lora_rank), _run(1, lora_rank))
    other = _run(2, lora_rank)
    assert not np.array_equal(_run(1, lora_rank)["param/w1"], other["param/w1"])


def test_lora_starts_at_base_and_trains_only_adapters() -> None:
    base, lora = TinyByteLM(seed=5), TinyByteLM(seed=5, lora_rank=8)
    assert lora.lora_rank == 8 and base.lora_rank == 0
    for k, w in base.sampler_weights().items():
        assert np.array_equal(w, lora.sampler_weights()[k]), k
        assert w.dtype == np.float32
    assert set(lora.trainable_weights()) == {
        "w1.lora_a",
        "w1.lora_b",
        "w2.lora_a",
        "w2.lora_b",
    }
    assert set(base.trainable_weights()) == {"embed", "w1", "b1", "w2", "b2"}
    before = lora.state(optimizer=False)
    train(lora, [sft(TEXT)], steps=3)
    after = lora.state(optimizer=False)
    for name in ("embed", "w1", "b1", "w2", "b2"):
        assert np.array_equal(before[f"param/{name}"], after[f"param/{name}"]), name
    assert after["param/w2.lora_b"].any()
    assert not np.array_equal(base.sampler_weights()["w2"], lora.sampler_weights()["w2"])


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_cross_entropy_training_reduces_loss(lora_rank: int) -> None:
    model = TinyByteLM(seed=0, lora_rank=lora_rank)
    losses = train(model, [sft(TEXT)], steps=50)
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_importance_sampling_raises_probability_of_rewarded_bytes() -> None:
    model = TinyByteLM(seed=0)
    prompt = _tokens(b"say: ")
    vowels = np.array([ord(c) for c in "aeiou"])
    rng = np.random.default_rng(0)

    def p_vowel() -> float:
        logits = logits_from_weights(model.sampler_weights(), context_indices(prompt))[-1]
        p = np.exp(logits - logits.max())
        return float(p[vowels].sum() / p.sum())

    start = p_vowel()
    for _ in range(25):
        seqs = sample(model.sampler_weights(), prompt, num_samples=32, max_tokens=1, rng=rng)
        rewards = np.array([float(s.tokens[0] in vowels) for s in seqs])
        advantages = rewards - rewards.mean()
        batch = [
            DatumArrays(
                tokens=prompt,
                inputs={
                    "target_tokens": np.append(prompt[1:], s.tokens[0]),
                    "logprobs": np.append(np.zeros(len(prompt) - 1), s.logprobs[0]).astype(
                        np.float32
                    ),
                    "advantages": np.append(np.zeros(len(prompt) - 1), adv).astype(np.float32),
                },
            )
            for s, adv in zip(seqs, advantages, strict=True)
        ]
        model.forward_backward(batch, "importance_sampling", backward=True)
        model.optim_step(AdamConfig(learning_rate=1e-2))
    assert p_vowel() > max(0.5, 5 * start), (start, p_vowel())


# ------------------------------------------------------------------- state


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_state_round_trip_with_optimizer(lora_rank: int) -> None:
    a = TinyByteLM(seed=1, lora_rank=lora_rank)
    train(a, [sft(TEXT)], steps=3)
    buf = io.BytesIO()
    arrays: dict[str, Any] = a.state(optimizer=True)
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf) as npz:
        saved = {k: npz[k] for k in npz.files}
    b = TinyByteLM(seed=99, lora_rank=lora_rank)
    b.load_state(saved, optimizer=True)
    assert b.optim_steps == 3
    train(a, [sft(TEXT)], steps=2)
    train(b, [sft(TEXT)], steps=2)
    assert_states_equal(full_state(a), full_state(b))


def test_load_state_without_optimizer_resets_adam() -> None:
    a = TinyByteLM(seed=1)
    train(a, [sft(TEXT)], steps=3)
    b = TinyByteLM(seed=99)
    train(b, [sft(TEXT[:10])], steps=1)
    b.forward_backward([sft(TEXT[:10])], "cross_entropy", backward=True)
    b.load_state(a.state(optimizer=False), optimizer=False)
    state = b.state(optimizer=True)
    assert int(state["adam/step"]) == 0
    assert not any(v.any() for k, v in state.items() if k.startswith("adam/"))
    assert not any(g.any() for g in b.gradients().values())
    for k, w in a.state(optimizer=False).items():
        assert np.array_equal(w, state[k]), k
    # a fresh model loaded with the same weights behaves identically from here
    c = TinyByteLM(seed=5)
    c.load_state(a.state(optimizer=False), optimizer=False)
    train(b, [sft(TEXT)], steps=2)
    train(c, [sft(TEXT)], steps=2)
    assert_states_equal(full_state(b), full_state(c))


def test_state_arrays_are_copies() -> None:
    model = TinyByteLM(seed=0)
    state = model.state(optimizer=True)
    state["param/w1"][...] = 0.0
    model.trainable_weights()["w1"][...] = 0.0
    model.sampler_weights()["w1"][...] = 0.0
    assert model.state(optimizer=False)["param/w1"].any()


def _load_error_cases() -> list[tuple[str, Callable[[], tuple[dict[str, np.ndarray], bool]], str]]:
    full = TinyByteLM(seed=1).state(optimizer=True)
    lora = TinyByteLM(seed=1, lora_rank=2).state(optimizer=True)

    def shape() -> tuple[dict[str, np.ndarray], bool]:
        s = dict(full)
        s["param/w1"] = s["param/w1"][:, :5]
        return s, False

    def no_opt() -> tuple[dict[str, np.ndarray], bool]:
        return TinyByteLM(seed=1).state(optimizer=False), True

    def nan() -> tuple[dict[str, np.ndarray], bool]:
        s = dict(full)
        s["param/b2"] = np.full_like(s["param/b2"], np.nan)
        return s, False

    return [
        ("lora_rank", lambda: (lora, False), "state.lora_rank"),
        ("shape", shape, "state.param/w1"),
        ("no optimizer", no_opt, "state"),
        ("nan", nan, "state.param/b2"),
    ]


@pytest.mark.parametrize("case", _load_error_cases(), ids=lambda c: c[0])
def test_load_state_errors_change_nothing(
    case: tuple[str, Callable[[], tuple[dict[str, np.ndarray], bool]], str],
) -> None:
    _, make, field = case
    model = TinyByteLM(seed=3)
    train(model, [sft(TEXT)], steps=1)
    model.forward_backward([sft(TEXT[:9])], "cross_entropy", backward=True)
    before = full_state(model)
    state, optimizer = make()
    with pytest.raises(ModelInputError) as info:
        model.load_state(state, optimizer=optimizer)
    assert info.value.field == field
    assert_states_equal(before, full_state(model))


# ---------------------------------------------------------- input validation

_N = 6


def _good() -> dict[str, np.ndarray]:
    t = _tokens(b"abcdefg")
    return {
        "tokens": t[:-1],
        "target_tokens": t[1:],
        "weights": np.ones(_N, np.float32),
        "logprobs": np.full(_N, -1.0, np.float32),
        "advantages": np.ones(_N, np.float32),
    }


def _datum(**changes: np.ndarray | None) -> DatumArrays:
    fields = _good()
    fields.update(changes)  # type: ignore[arg-type]
    tokens = fields.pop("tokens")
    return DatumArrays(tokens=tokens, inputs={k: v for k, v in fields.items() if v is not None})


_NAN = np.array([1, 1, np.nan, 1, 1, 1], np.float32)
_INPUT_ERRORS: list[tuple[str, str, dict[str, object], str, int | None]] = [
    ("unknown loss", "mse", {}, "loss_fn", None),
    ("empty datum", "cross_entropy", {"tokens": np.zeros(0, np.int64)}, "model_input", 1),
    ("token too big", "cross_entropy", {"tokens": np.full(_N, 257)}, "model_input", 1),
    ("token negative", "cross_entropy", {"tokens": np.full(_N, -1)}, "model_input", 1),
    ("float tokens", "cross_entropy", {"tokens": np.ones(_N)}, "model_input", 1),
    ("2-D tokens", "cross_entropy", {"tokens": np.ones((2, 3), np.int64)}, "model_input", 1),
    (
        "target too big",
        "cross_entropy",
        {"target_tokens": np.full(_N, VOCAB_SIZE)},
        "loss_fn_inputs.target_tokens",
        1,
    ),
    ("missing weights", "cross_entropy", {"weights": None}, "loss_fn_inputs.weights", 1),
    (
        "short weights",
        "cross_entropy",
        {"weights": np.ones(_N - 1, np.float32)},
        "loss_fn_inputs.weights",
        1,
    ),
    (
        "2-D weights",
        "cross_entropy",
        {"weights": np.ones((_N, 1), np.float32)},
        "loss_fn_inputs.weights",
        1,
    ),
    ("nan weights", "cross_entropy", {"weights": _NAN}, "loss_fn_inputs.weights", 1),
    ("nan advantages", "ppo", {"advantages": _NAN}, "loss_fn_inputs.advantages", 1),
    ("inf logprobs", "dro", {"logprobs": _NAN * np.inf}, "loss_fn_inputs.logprobs", 1),
    ("missing advantages", "cispo", {"advantages": None}, "loss_fn_inputs.advantages", 1),
    (
        "ratio overflow",
        "importance_sampling",
        {"logprobs": np.full(_N, -1000.0, np.float32)},
        "loss_fn_inputs.logprobs",
        None,
    ),
]


@pytest.mark.parametrize("case", _INPUT_ERRORS, ids=lambda c: c[0])
def test_input_errors_name_field_and_datum_and_change_nothing(
    case: tuple[str, str, dict[str, np.ndarray | None], str, int | None],
) -> None:
    _, loss_fn, changes, field, index = case
    model = TinyByteLM(seed=4)
    train(model, [sft(TEXT)], steps=1)
    model.forward_backward([sft(TEXT[:9])], "cross_entropy", backward=True)
    before = full_state(model)
    batch = [_datum(), _datum(**changes)]
    with pytest.raises(ModelInputError) as info:
        model.forward_backward(batch, loss_fn, backward=True)
    assert (info.value.field, info.value.index) == (field, index)
    assert field in str(info.value)
    if index is not None:
        assert f"datum {index}" in str(info.value)
    assert_states_equal(before, full_state(model))


@pytest.mark.parametrize(
    ("loss_fn", "config", "field"),
    [
        ("cross_entropy", {"beta": 0.1}, "loss_fn_config.beta"),
        ("ppo", {"beta": 0.1}, "loss_fn_config.beta"),
        ("dro", {"clip_low_threshold": 0.5}, "loss_fn_config.clip_low_threshold"),
        ("cispo", {"clip_low_threshold": "low"}, "loss_fn_config.clip_low_threshold"),
        ("ppo", {"clip_high_threshold": float("nan")}, "loss_fn_config.clip_high_threshold"),
        ("ppo", {"clip_low_threshold": 1.5}, "loss_fn_config"),
        ("dro", {"beta": -1.0}, "loss_fn_config.beta"),
    ],
)
def test_bad_loss_config_is_rejected(
    loss_fn: str, config: dict[str, float | str], field: str
) -> None:
    model = TinyByteLM(seed=4)
    before = full_state(model)
    with pytest.raises(ModelInputError) as info:
        model.forward_backward([_datum()], loss_fn, config, backward=True)
    assert info.value.field == field
    assert_states_equal(before, full_state(model))


@pytest.mark.parametrize("rank", [-1, 257, True])
def test_bad_lora_rank_is_rejected(rank: int) -> None:
    with pytest.raises(ModelInputError) as info:
        TinyByteLM(seed=0, lora_rank=rank)
    assert info.value.field == "lora_rank"


def test_empty_batch_and_extra_inputs() -> None:
    model = TinyByteLM(seed=0)
    with pytest.raises(ModelInputError) as info:
        model.forward_backward([], "cross_entropy", backward=True)
    assert info.value.field == "data"
    # inputs a loss does not use are ignored (an RL datum can be scored with cross_entropy)
    out = model.forward_backward([_datum()], "cross_entropy", backward=False)
    assert set(out.metrics) == {"loss:sum"}
    assert REQUIRED_INPUTS["cross_entropy"] == ("target_tokens", "weights")
    assert MODEL_NAME == "local/tiny-byte-lm"


# ------------------------------------------------------------------ sampler


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    return TinyByteLM(seed=seed).sampler_weights()


def _greedy_tokens(weights: Mapping[str, np.ndarray], prompt: np.ndarray, n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        logits = logits_from_weights(weights, context_indices(np.array(seq)))[-1]
        seq.append(int(np.argmax(logits)))
    return seq[len(prompt) :]


def test_sampling_with_seed_is_deterministic() -> None:
    w, prompt = _weights(), _tokens(b"hello")

    def run(seed: int | None, rng_seed: int) -> list[SampledSequence]:
        return sample(
            w, prompt, num_samples=4, max_tokens=20, seed=seed, rng=np.random.default_rng(rng_seed)
        )

    a, b, c = run(7, 1), run(7, 2), run(8, 1)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.logprobs, y.logprobs)
    assert any(not np.array_equal(x.tokens, y.tokens) for x, y in zip(a, c, strict=True))
    assert a[0].tokens.dtype == np.int32 and a[0].logprobs.dtype == np.float32
    # without seed the rng drives the draws
    d, e = run(None, 3), run(None, 3)
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(d, e, strict=True))


def test_temperature_zero_top_k_one_and_tiny_top_p_are_greedy() -> None:
    w, prompt = _weights(1), _tokens(b"abc")
    greedy = _greedy_tokens(w, prompt, 12)
    rng = np.random.default_rng(0)
    for kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"top_p": 1e-9}):
        seqs = sample(w, prompt, num_samples=3, max_tokens=12, rng=rng, **kwargs)
        for s in seqs:
            if s.stop_reason == "length":
                assert s.tokens.tolist() == greedy, kwargs
            else:  # EOS or stop in the greedy path
                assert s.tokens.tolist() == greedy[: len(s.tokens)]


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    w, prompt = _weights(2), _tokens(b"xy")
    logits = logits_from_weights(w, context_indices(prompt))[-1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    rng = np.random.default_rng(0)
    top5 = set(order[:5].tolist())
    seqs = sample(w, prompt, num_samples=300, max_tokens=1, top_k=5, rng=rng)
    got = {int(s.tokens[0]) for s in seqs}
    assert got <= top5 and len(got) >= 3
    cum = np.cumsum(probs[order])
    nucleus = set(order[: int(np.searchsorted(cum, 0.3)) + 1].tolist())
    seqs = sample(w, prompt, num_samples=300, max_tokens=1, top_p=0.3, rng=rng)
    assert {int(s.tokens[0]) for s in seqs} <= nucleus
    seqs = sample(w, prompt, num_samples=300, max_tokens=1, rng=rng)
    assert len({int(s.tokens[0]) for s in seqs}) > len(nucleus)


def test_stop_sequences_eos_and_length() -> None:
    w, prompt = _weights(3), _tokens(b"stop")
    greedy = _greedy_tokens(w, prompt, 10)
    assert EOS_TOKEN not in greedy[:6]
    stop_seq = greedy[2:4]
    rng = np.random.default_rng(0)
    [s] = sample(w, prompt, num_samples=1, max_tokens=10, temperature=0.0, stop=[stop_seq], rng=rng)
    assert s.stop_reason == "stop"
    assert s.tokens.tolist()[-2:] == stop_seq and len(s.tokens) <= 4
    [s] = sample(w, prompt, num_samples=1, max_tokens=5, temperature=0.0, rng=rng)
    assert s.stop_reason == "length" and s.tokens.tolist() == greedy[:5]
    eos = dict(w)
    eos["b2"] = w["b2"].copy()
    eos["b2"][EOS_TOKEN] = 100.0
    seqs = sample(eos, prompt, num_samples=2, max_tokens=5, rng=rng)
    assert all(s.stop_reason == "stop" and s.tokens.tolist() == [EOS_TOKEN] for s in seqs)


def test_sampled_logprobs_match_the_trainer_at_temperature_one() -> None:
    model = TinyByteLM(seed=6)
    train(model, [sft(TEXT)], steps=3)
    prompt = _tokens(b"the ")
    seqs = sample(model.sampler_weights(), prompt, num_samples=3, max_tokens=15, seed=0, rng=None)  # type: ignore[arg-type]
    for s in seqs:
        full = np.concatenate([prompt, s.tokens.astype(np.int64)])
        d = DatumArrays(
            tokens=full[:-1],
            inputs={"target_tokens": full[1:], "weights": np.ones(len(full) - 1, np.float32)},
        )
        lp = model.forward_backward([d], "cross_entropy", backward=False).logprobs[0]
        np.testing.assert_allclose(s.logprobs, lp[len(prompt) - 1 :], rtol=1e-4, atol=1e-5)


def test_prompt_logprobs_agree_with_forward() -> None:
    model = TinyByteLM(seed=8, lora_rank=4)
    train(model, [sft(TEXT)], steps=2)
    prompt = _tokens(TEXT[:33])
    plp = prompt_logprobs(model.sampler_weights(), prompt)
    assert plp.dtype == np.float32 and plp.shape == (33,) and np.isnan(plp[0])
    fwd = model.forward_backward([sft(TEXT[:33])], "cross_entropy", backward=False)
    np.testing.assert_allclose(plp[1:], fwd.logprobs[0], rtol=1e-4, atol=1e-5)
    one = prompt_logprobs(model.sampler_weights(), prompt[:1])
    assert one.shape == (1,) and np.isnan(one[0])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -0.5}, "temperature"),
        ({"prompt": np.zeros(0, np.int64)}, "prompt"),
        ({"prompt": np.array([300])}, "prompt"),
        ({"stop": [[]]}, "stop[0]"),
        ({"stop": [[1], [999]]}, "stop[1]"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "prompt": _tokens(b"ab"),
        "num_samples": 1,
        "max_tokens": 3,
        "rng": np.random.default_rng(0),
    }
    args.update(kwargs)
    with pytest.raises(ModelInputError) as info:
        sample(_weights(), **args)  # type: ignore[arg-type]
    assert info.value.field == field


# ------------------------------------------------------------------ speed


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_step_timing_micro_benchmark(lora_rank: int) -> None:
    model = TinyByteLM(seed=0, lora_rank=lora_rank)
    d = sft(TEXT[:65])
    assert d.tokens.shape == (64,)
    adam = AdamConfig(learning_rate=1e-3)
    times = []
    for _ in range(60):
        t0 = time.perf_counter()
        model.forward_backward([d], "cross_entropy", backward=True)
        model.optim_step(adam)
        times.append(time.perf_counter() - t0)
    median_ms = float(np.median(times[10:])) * 1e3
    print(f"\nforward_backward+optim_step, 64 tokens, lora_rank={lora_rank}: {median_ms:.2f} ms")
    assert median_ms < 50.0


# -- Fireworks extensions: batch invariance, normalization, alpha, init, adapters -------------


def test_identical_datums_get_identical_logprobs_whatever_the_batch() -> None:
    model = TinyByteLM(seed=0, lora_rank=4)
    _randomize_trainable(model, 1)
    d = sft(TEXT[:40])
    for n in (2, 3, 5, 17):
        lps = model.forward_backward([d] * n, "cross_entropy", backward=False).logprobs
        assert all(np.array_equal(lp, lps[0]) for lp in lps), n


def test_accumulated_counts_skip_zero_gradient_tokens_and_sequences() -> None:
    model = TinyByteLM(seed=0)
    half = sft(TEXT[:21])
    w = np.asarray(half.inputs["weights"]).copy()
    w[:5] = 0.0
    batch = [DatumArrays(tokens=half.tokens, inputs={**half.inputs, "weights": w}),
             sft(TEXT[:11], weight=0.0), sft(TEXT[:9])]
    model.forward_backward(batch, "cross_entropy", backward=True)
    assert model.accumulated == (15 + 8, 2)
    model.forward_backward(batch[2:], "cross_entropy", backward=False)  # forward: not counted
    assert model.accumulated == (23, 2)
    model.optim_step(AdamConfig(learning_rate=1e-3))
    assert model.accumulated == (0, 0)


@pytest.mark.parametrize(("mode", "divisor"), [("num_loss_tokens", 29 + 21), ("num_sequences", 2),
                                               ("none", 1), (None, 1)])
def test_normalization_divides_the_accumulated_gradient(mode: str | None, divisor: int) -> None:
    batch = [sft(TEXT[:30]), sft(TEXT[30:52])]
    a, b = TinyByteLM(seed=0, dtype=np.float64), TinyByteLM(seed=0, dtype=np.float64)
    a.forward_backward(batch, "cross_entropy", backward=True)
    scaled = [
        DatumArrays(tokens=d.tokens, inputs={
            **d.inputs, "weights": np.asarray(d.inputs["weights"], np.float64) / divisor})
        for d in batch
    ]
    b.forward_backward(scaled, "cross_entropy", backward=True)
    ma = a.optim_step(AdamConfig(learning_rate=1e-2), normalization=mode,
                      grad_norm_metrics="basic")
    mb = b.optim_step(AdamConfig(learning_rate=1e-2), grad_norm_metrics="basic")
    assert ma == pytest.approx(mb, rel=1e-9)
    for key, value in a.trainable_weights().items():
        np.testing.assert_allclose(value, b.trainable_weights()[key], rtol=1e-9, atol=1e-12)


def test_optim_step_refuses_bad_normalization_and_metrics_mode_without_change() -> None:
    model = TinyByteLM(seed=0)
    model.forward_backward([sft(TEXT[:20])], "cross_entropy", backward=True)
    before = full_state(model)
    with pytest.raises(ModelInputError, match="grad_accumulation_normalization"):
        model.optim_step(AdamConfig(), normalization="mean")
    with pytest.raises(ModelInputError, match="emit_grad_norm_metrics"):
        model.optim_step(AdamConfig(), grad_norm_metrics="all")
    assert_states_equal(before, full_state(model))
    assert model.accumulated == (19, 1)


def test_grad_norm_metrics_values() -> None:
    model = TinyByteLM(seed=0, lora_rank=2)
    _randomize_trainable(model, 3)
    model.forward_backward([sft(TEXT[:30])], "cross_entropy", backward=True)
    grads = model.gradients()
    norms = {k: float(np.linalg.norm(g.astype(np.float64))) for k, g in grads.items()}
    total = float(np.sqrt(sum(n * n for n in norms.values())))
    size = sum(g.size for g in grads.values())
    m = model.optim_step(AdamConfig(grad_clip_norm=0.5), grad_norm_metrics="detailed")
    assert m["grad_norm/global:mean"] == pytest.approx(total, rel=1e-6)
    assert m["grad_norm/rms:mean"] == pytest.approx(total / np.sqrt(size), rel=1e-6)
    assert m["grad_norm/clipped:mean"] == pytest.approx(min(total, 0.5), rel=1e-6)
    for key, value in norms.items():
        assert m[f"grad_norm/param/{key}:mean"] == pytest.approx(value, rel=1e-6)


def test_lora_alpha_scales_the_adapter_and_nora_normalizes_a() -> None:
    a = TinyByteLM(seed=0, lora_rank=4, lora_alpha=8)
    assert a.lora_scale == 2.0
    b = TinyByteLM(seed=0, lora_rank=4, init_method="nora")
    rows = np.linalg.norm(b.trainable_weights()["w1.lora_a"].astype(np.float64), axis=1)
    np.testing.assert_allclose(rows, 1.0, rtol=1e-6)
    with pytest.raises(ModelInputError, match=r"lora_config\.alpha"):
        TinyByteLM(seed=0, lora_rank=4, lora_alpha=0)
    with pytest.raises(ModelInputError, match="init_method"):
        TinyByteLM(seed=0, lora_rank=4, init_method="pissa")


def test_load_adapter_takes_only_the_adapters() -> None:
    src = TinyByteLM(seed=0, lora_rank=4)
    assert not src.has_adapter_delta()
    train(src, [sft(TEXT[:30])], steps=2)
    assert src.has_adapter_delta()
    dst = TinyByteLM(seed=0, lora_rank=4)
    dst.load_adapter(src.state(optimizer=False))
    assert dst.optim_steps == 0  # the optimizer state is not taken
    for key, value in src.sampler_weights().items():
        assert np.array_equal(value, dst.sampler_weights()[key])
    with pytest.raises(ModelInputError, match="adapter_path"):
        TinyByteLM(seed=0, lora_rank=2).load_adapter(src.state(optimizer=False))
    with pytest.raises(ModelInputError, match="no LoRA adapters"):
        TinyByteLM(seed=0).load_adapter(src.state(optimizer=False))


def test_lora_seed_seeds_only_the_adapters() -> None:
    base = TinyByteLM(seed=5)
    a = TinyByteLM(seed=5, lora_rank=4, lora_seed=1)
    b = TinyByteLM(seed=5, lora_rank=4, lora_seed=2)
    for model in (a, b):  # the base weights are the seed's, whatever the adapters' seed
        for key, value in base.sampler_weights().items():
            assert np.array_equal(model.sampler_weights()[key], value)

    def lora_a(m: TinyByteLM) -> np.ndarray:
        return m.trainable_weights()["w1.lora_a"]

    assert not np.array_equal(lora_a(a), lora_a(b))
    assert np.array_equal(lora_a(a), lora_a(TinyByteLM(seed=5, lora_rank=4, lora_seed=1)))


def test_lora_forward_uses_the_weights_after_every_change() -> None:
    """The LoRA-merged weights are kept between calls: each way the weights change (optimizer
    step, load_state, load_adapter) must be seen by the next forward and sampler weights."""
    probe = [sft(TEXT[:40])]

    def logprobs(m: TinyByteLM) -> np.ndarray:
        return m.forward_backward(probe, "cross_entropy", backward=False).logprobs[0]

    def fresh_copy(m: TinyByteLM) -> TinyByteLM:
        copy = TinyByteLM(seed=0, lora_rank=4)
        copy.load_state(m.state(optimizer=False), optimizer=False)
        return copy

    model = TinyByteLM(seed=0, lora_rank=4)
    before = logprobs(model)  # the merged weights of the untrained adapters are now kept
    train(model, [sft(TEXT[:30])], steps=2)
    assert not np.array_equal(logprobs(model), before)
    assert np.array_equal(logprobs(model), logprobs(fresh_copy(model)))

    trained = model.state(optimizer=True)
    other = TinyByteLM(seed=0, lora_rank=4)
    logprobs(other)
    other.load_state(trained, optimizer=True)
    assert np.array_equal(logprobs(other), logprobs(model))

    adapter_only = TinyByteLM(seed=0, lora_rank=4)
    logprobs(adapter_only)
    adapter_only.load_adapter(trained)
    assert np.array_equal(logprobs(adapter_only), logprobs(model))
    for key, value in model.sampler_weights().items():
        assert np.array_equal(adapter_only.sampler_weights()[key], value)


def test_unique_context_rows_match_numpy() -> None:
    """The forward pass computes each distinct context row once, in ``np.unique``'s order
    (the order decides BLAS rounding, so it must not change)."""
    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(1, 200))
        tokens = rng.integers(0, VOCAB_SIZE if trial % 2 else 4, n)  # few distinct: repeats
        starts = np.repeat([0, n // 2], [n // 2, n - n // 2]) if n > 1 else None
        ctx = context_indices(tokens, starts)
        rows, inverse = _unique_rows(ctx)
        want_rows, want_inverse = np.unique(ctx, axis=0, return_inverse=True)
        assert np.array_equal(rows, want_rows)
        assert np.array_equal(inverse, want_inverse.reshape(-1))
