"""4-bit quantized linear layers at one token: `kernels.qmv` instead of MLX's qmv.

MLX-CUDA multiplies one row by a 4-bit matrix with a kernel bound by instruction issue
(24-38% of copy bandwidth on an H100), and at one token a dense 7B model spends most of its
GPU time there. `kernels.qmv` computes the same numbers bit for bit (MLX's per-lane
arithmetic) in about two thirds of the time at 7B widths. The layer is replaced by a
`FusedQuantizedLinear`, which *is* an `nn.QuantizedLinear` holding the same arrays (LoRA
conversion and `model.parameters()` see what they saw) and takes the kernel only for one
row in inference mode; anything else runs the original `quantized_matmul`. Layers wider
than 16384 outputs or inputs (e.g. the LM head of a large vocabulary) stay as they are: MLX's
source sends such rows to its tensor-core qmm_sm90 on Hopper, which rounds otherwise (0.32.4
still matched at 28672x4096; wider was not checked). A stack made by
another pattern (gate|up, q|k|v) counts by the widths of the layers it stacked, each of
which MLX would have run through its qmv.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from zmlx_rs import _backend, kernels
from zmlx_rs.patterns._base import OK, Fused, Pattern

__all__ = ["GRAPH_LINEARS", "QMV", "FusedQuantizedLinear", "same_dtype_out"]

_MLX_QMV_MAX = 16_384
_GROUP_SIZES = (32, 64, 128)


class FusedQuantizedLinear(Fused, nn.QuantizedLinear):
    """The original layer's arrays and settings, with the one-row kernel."""

    pattern = "qmv"

    def __init__(self, original: nn.QuantizedLinear) -> None:
        Fused.__init__(self, original)
        self.group_size = original.group_size
        self.bits = original.bits
        self.mode = original.mode
        for key in original:
            self[key] = original[key]
        object.__setattr__(self, "_no_grad", set(original._no_grad))
        n, k = original["weight"].shape[0], original["weight"].shape[1] * 32 // original.bits
        self.note = f"{n}x{k}, group size {original.group_size}"

    def __call__(self, x: mx.array) -> mx.array:
        if (
            not self.training
            and x.size == x.shape[-1]
            and x.dtype == self["scales"].dtype
            and _backend.on_cuda()
        ):
            y = kernels.qmv(
                x, self["weight"], self["scales"], self["biases"], group_size=self.group_size
            )
            return y + self["bias"] if "bias" in self else y
        return nn.QuantizedLinear.__call__(self, x)


# Projections a decode graph may hold (see patterns._base.DecodeGraph): a matmul or the qmv
# kernel, no elementwise ops (a LoRA layer adds some) and no collectives (sharded layers).
GRAPH_LINEARS = (nn.Linear, nn.QuantizedLinear, FusedQuantizedLinear)


def same_dtype_out(layer: nn.Module, dtype: mx.Dtype) -> bool:
    """Whether a GRAPH_LINEARS layer maps inputs of `dtype` to outputs of `dtype`."""
    arrays = (layer["scales"],) if "scales" in layer else (layer["weight"],)
    arrays += (layer["bias"],) if "bias" in layer else ()
    return all(a.dtype == dtype for a in arrays)


class QMV(Pattern):
    name = "qmv"
    description = "4-bit quantized linear at one token: a faster kernel, bitwise MLX's qmv"
    # Its kernel node costs more CPU time per call than MLX's built-in one (~2 us): where
    # decode is bound by graph building and encoding (7B-30B models on a fast GPU) it loses,
    # where the GPU is the bound (larger dense models, a slower GPU) it wins.
    by_default = False

    def matches(self, module: nn.Module, path: str) -> str | None:
        if type(module) is not nn.QuantizedLinear:
            return None
        if module.mode != "affine" or module.bits != 4:
            return f"{module.mode} {module.bits}-bit (the kernel reads affine 4-bit)"
        if module.group_size not in _GROUP_SIZES:
            return f"group size {module.group_size} (the kernel has 32, 64, 128)"
        weight, scales = module["weight"], module["scales"]
        if weight.ndim != 2 or scales.dtype not in (mx.float16, mx.bfloat16):
            return f"{weight.ndim}-D weight with {scales.dtype} scales"
        k = weight.shape[1] * 8
        widths = getattr(module, "stacked_widths", (weight.shape[0],))
        if max(widths) > _MLX_QMV_MAX or k > _MLX_QMV_MAX:
            return (
                f"{max(widths)}x{k} is wider than MLX's qmv ({_MLX_QMV_MAX}): MLX may multiply "
                "it with tensor cores, which round otherwise"
            )
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        assert isinstance(module, nn.QuantizedLinear)
        return FusedQuantizedLinear(module)

    def revert(self, fused: Fused) -> nn.Module:
        return fused.original
