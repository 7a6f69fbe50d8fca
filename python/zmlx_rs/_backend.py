"""Which MLX backend runs the default device: decides kernel vs. MLX-op fallback."""

from __future__ import annotations

import mlx.core as mx

HAS_CUDA: bool = bool(mx.cuda.is_available())
HAS_METAL: bool = bool(mx.metal.is_available())
_GPU = mx.DeviceType.gpu


def on_cuda() -> bool:
    """True when the default device is an MLX-CUDA GPU, so custom CUDA kernels can run."""
    return HAS_CUDA and mx.default_device().type == _GPU


def name() -> str:
    """'cuda', 'metal' or 'cpu': the backend of the current default device."""
    if mx.default_device().type != _GPU:
        return "cpu"
    return "cuda" if HAS_CUDA else "metal" if HAS_METAL else "cpu"
