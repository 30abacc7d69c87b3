"""Building training data for the local byte-level model from text."""

from __future__ import annotations

import numpy as np
from tinker import types

__all__ = ["encode_text", "rl_datum", "sft_datum"]


def encode_text(text: str | bytes) -> list[int]:
    """Byte tokens of ``text`` (UTF-8), the vocabulary of ``local/tiny-byte-lm``."""
    return list(text.encode() if isinstance(text, str) else text)


def sft_datum(text: str | bytes, *, prompt_len: int = 0) -> types.Datum:
    """A ``cross_entropy`` datum teaching the model ``text``: inputs ``t[:-1]``, targets
    ``t[1:]``, weight 1 on every target after the first ``prompt_len`` tokens.

    Example::

        out = await client.forward_backward([sft_datum("hello world")], "cross_entropy")
    """
    tokens = encode_text(text)
    if len(tokens) < 2:
        raise ValueError("text must have at least 2 bytes")
    weights = np.ones(len(tokens) - 1, dtype=np.float32)
    weights[: max(0, prompt_len - 1)] = 0.0
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(weights),
        },
    )


def rl_datum(
    prompt: list[int], completion: list[int], sampler_logprobs: list[float], advantage: float
) -> types.Datum:
    """An ``importance_sampling``/``ppo`` datum for one sampled completion of ``prompt``.

    Prompt positions get advantage 0 (they are not trained); completion positions get
    ``advantage`` and the sampler's logprobs.

    Example::

        datum = rl_datum(prompt, seq.tokens, seq.logprobs, advantage=reward - baseline)
    """
    if len(completion) != len(sampler_logprobs):
        raise ValueError("completion and sampler_logprobs must have the same length")
    tokens = prompt + completion
    n = len(tokens) - 1
    n_prompt = len(prompt) - 1
    logprobs = np.zeros(n, dtype=np.float32)
    logprobs[n_prompt:] = sampler_logprobs
    advantages = np.zeros(n, dtype=np.float32)
    advantages[n_prompt:] = advantage
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "logprobs": types.TensorData.from_numpy(logprobs),
            "advantages": types.TensorData.from_numpy(advantages),
        },
    )
