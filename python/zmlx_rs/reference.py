"""Pure-MLX references of every fused kernel: the CPU and Metal fallbacks, and what the
CUDA kernels are tested against. fp32 math, results in the input dtype, except where an op's
``rounding="mlx"`` asks for mlx-lm's own formula in the input dtype."""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn

__all__ = [
    "add_rms_norm",
    "dropout",
    "gather_add",
    "gather_qmv_combine",
    "gather_qmv_swiglu",
    "geglu",
    "geglu_packed",
    "moe_gating",
    "moe_scores_for",
    "qk_norm_rope",
    "qk_rms_norm",
    "qkv_rope",
    "qmv",
    "swiglu",
    "swiglu_packed",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _act(g: mx.array, activation: str) -> mx.array:
    if activation == "silu":
        return g * mx.sigmoid(g)
    if activation == "gelu":
        return 0.5 * g * (1.0 + mx.erf(g * (1.0 / math.sqrt(2.0))))
    return 0.5 * g * (1.0 + mx.tanh(_SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)))


@partial(mx.compile, shapeless=True)
def _swiglu(gate: mx.array, up: mx.array) -> mx.array:
    return (nn.silu(gate.astype(mx.float32)) * up.astype(mx.float32)).astype(gate.dtype)


@partial(mx.compile, shapeless=True)
def _geglu_exact(gate: mx.array, up: mx.array) -> mx.array:
    return (_act(gate.astype(mx.float32), "gelu") * up.astype(mx.float32)).astype(gate.dtype)


@partial(mx.compile, shapeless=True)
def _geglu_tanh(gate: mx.array, up: mx.array) -> mx.array:
    g = gate.astype(mx.float32)
    return (_act(g, "gelu_approx") * up.astype(mx.float32)).astype(gate.dtype)


@partial(mx.compile, shapeless=True)
def _swiglu_mlx(gate: mx.array, up: mx.array) -> mx.array:
    # mlx-lm's own SwiGLU, every op in the inputs' dtype.
    return nn.silu(gate) * up


def swiglu(gate: mx.array, up: mx.array, rounding: str = "fp32") -> mx.array:
    return _swiglu_mlx(gate, up) if rounding == "mlx" else _swiglu(gate, up)


def geglu(gate: mx.array, up: mx.array, approximate: bool = False) -> mx.array:
    return _geglu_tanh(gate, up) if approximate else _geglu_exact(gate, up)


def swiglu_packed(h: mx.array, rounding: str = "fp32") -> mx.array:
    gate, up = mx.split(h, 2, axis=-1)
    return swiglu(gate, up, rounding)


def geglu_packed(h: mx.array, approximate: bool = False) -> mx.array:
    gate, up = mx.split(h, 2, axis=-1)
    return geglu(gate, up, approximate)


def dropout(x: mx.array, p: float, key: mx.array | None = None) -> mx.array:
    if p == 0.0:
        return x
    keep = mx.random.bernoulli(1.0 - p, x.shape, key=key)
    scaled = x.astype(mx.float32) * (1.0 / (1.0 - p))
    return mx.where(keep, scaled, 0.0).astype(x.dtype)


def gather_add(y: mx.array, scores: mx.array, rounding: str = "fp32") -> mx.array:
    if rounding == "mlx":  # mlx-lm's own combine
        return (y * scores[..., None]).sum(axis=-2).astype(y.dtype)
    out = (y.astype(mx.float32) * scores.astype(mx.float32)[..., None]).sum(axis=-2)
    return out.astype(y.dtype)


def moe_scores_for(
    logits: mx.array,
    indices: mx.array,
    *,
    mode: str = "softmax",
    norm_topk: bool = True,
    scale: float = 1.0,
) -> mx.array:
    """The scores moe_gating gives the experts `indices` picked: differentiable in logits."""
    k = indices.shape[-1]
    if mode == "softmax":
        probs = mx.softmax(logits, axis=-1, precise=True)
        scores = mx.take_along_axis(probs, indices, axis=-1)
        if norm_topk:
            scores = scores / scores.sum(axis=-1, keepdims=True)
    elif mode == "topk_softmax":
        picked = mx.take_along_axis(logits, indices, axis=-1)
        scores = mx.softmax(picked, axis=-1, precise=True)
    else:
        probs = mx.sigmoid(logits.astype(mx.float32))
        scores = mx.take_along_axis(probs, indices, axis=-1)
        if norm_topk and k > 1:
            scores = scores / scores.sum(axis=-1, keepdims=True)
    return scores * scale if scale != 1.0 else scores


def moe_gating(
    logits: mx.array,
    k: int,
    *,
    mode: str = "softmax",
    norm_topk: bool = True,
    bias: mx.array | None = None,
    scale: float = 1.0,
    ties: str = "lower",
    rounding: str = "fp32",
) -> tuple[mx.array, mx.array]:
    """mlx-lm's gating math, with the k picks ordered by descending selection score; with
    ``rounding="mlx"`` and ``mode="softmax"``, mlx-lm's own lines (its argpartition's order
    for ``ties``: ``"higher"`` the top of an ascending one, ``"lower"`` of a descending one)."""
    if rounding == "mlx" and mode == "softmax":
        g = mx.softmax(logits, axis=-1, precise=True)
        if ties == "higher":
            picked = mx.argpartition(g, kth=-k, axis=-1)[..., -k:]
        else:
            picked = mx.argpartition(-g, kth=k - 1, axis=-1)[..., :k]
        picked = mx.stop_gradient(picked)
        scores = mx.take_along_axis(g, picked, axis=-1)
        if norm_topk:
            scores = scores / scores.sum(axis=-1, keepdims=True)
        if scale != 1.0:
            scores = scores * scale
        return scores, picked.astype(mx.uint32)
    if mode == "softmax":
        rank = mx.softmax(logits, axis=-1, precise=True)
    elif mode == "topk_softmax":
        rank = logits
    else:
        rank = mx.sigmoid(logits.astype(mx.float32))
        if bias is not None:
            rank = rank + bias
    picked = mx.argpartition(-rank, kth=k - 1, axis=-1)[..., :k]
    order = mx.argsort(-mx.take_along_axis(rank, picked, axis=-1), axis=-1)
    indices = mx.stop_gradient(mx.take_along_axis(picked, order, axis=-1)).astype(mx.uint32)
    scores = moe_scores_for(logits, indices, mode=mode, norm_topk=norm_topk, scale=scale)
    return scores, indices


def gather_qmv_swiglu(
    x: mx.array,
    indices: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    *,
    group_size: int,
    bits: int,
) -> mx.array:
    """The unfused quantised MoE up-projection: one gather_qmm over the packed [gate | up]
    experts, then mlx-lm's SwiGLU in the dtype. x (..., D), indices (..., k) -> (..., k, I)."""
    h = mx.gather_qmm(
        mx.expand_dims(x, (-2, -3)),
        w,
        scales,
        biases,
        rhs_indices=indices,
        transpose=True,
        group_size=group_size,
        bits=bits,
    )
    gate, up = mx.split(h.squeeze(-2), 2, axis=-1)
    return _swiglu_mlx(gate, up)


def gather_qmv_combine(
    act: mx.array,
    indices: mx.array,
    scores: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    *,
    group_size: int,
    bits: int,
) -> mx.array:
    """The unfused quantised MoE down-projection and mlx-lm's combine: act (..., k, I) ->
    (..., D)."""
    y = mx.gather_qmm(
        mx.expand_dims(act, -2),
        w,
        scales,
        biases,
        rhs_indices=indices,
        transpose=True,
        group_size=group_size,
        bits=bits,
    )
    return gather_add(y.squeeze(-2), scores)


def qmv(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    *,
    group_size: int,
    bits: int,
) -> mx.array:
    """What a quantized linear layer without bias computes: x (..., K) -> (..., N)."""
    return mx.quantized_matmul(
        x, w, scales, biases, transpose=True, group_size=group_size, bits=bits
    )


def add_rms_norm(
    x: mx.array, r: mx.array, weight: mx.array, eps: float
) -> tuple[mx.array, mx.array]:
    """A transformer block's `h = x + r` and the RMSNorm that reads it: (h, rms_norm(h))."""
    h = x + r
    return h, mx.fast.rms_norm(h, weight, eps)


def qk_rms_norm(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    eps: tuple[float, float],
    n_heads: int,
    n_kv_heads: int,
) -> tuple[mx.array, mx.array, mx.array]:
    """qwen3's attention front: split q|k|v, heads, q_norm and k_norm -> (q, k, v)."""
    d = q_weight.shape[0]
    lead = qkv.shape[:-1]
    q, k, v = mx.split(qkv, [n_heads * d, (n_heads + n_kv_heads) * d], axis=-1)
    q = mx.fast.rms_norm(q.reshape(*lead, n_heads, d), q_weight, eps[0])
    k = mx.fast.rms_norm(k.reshape(*lead, n_kv_heads, d), k_weight, eps[1])
    return q, k, v.reshape(*lead, n_kv_heads, -1)


def qkv_rope(
    qkv: mx.array,
    offset: int | mx.array,
    *,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    base: float,
    scale: float = 1.0,
    traditional: bool = False,
) -> tuple[mx.array, mx.array, mx.array]:
    """llama attention's front: split q|k|v, heads, transposes, RoPE on q and k."""
    B, L, _ = qkv.shape
    q, k, v = mx.split(qkv, [n_heads * head_dim, (n_heads + n_kv_heads) * head_dim], axis=-1)
    q = q.reshape(B, L, n_heads, -1).transpose(0, 2, 1, 3)
    k = k.reshape(B, L, n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = v.reshape(B, L, n_kv_heads, -1).transpose(0, 2, 1, 3)

    def rope(a: mx.array) -> mx.array:
        return mx.fast.rope(
            a, head_dim, traditional=traditional, base=base, scale=scale, offset=offset
        )

    return rope(q), rope(k), v


def qk_norm_rope(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    eps: tuple[float, float],
    offset: int | mx.array,
    *,
    n_heads: int,
    n_kv_heads: int,
    base: float,
    scale: float = 1.0,
    traditional: bool = False,
) -> tuple[mx.array, mx.array, mx.array]:
    """qwen3 attention's front: split q|k|v, heads, q_norm, k_norm, transposes, RoPE."""
    d = q_weight.shape[0]
    q, k, v = qk_rms_norm(qkv, q_weight, k_weight, eps, n_heads, n_kv_heads)

    def rope(a: mx.array) -> mx.array:
        a = a.transpose(0, 2, 1, 3)
        return mx.fast.rope(a, d, traditional=traditional, base=base, scale=scale, offset=offset)

    return rope(q), rope(k), v.transpose(0, 2, 1, 3)
