"""Helpers shared by the kernel tests: devices, poisoning, float64 references."""

from __future__ import annotations

import contextlib

import mlx.core as mx
import numpy as np
import pytest
from conftest import TOLERANCE

# Every kernel test runs on the CPU (the MLX fallback) and, with the `cuda` marker, on the
# GPU (the CUDA kernel). On a GPU machine `pytest -m cuda` runs just the kernel variants.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("gpu", id="gpu", marks=pytest.mark.cuda)]
DTYPES = [
    pytest.param(mx.float32, id="f32"),
    pytest.param(mx.float16, id="f16"),
    pytest.param(mx.bfloat16, id="bf16"),
]


@contextlib.contextmanager
def on_device(name: str):
    old = mx.default_device()
    mx.set_default_device(mx.gpu if name == "gpu" else mx.cpu)
    try:
        yield
    finally:
        mx.set_default_device(old)


def poison(*arrays_like: tuple[tuple[int, ...], mx.Dtype]) -> None:
    """Leaves freed all-ones-bits buffers of each output's size in MLX's allocator cache, so
    a kernel that skips an element writes NaN (or 0xFFFFFFFF) there instead of a lucky 0."""
    bufs = []
    for shape, dtype in arrays_like:
        nbytes = int(np.prod(shape)) * dtype.size
        bufs.append(mx.full((max(nbytes, 1),), 255, dtype=mx.uint8))
    mx.eval(bufs)
    del bufs


def f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32), copy=False).astype(np.float64)


def assert_close(actual: mx.array, expected: np.ndarray, dtype: mx.Dtype, scale: float = 1.0):
    rtol, atol = TOLERANCE[dtype]
    got = f64(actual)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.all(np.isfinite(got)), "non-finite output (poisoned element left unwritten?)"
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale)


def silu64(g: np.ndarray) -> np.ndarray:
    return g / (1.0 + np.exp(-g))


def gelu64(g: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return 0.5 * g * (1.0 + np.vectorize(erf)(g / sqrt(2.0)))


def gelu_tanh64(g: np.ndarray) -> np.ndarray:
    c = np.sqrt(2.0 / np.pi)
    return 0.5 * g * (1.0 + np.tanh(c * (g + 0.044715 * g**3)))
