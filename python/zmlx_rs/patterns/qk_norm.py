"""qwen3's per-head q/k RMSNorms straight from the fused q|k|v projection.

On an attention that `attention_qkv` fused and whose forward normalises q and k per head
(qwen3, qwen3_moe), the split of the projection, the three head reshapes and the two
RMSNorms (each after a copy MLX makes of the strided split) become one `kernels.qk_rms_norm`
node with three outputs, computed with MLX-CUDA's RMSNorm arithmetic. The rest of the forward
is attention_qkv's. In training mode, or if the dtypes differ, the wrapped forward runs.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from zmlx_rs import _native, kernels
from zmlx_rs.patterns._base import OK, Fused, Pattern
from zmlx_rs.patterns.attention_qkv import FusedQKVAttention, attend

__all__ = ["FusedQKNormAttention", "QKNorm"]

_CHILDREN = ("qkv_proj", "o_proj", "rope", "q_norm", "k_norm")


class FusedQKNormAttention(Fused):
    """attention_qkv's forward with split + heads + q_norm + k_norm as one kernel."""

    pattern = "qk_norm"

    def __init__(self, inner: FusedQKVAttention) -> None:
        super().__init__(inner)
        for name in _CHILDREN:
            self[name] = inner[name]
        self.n_heads = inner.n_heads
        self.n_kv_heads = inner.n_kv_heads
        self.scale = inner.scale
        self.note = "split, heads, q_norm, k_norm -> qk_rms_norm"

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        qkv = self.qkv_proj(x)
        q_norm, k_norm = self.q_norm, self.k_norm
        if self.training or not qkv.dtype == q_norm.weight.dtype == k_norm.weight.dtype:
            return self.original(x, mask, cache)
        queries, keys, values = kernels.qk_rms_norm(
            qkv,
            q_norm.weight,
            k_norm.weight,
            (q_norm.eps, k_norm.eps),
            self.n_heads,
            self.n_kv_heads,
        )
        return attend(self, queries, keys, values, mask, cache)


class QKNorm(Pattern):
    name = "qk_norm"
    description = "qwen3 attention: split + per-head q/k RMSNorms in one kernel"
    # Not yet checked bit for bit against MLX on a GPU (the emulation tests hold it to MLX's
    # RMSNorm arithmetic as read from MLX's source): on when a GPU run has.
    by_default = False

    def matches(self, module: nn.Module, path: str) -> str | None:
        if not isinstance(module, FusedQKVAttention) or not module.qk_norm:
            return None
        norms = [module.q_norm, module.k_norm]
        if any(type(n) is not nn.RMSNorm or "weight" not in n for n in norms):
            return "q_norm / k_norm are not nn.RMSNorm"
        q_w, k_w = (n["weight"] for n in norms)
        dtype = str(q_w.dtype).split(".")[-1]
        width = module.widths[0] + module.widths[1] + module.widths[2]
        try:
            _native.plan_qk_rms_norm(
                ([1, width], dtype),
                (list(q_w.shape), dtype),
                (list(k_w.shape), str(k_w.dtype).split(".")[-1]),
                (module.q_norm.eps, module.k_norm.eps),
                module.n_heads,
                module.n_kv_heads,
            )
        except _native.ZmlxError as e:
            return str(e)
        if module.widths[0] != module.n_heads * q_w.shape[0]:
            return f"q width {module.widths[0]} is not {module.n_heads} heads of {q_w.shape[0]}"
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        assert isinstance(module, FusedQKVAttention)
        return FusedQKNormAttention(module)

    def revert(self, fused: Fused) -> nn.Module:
        return fused.hand_back_children(_CHILDREN)
