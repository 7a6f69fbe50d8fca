"""qwen3's attention with its per-head q/k RMSNorms in the fused projection's kernel.

What `attention_qkv` does (q|k|v in one projection), and then, for a forward that normalises
q and k per head (qwen3, qwen3_moe), the split of the projection, the three head reshapes and
the two RMSNorms (each after a copy MLX makes of the strided split) as one
`kernels.qk_rms_norm` node with three outputs, computed with MLX-CUDA's RMSNorm arithmetic.
It takes those attention modules before `attention_qkv` does (like moe_decode before
moe_block); in training mode, or if the dtypes differ, the split and norms run as MLX ops.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from zmlx_rs import _native, kernels
from zmlx_rs.patterns._base import OK, Fused, fuse_outputs
from zmlx_rs.patterns.attention_qkv import (
    AttentionQKV,
    FusedQKVAttention,
    _head_count,
    _qk_norm,
)

__all__ = ["FusedQKNormAttention", "QKNorm"]


class FusedQKNormAttention(FusedQKVAttention):
    """attention_qkv's module with split + heads + q_norm + k_norm as one kernel."""

    pattern = "qk_norm"

    def __init__(self, original: nn.Module, qkv_proj: nn.Module, widths: list[int]) -> None:
        super().__init__(original, qkv_proj, widths)
        self.note = "q|k|v -> qkv_proj; split, heads, q_norm, k_norm -> qk_rms_norm"

    def heads(self, qkv: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        q_norm, k_norm = self["q_norm"], self["k_norm"]
        q_weight, k_weight = q_norm["weight"], k_norm["weight"]
        if self.training or not qkv.dtype == q_weight.dtype == k_weight.dtype:
            return super().heads(qkv)
        eps = (q_norm.eps, k_norm.eps)
        return kernels.qk_rms_norm(qkv, q_weight, k_weight, eps, self.n_heads, self.n_kv_heads)


class QKNorm(AttentionQKV):
    name = "qk_norm"
    description = "qwen3 attention: q|k|v in one projection, split + q/k head norms in one kernel"

    def matches(self, module: nn.Module, path: str) -> str | None:
        if isinstance(module, Fused) or not _qk_norm(type(module)):
            return None
        verdict = super().matches(module, path)
        if verdict != OK:
            return verdict
        norms = [module["q_norm"], module["k_norm"]]
        if any(type(n) is not nn.RMSNorm or "weight" not in n for n in norms):
            return "q_norm / k_norm are not nn.RMSNorm"
        q_w, k_w = (n["weight"] for n in norms)
        widths = [module[p]["weight"].shape[-2] for p in ("q_proj", "k_proj", "v_proj")]
        n_heads, n_kv_heads = _head_count(module, "n_heads"), _head_count(module, "n_kv_heads")
        assert n_heads is not None and n_kv_heads is not None  # attention_qkv checked them
        if widths[0] != n_heads * q_w.shape[0]:
            return f"q width {widths[0]} is not {n_heads} heads of {q_w.shape[0]}"
        try:
            _native.plan_qk_rms_norm(
                ([1, sum(widths)], _name(q_w)),
                (list(q_w.shape), _name(q_w)),
                (list(k_w.shape), _name(k_w)),
                (norms[0].eps, norms[1].eps),
                n_heads,
                n_kv_heads,
            )
        except _native.ZmlxError as e:
            return str(e)
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        qkv, widths = fuse_outputs([module[p] for p in ("q_proj", "k_proj", "v_proj")])
        return FusedQKNormAttention(module, qkv, widths)


def _name(a: mx.array) -> str:
    return str(a.dtype).split(".")[-1]
