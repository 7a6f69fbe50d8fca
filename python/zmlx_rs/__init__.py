"""zmlx_rs: fused MLX-CUDA kernels and Rust hot paths that make mlx-lm faster."""

from zmlx_rs import kernels, reference
from zmlx_rs._native import __version__
from zmlx_rs.errors import BackendError, DTypeError, ShapeError, ZmlxError
from zmlx_rs.patch import patch, unpatch
from zmlx_rs.report import PatchReport

__all__ = [
    "BackendError",
    "DTypeError",
    "PatchReport",
    "ShapeError",
    "ZmlxError",
    "__version__",
    "kernels",
    "patch",
    "reference",
    "unpatch",
]
