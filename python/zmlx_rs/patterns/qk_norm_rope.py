"""qwen3's attention with its q/k head norms and RoPE of one decode token in one kernel.

What `qk_norm` does, and at one token per row in eval mode also the transposes and the two
RoPE nodes: `kernels.qk_norm_rope`, one node for the split, heads, norms and rotations
(MLX-CUDA's RMSNorm and rope arithmetic). It takes the qwen3 attention modules with a plain
`nn.RoPE` over whole heads before `qk_norm` does; prefill, training and mixed dtypes run what
`qk_norm` runs.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from zmlx_rs import _native, kernels
from zmlx_rs.patterns._base import OK, Fused, fuse_outputs
from zmlx_rs.patterns.attention_qkv import _head_count
from zmlx_rs.patterns.qk_norm import FusedQKNormAttention, QKNorm, _name

__all__ = ["FusedQKNormRopeAttention", "QKNormRope"]


class FusedQKNormRopeAttention(FusedQKNormAttention):
    """qk_norm's module with the RoPE of a decode token in the same kernel."""

    pattern = "qk_norm_rope"

    def __init__(self, original: nn.Module, qkv_proj: nn.Module, widths: list[int]) -> None:
        super().__init__(original, qkv_proj, widths)
        self.note = "q|k|v -> qkv_proj; split, heads, q_norm, k_norm, rope -> qk_norm_rope"

    def fuses_front(self, dtype: mx.Dtype) -> bool:
        return dtype == self["q_norm"]["weight"].dtype == self["k_norm"]["weight"].dtype

    def decode_front(
        self, qkv: mx.array, offset: int | mx.array
    ) -> tuple[mx.array, mx.array, mx.array] | None:
        if not self.fuses_front(qkv.dtype):
            return None
        q_norm, k_norm, rope = self["q_norm"], self["k_norm"], self["rope"]
        q_weight, k_weight = q_norm["weight"], k_norm["weight"]
        return kernels.qk_norm_rope(
            qkv,
            q_weight,
            k_weight,
            (q_norm.eps, k_norm.eps),
            offset,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            base=rope.base,
            scale=rope.scale,
            traditional=rope.traditional,
        )


class QKNormRope(QKNorm):
    name = "qk_norm_rope"
    description = (
        "qwen3 attention: q|k|v in one projection, split + head norms + RoPE in one kernel"
    )

    def matches(self, module: nn.Module, path: str) -> str | None:
        verdict = super().matches(module, path)
        if verdict != OK:
            return verdict
        rope = module["rope"]
        if type(rope) is not nn.RoPE:
            return f"rope is {type(rope).__name__}, not nn.RoPE"
        q_w, k_w = module["q_norm"]["weight"], module["k_norm"]["weight"]
        n_heads, n_kv_heads = _head_count(module, "n_heads"), _head_count(module, "n_kv_heads")
        assert n_heads is not None and n_kv_heads is not None  # attention_qkv checked them
        if rope.dims != q_w.shape[0]:
            return f"RoPE of {rope.dims} does not rotate whole heads of {q_w.shape[0]}"
        widths = [module[p]["weight"].shape[-2] for p in ("q_proj", "k_proj", "v_proj")]
        try:
            _native.plan_qk_norm_rope(
                ([1, 1, sum(widths)], _name(q_w)),
                (list(q_w.shape), _name(q_w)),
                (list(k_w.shape), _name(k_w)),
                ([], "int32"),
                (module["q_norm"].eps, module["k_norm"].eps),
                n_heads,
                n_kv_heads,
                rope.dims,
                float(rope.base),
                float(rope.scale),
                bool(rope.traditional),
            )
        except _native.ZmlxError as e:
            return str(e)
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        qkv, widths = fuse_outputs([module[p] for p in ("q_proj", "k_proj", "v_proj")])
        return FusedQKNormRopeAttention(module, qkv, widths)
