"""zmlx_rs: fused MLX-CUDA kernels and Rust hot paths that make mlx-lm faster."""

from zmlx_rs import checkpoint, kernels, reference
from zmlx_rs._native import __version__
from zmlx_rs.detok import patch_tokenizer, unpatch_tokenizer
from zmlx_rs.errors import BackendError, CheckpointError, DTypeError, ShapeError, ZmlxError
from zmlx_rs.patch import patch, unpatch
from zmlx_rs.report import PatchReport
from zmlx_rs.smart import SmartPatchReport, smart_patch

__all__ = [
    "BackendError",
    "CheckpointError",
    "DTypeError",
    "PatchReport",
    "ShapeError",
    "SmartPatchReport",
    "ZmlxError",
    "__version__",
    "checkpoint",
    "kernels",
    "patch",
    "patch_tokenizer",
    "reference",
    "smart_patch",
    "unpatch",
    "unpatch_tokenizer",
]
