"""AdamW with the semantics of ``tinker.types.AdamParams`` (PyTorch's ``AdamW``).

One step, with ``t`` the step count after incrementing and ``g`` the accumulated gradient:

1. if ``grad_clip_norm > 0``: ``g *= min(1, grad_clip_norm / (‖g‖ + 1e-6))`` (global L2 norm
   over all trained parameters, as ``torch.nn.utils.clip_grad_norm_``);
2. ``p *= 1 - lr·weight_decay`` (decoupled weight decay);
3. ``m = β1·m + (1-β1)·g``, ``v = β2·v + (1-β2)·g²``;
4. ``p -= lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import numpy as np

from ._input_error import ModelInputError

__all__ = ["AdamConfig", "AdamW", "global_norm"]


@attrs.frozen
class AdamConfig:
    """AdamW hyper-parameters, with ``tinker.types.AdamParams`` defaults and meaning.

    ``grad_clip_norm = 0`` disables clipping.

    Example::

        model.optim_step(AdamConfig(learning_rate=1e-2, weight_decay=0.01))
    """

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def validate(self) -> None:
        """Raise ``ModelInputError`` (field ``adam_params.<name>``) for an unusable value."""
        for name in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ModelInputError(f"adam_params.{name}", "must be a number")
            if not math.isfinite(value) or value < 0:
                raise ModelInputError(
                    f"adam_params.{name}", f"must be finite and >= 0, got {value}"
                )
        for name in ("beta1", "beta2"):
            if getattr(self, name) >= 1.0:
                raise ModelInputError(f"adam_params.{name}", "must be < 1")


class AdamW:
    """AdamW state (moments and step count) for a fixed set of named parameters.

    Example::

        opt = AdamW({"w": (3, 4)}, np.float32)
        metrics = opt.step(params, grads, AdamConfig(learning_rate=1e-2))
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtype: type[np.floating]) -> None:
        self._shapes = dict(shapes)
        self._dtype = dtype
        self.step_count = 0
        self._m = {k: np.zeros(s, dtype=dtype) for k, s in self._shapes.items()}
        self._v = {k: np.zeros(s, dtype=dtype) for k, s in self._shapes.items()}

    def reset(self) -> None:
        """Forget moments and the step count."""
        self.step_count = 0
        for arr in (*self._m.values(), *self._v.values()):
            arr.fill(0.0)

    def step(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        config: AdamConfig,
    ) -> dict[str, float]:
        """Update ``params`` in place from ``grads``; returns ``name:reduction`` metrics."""
        config.validate()
        norm = global_norm(grads)
        scale = 1.0
        if config.grad_clip_norm > 0.0:
            scale = min(1.0, config.grad_clip_norm / (norm + 1e-6))
        self.step_count += 1
        t = self.step_count
        lr = config.learning_rate
        b1, b2 = config.beta1, config.beta2
        bias1 = 1.0 - b1**t
        bias2_sqrt = math.sqrt(1.0 - b2**t)
        step_size = lr / bias1
        dt = self._dtype
        for name in self._shapes:
            p, m, v = params[name], self._m[name], self._v[name]
            g = grads[name] if scale == 1.0 else grads[name] * dt(scale)
            if config.weight_decay:
                p *= dt(1.0 - lr * config.weight_decay)
            m *= dt(b1)
            m += dt(1.0 - b1) * g
            v *= dt(b2)
            v += dt(1.0 - b2) * (g * g)
            denom = np.sqrt(v) / dt(bias2_sqrt) + dt(config.eps)
            p -= dt(step_size) * m / denom
        return {
            "grad_norm:mean": norm,
            "learning_rate:mean": float(lr),
        }

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the moments (``m/<name>``, ``v/<name>``) and ``step`` (int64 scalar)."""
        out: dict[str, np.ndarray] = {"step": np.asarray(self.step_count, dtype=np.int64)}
        for name in self._shapes:
            out[f"m/{name}"] = self._m[name].copy()
            out[f"v/{name}"] = self._v[name].copy()
        return out

    def check_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Raise ``ModelInputError`` unless ``state`` (as from ``state()``) fits this optimizer."""
        if "step" not in state:
            raise ModelInputError("state", "no optimizer state in this checkpoint")
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise ModelInputError("state.step", "must be a non-negative integer scalar")
        for name, shape in self._shapes.items():
            for kind in ("m", "v"):
                key = f"{kind}/{name}"
                if key not in state:
                    raise ModelInputError("state", f"optimizer state lacks {key!r}")
                arr = np.asarray(state[key])
                if arr.shape != shape:
                    raise ModelInputError(f"state.{key}", f"shape {arr.shape}, expected {shape}")
                if not np.all(np.isfinite(arr)):
                    raise ModelInputError(f"state.{key}", "has non-finite values")

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from ``state()`` output (call ``check_state`` first)."""
        self.step_count = int(state["step"])
        for name in self._shapes:
            self._m[name][...] = state[f"m/{name}"]
            self._v[name][...] = state[f"v/{name}"]


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all ``arrays`` together, accumulated in float64 in a fixed order."""
    total = 0.0
    for arr in arrays.values():
        flat = arr.astype(np.float64, copy=False).ravel()
        total += float(flat @ flat)
    return math.sqrt(total)
