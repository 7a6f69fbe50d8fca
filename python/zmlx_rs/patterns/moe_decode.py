"""MoE decode pattern: at decode sizes (tokens * k <= 64, MLX-CUDA) a quantised MoE block runs
as four nodes: the router matmul, `moe_gating`, `gather_qmv_swiglu` and `gather_qmv_combine`.
Larger batches keep mlx-lm's sorted `gather_qmm` path, on the same packed gate|up experts.

Covers qwen3_moe (softmax gating) and mixtral (top-k then softmax) blocks whose experts are
an affine-quantised `SwitchGLU` with SwiGLU and no expert biases.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import (
    QuantizedSwitchLinear,
    SwitchGLU,
    _gather_sort,
    _scatter_unsort,
)

from zmlx_rs import _backend, kernels

__all__ = ["DECODE_MAX_PAIRS", "MoEDecode", "gating_mode", "patch_moe_decode"]

# The fused kernels stream each selected expert once per (token, k) pair; past this many pairs
# mlx-lm's sorted gather_qmm reuses experts across tokens and wins.
DECODE_MAX_PAIRS = 64

# mlx-lm block class -> (moe_gating mode, attribute holding norm_topk or None for "always").
_FAMILIES: dict[str, tuple[str, str | None]] = {
    "Qwen3MoeSparseMoeBlock": ("softmax", "norm_topk_prob"),
    "MixtralSparseMoeBlock": ("topk_softmax", None),
}


def _quantized_affine(layer: Any) -> bool:
    return (
        isinstance(layer, QuantizedSwitchLinear)
        and getattr(layer, "mode", "affine") == "affine"
        and layer.get("biases") is not None
        and "bias" not in layer
        and layer.bits in (4, 8)
        and layer.group_size in (32, 64, 128)
    )


def gating_mode(block: Any) -> str | None:
    """The `moe_gating` mode of an mlx-lm MoE block this pattern can take, else None."""
    family = _FAMILIES.get(type(block).__name__)
    mlp = getattr(block, "switch_mlp", None)
    if family is None or not isinstance(mlp, SwitchGLU):
        return None
    if type(mlp.activation).__name__ != "SwiGLU":
        return None
    layers = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    if not all(_quantized_affine(p) for p in layers):
        return None
    g, u = mlp.gate_proj, mlp.up_proj
    if (g.bits, g.group_size, g.weight.shape) != (u.bits, u.group_size, u.weight.shape):
        return None
    return family[0]


class MoEDecode(nn.Module):
    """A qwen3_moe / mixtral sparse MoE block with gate|up experts packed into one matrix."""

    def __init__(self, block: Any) -> None:
        super().__init__()
        mode = gating_mode(block)
        if mode is None:
            raise ValueError(f"MoEDecode: unsupported block {type(block).__name__}")
        mlp = block.switch_mlp
        self.gate = block.gate
        self.mode = mode
        self.k = int(getattr(block, "top_k", None) or block.num_experts_per_tok)
        norm_attr = _FAMILIES[type(block).__name__][1]
        self.norm_topk = bool(getattr(block, norm_attr)) if norm_attr else True
        g, u, d = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.bits = g.bits
        self.group_size = g.group_size
        self.down_bits = d.bits
        self.down_group_size = d.group_size
        # Rows [gate | up] per expert: the layout gather_qmv_swiglu and swiglu_packed take.
        self.gate_up_weight = mx.concatenate([g.weight, u.weight], axis=1)
        self.gate_up_scales = mx.concatenate([g.scales, u.scales], axis=1)
        self.gate_up_biases = mx.concatenate([g.biases, u.biases], axis=1)
        self.down_weight = d.weight
        self.down_scales = d.scales
        self.down_biases = d.biases
        self.freeze()

    def _experts_sorted(self, x: mx.array, inds: mx.array) -> mx.array:
        """mlx-lm's SwitchGLU path on the packed experts: (..., D) -> (..., k, D)."""
        x = mx.expand_dims(x, (-2, -3))
        do_sort = inds.size >= 64
        idx, inv_order = inds, None
        if do_sort:
            x, idx, inv_order = _gather_sort(x, inds)
        h = mx.gather_qmm(
            x,
            self.gate_up_weight,
            self.gate_up_scales,
            self.gate_up_biases,
            rhs_indices=idx,
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            sorted_indices=do_sort,
        )
        y = mx.gather_qmm(
            kernels.swiglu_packed(h),
            self.down_weight,
            self.down_scales,
            self.down_biases,
            rhs_indices=idx,
            transpose=True,
            group_size=self.down_group_size,
            bits=self.down_bits,
            sorted_indices=do_sort,
        )
        if do_sort:
            y = _scatter_unsort(y, inv_order, inds.shape)
        return y.squeeze(-2)

    def __call__(self, x: mx.array) -> mx.array:
        scores, inds = kernels.moe_gating(
            self.gate(x), self.k, mode=self.mode, norm_topk=self.norm_topk
        )
        if _backend.on_cuda() and inds.size <= DECODE_MAX_PAIRS:
            act = kernels.gather_qmv_swiglu(
                x,
                inds,
                self.gate_up_weight,
                self.gate_up_scales,
                self.gate_up_biases,
                group_size=self.group_size,
                bits=self.bits,
            )
            return kernels.gather_qmv_combine(
                act,
                inds,
                scores,
                self.down_weight,
                self.down_scales,
                self.down_biases,
                group_size=self.down_group_size,
                bits=self.down_bits,
            )
        return kernels.gather_add(self._experts_sorted(x, inds), scores)


def patch_moe_decode(model: nn.Module) -> list[str]:
    """Replaces every supported MoE block of an mlx-lm model in place; returns their paths."""
    patched = []
    for i, layer in enumerate(model.layers):
        for attr in ("mlp", "block_sparse_moe"):
            block = getattr(layer, attr, None) if attr in layer else None
            if block is not None and gating_mode(block) is not None:
                setattr(layer, attr, MoEDecode(block))
                patched.append(f"layers.{i}.{attr}")
    return patched
