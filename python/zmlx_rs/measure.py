"""Measuring a model on the paths mlx-lm really runs.

- decode tokens/s: `mlx_lm.generate.generate_step` (greedy, KV cache, its pipelined
  `async_eval` loop), timed from the first yielded token to the last;
- prefill tokens/s: one forward of a prompt into a fresh KV cache, evaluated the way
  `generate_step` evaluates a prefill chunk (the cache state, not the logits);
- a logit trace for numerics: the prompt's logits, then greedy decode steps with the KV cache,
  optionally teacher-forced with another run's tokens so two models are compared on the same
  inputs at every step;
- graph nodes of one decode step, counted from the lazy graph before it is evaluated.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache

from zmlx_rs.errors import ZmlxError

__all__ = [
    "Numerics",
    "compare_traces",
    "decode_graph_nodes",
    "decode_tokens_per_s",
    "logit_trace",
    "prefill_tokens_per_s",
    "prompt_tokens",
    "vocab_size",
]

_TEXT = (
    "The history of computing is a history of moving data to where the arithmetic happens. "
    "Every generation of machines found a new bottleneck: first the arithmetic units, then "
    "memory bandwidth, then the latency of launching small pieces of work one after another. "
)

# Largest |Δlogit| accepted between a patched and an unpatched model, as a fraction of the
# unpatched logits' largest magnitude: fused kernels round at other places than the ops they
# replace, and the difference grows through the layers; far below what a wrong kernel does.
LOGIT_TOLERANCE = {mx.float32: 1e-3, mx.float16: 2e-2, mx.bfloat16: 5e-2}

# Primitives that make no copy on any backend: a node, but not a kernel launch.
_VIEWS = frozenset(
    {
        "AsStrided",
        "Broadcast",
        "BroadcastAxes",
        "ExpandDims",
        "Flatten",
        "Reshape",
        "Slice",
        "Split",
        "Squeeze",
        "StopGradient",
        "Transpose",
        "Unflatten",
    }
)
_NODE = re.compile(r'\[label ="([^"]+)", shape=rectangle\]')


def vocab_size(model: nn.Module) -> int:
    """The model's vocabulary size, from its args or its first embedding table."""
    args = getattr(model, "args", None)
    size = getattr(args, "vocab_size", None)
    if isinstance(size, int) and size > 0:
        return size
    for _, module in model.named_modules():
        if isinstance(module, nn.Embedding | nn.QuantizedEmbedding):
            return int(module.weight.shape[0])
    raise ZmlxError(
        f"'model' must have args.vocab_size or an embedding, got {type(model).__name__}"
    )


def prompt_tokens(model: nn.Module, tokenizer: Any, length: int, seed: int = 0) -> mx.array:
    """`length` prompt ids: natural text through `tokenizer` when given (so a real model sees
    its usual token mix), else seeded random ids over the vocabulary."""
    if tokenizer is not None:
        ids: list[int] = list(tokenizer.encode(_TEXT))
        if not ids:
            raise ZmlxError("'tokenizer' must encode text to at least one token, got none")
        while len(ids) < length:
            ids += ids
        return mx.array(ids[:length], dtype=mx.int32)
    key = mx.random.key(seed)
    return mx.random.randint(0, vocab_size(model), (length,), dtype=mx.int32, key=key)


def decode_tokens_per_s(model: nn.Module, prompt: mx.array, tokens: int) -> float:
    """Greedy decode of `tokens` tokens through `generate_step`; the prompt's prefill is not
    timed (the clock starts at the first token)."""
    if tokens < 2:
        raise ZmlxError(f"decode_tokens_per_s(): 'tokens' must be >= 2, got {tokens}")
    start = 0.0
    n = 0
    for n, _ in enumerate(generate_step(prompt, model, max_tokens=tokens), 1):
        if n == 1:
            start = time.perf_counter()
    return (n - 1) / (time.perf_counter() - start)


def prefill_tokens_per_s(model: nn.Module, prompt: mx.array) -> float:
    """One prefill of `prompt` into a fresh KV cache (a single `generate_step` chunk)."""
    cache = make_prompt_cache(model)
    start = time.perf_counter()
    model(prompt[None], cache=cache)
    mx.eval([c.state for c in cache])
    return prompt.size / (time.perf_counter() - start)


def logit_trace(
    model: nn.Module, prompt: mx.array, steps: int, feed: list[int] | None = None
) -> tuple[list[mx.array], list[int]]:
    """Float32 logits of every prompt position, then of `steps` decode steps, and the greedy
    token after each. With `feed`, step i consumes `feed[i]` instead of this model's own
    choice, so two models are compared on identical inputs."""
    cache = make_prompt_cache(model)
    logits = model(prompt[None], cache=cache)[0].astype(mx.float32)
    trace = [logits]
    tokens = [int(mx.argmax(logits[-1]).item())]
    for i in range(steps):
        fed = tokens[-1] if feed is None else feed[i]
        logits = model(mx.array([[fed]], dtype=mx.int32), cache=cache)[0, -1]
        logits = logits.astype(mx.float32)
        mx.eval(logits)
        trace.append(logits)
        tokens.append(int(mx.argmax(logits).item()))
    return trace, tokens


@dataclass(frozen=True)
class Numerics:
    """A patched model against the unpatched one on the same inputs.

    `identical`: every greedy token equal. A token that differs where the unpatched
    model's top two logits are within two units in the last place of the model's dtype is
    a near-tie flip (`tie_flips`): at that precision the rounding of any kernel that is
    not bitwise equal decides the tie, as a different batch size would. `first_token_mismatch`
    is the first other difference; `ok` needs none, and every logit within `tolerance`."""

    ok: bool
    identical: bool
    max_abs_dlogit: float
    tolerance: float
    first_token_mismatch: int | None
    tie_flips: int
    steps: int

    def describe(self) -> str:
        if self.first_token_mismatch is not None:
            return f"greedy token {self.first_token_mismatch} differs (not a near tie)"
        verdict = "within" if self.max_abs_dlogit <= self.tolerance else "over"
        flips = f", {self.tie_flips} near-tie flips" if self.tie_flips else ""
        return (
            f"max |Δlogit| {self.max_abs_dlogit:.3g} {verdict} {self.tolerance:.3g} "
            f"over {self.steps} steps{flips}"
        )


def compare_traces(
    reference: tuple[list[mx.array], list[int]],
    candidate: tuple[list[mx.array], list[int]],
    dtype: mx.Dtype,
) -> Numerics:
    """Compares two `logit_trace`s of the same inputs (the candidate teacher-forced with the
    reference's tokens): greedy tokens, and every logit within the dtype's tolerance of the
    reference (relative to the reference's largest logit)."""
    ref_logits, ref_tokens = reference
    cand_logits, cand_tokens = candidate
    worst = 0.0
    first_mismatch = None
    tie_flips = 0
    for i, (ref, cand) in enumerate(zip(ref_logits, cand_logits, strict=True)):
        delta = float(mx.max(mx.abs(ref - cand)).item())
        worst = max(worst, delta)
        if ref_tokens[i] == cand_tokens[i]:
            continue
        top2 = mx.topk(ref if ref.ndim == 1 else ref[-1], 2)
        high, low = float(mx.max(top2).item()), float(mx.min(top2).item())
        if high - low <= 2 * _ulp(high, dtype):
            tie_flips += 1
        elif first_mismatch is None:
            first_mismatch = i
    scale = max(1.0, max(float(mx.max(mx.abs(a)).item()) for a in ref_logits))
    tolerance = LOGIT_TOLERANCE.get(dtype, LOGIT_TOLERANCE[mx.float16]) * scale
    return Numerics(
        ok=first_mismatch is None and worst <= tolerance,
        identical=ref_tokens == cand_tokens,
        max_abs_dlogit=worst,
        tolerance=tolerance,
        first_token_mismatch=first_mismatch,
        tie_flips=tie_flips,
        steps=len(ref_tokens) - 1,
    )


_MANTISSA_BITS = {mx.float32: 23, mx.float16: 10, mx.bfloat16: 7}


def _ulp(x: float, dtype: mx.Dtype) -> float:
    """Spacing of `dtype` values around `x`."""
    exponent = math.floor(math.log2(max(abs(x), 1e-30)))
    return 2.0 ** (exponent - _MANTISSA_BITS.get(dtype, 10))


def decode_graph_nodes(model: nn.Module, prompt: mx.array) -> dict[str, int]:
    """Nodes of one greedy decode step's lazy graph (model, cache update, log-softmax,
    argmax), before evaluation: `nodes` in all, `views` of them that launch nothing."""
    cache = make_prompt_cache(model)
    model(prompt[None], cache=cache)
    mx.eval([c.state for c in cache])
    logits = model(prompt[-1:][None], cache=cache)[:, -1, :]
    logprobs = logits - mx.logsumexp(logits, keepdims=True)
    token = mx.argmax(logprobs, axis=-1)
    dot = io.StringIO()
    mx.export_to_dot(dot, token, logprobs)
    labels = Counter(_NODE.findall(dot.getvalue()))
    views = sum(n for label, n in labels.items() if label in _VIEWS)
    return {"nodes": sum(labels.values()), "views": views}
