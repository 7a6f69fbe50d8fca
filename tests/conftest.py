"""Shared test setup: the `cuda` marker and dtype tolerances."""

from __future__ import annotations

import mlx.core as mx
import pytest

HAS_CUDA = bool(mx.cuda.is_available())

# (rtol, atol) against a float64 reference, by dtype of the result.
TOLERANCE = {
    mx.float32: (1e-5, 1e-6),
    mx.float16: (2e-3, 1e-3),
    mx.bfloat16: (1.6e-2, 1e-2),
}


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs MLX with a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
