"""llama/mistral attention with the split, heads and RoPE of one decode token in one kernel.

What `attention_qkv` does (q|k|v in one projection), and then, at one token per row in eval
mode, the split of the projection, the three head reshapes and transposes and the two RoPE
nodes as one `kernels.qkv_rope` node with three outputs, computed with MLX-CUDA's rope
arithmetic: two kernel nodes and nine views fewer per layer and decode step. It takes the
attention modules that run the llama forward with a plain `nn.RoPE` over whole heads, before
`attention_qkv` does (like qk_norm); prefill, training and other RoPE variants (llama3, yarn,
partial rotation) run mlx-lm's ops.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from zmlx_rs import kernels
from zmlx_rs.patterns._base import OK, Fused, fuse_outputs
from zmlx_rs.patterns.attention_qkv import (
    AttentionQKV,
    FusedQKVAttention,
    _head_count,
    _qk_norm,
)

__all__ = ["FusedRopeAttention", "QKVRope"]


class FusedRopeAttention(FusedQKVAttention):
    """attention_qkv's module with split + heads + RoPE as one kernel at decode."""

    pattern = "qkv_rope"

    def __init__(self, original: nn.Module, qkv_proj: nn.Module, widths: list[int]) -> None:
        super().__init__(original, qkv_proj, widths)
        self.note = "q|k|v -> qkv_proj; split, heads, rope -> qkv_rope at decode"

    def fuses_front(self, dtype: mx.Dtype) -> bool:
        return True

    def decode_front(
        self, qkv: mx.array, offset: int | mx.array
    ) -> tuple[mx.array, mx.array, mx.array] | None:
        rope = self["rope"]
        return kernels.qkv_rope(
            qkv,
            offset,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            head_dim=rope.dims,
            base=rope.base,
            scale=rope.scale,
            traditional=rope.traditional,
        )


class QKVRope(AttentionQKV):
    name = "qkv_rope"
    description = "llama attention: q|k|v in one projection, split + heads + RoPE in one kernel"

    def matches(self, module: nn.Module, path: str) -> str | None:
        if isinstance(module, Fused) or _qk_norm(type(module)) is not False:
            return None
        verdict = super().matches(module, path)
        if verdict != OK:
            return verdict
        rope = module["rope"]
        if type(rope) is not nn.RoPE:
            return f"rope is {type(rope).__name__}, not nn.RoPE"
        n_heads, n_kv_heads = _head_count(module, "n_heads"), _head_count(module, "n_kv_heads")
        assert n_heads is not None and n_kv_heads is not None  # attention_qkv checked them
        q_width, k_width = (module[p]["weight"].shape[-2] for p in ("q_proj", "k_proj"))
        if rope.dims % 2 or (q_width, k_width) != (n_heads * rope.dims, n_kv_heads * rope.dims):
            return f"RoPE of {rope.dims} does not rotate whole heads"
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        qkv, widths = fuse_outputs([module[p] for p in ("q_proj", "k_proj", "v_proj")])
        return FusedRopeAttention(module, qkv, widths)
