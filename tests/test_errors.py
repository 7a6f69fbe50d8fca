"""Every bad-input path raises a typed ZmlxError naming the argument, on every backend."""

from __future__ import annotations

import mlx.core as mx
import pytest
import zmlx_rs
from helpers import DEVICES, on_device
from zmlx_rs import DTypeError, ShapeError, ZmlxError, kernels


@pytest.fixture(params=DEVICES, autouse=True)
def device(request):
    with on_device(request.param):
        yield request.param


def f32(*shape):
    return mx.zeros(shape)


CASES = [
    # (call, exception class, text that must appear)
    (lambda: kernels.swiglu(f32(2, 3), f32(2, 4)), ShapeError, "'up' must be (2, 3)"),
    (lambda: kernels.swiglu(f32(2, 3), f32(2, 3).astype(mx.float16)), DTypeError, "'up'"),
    (
        lambda: kernels.swiglu(mx.zeros((2, 3), mx.int32), mx.zeros((2, 3), mx.int32)),
        DTypeError,
        "'gate'",
    ),
    (lambda: kernels.swiglu(mx.array(1.0), mx.array(1.0)), ShapeError, "'gate'"),
    (lambda: kernels.swiglu([1.0], f32(1)), ZmlxError, "'gate' must be an mlx.core.array"),
    (lambda: kernels.geglu(f32(2), "x"), ZmlxError, "'up' must be an mlx.core.array"),
    (lambda: kernels.swiglu_packed(f32(4, 7)), ShapeError, "even"),
    (lambda: kernels.geglu_packed(f32(4, 0)), ShapeError, "'h'"),
    (lambda: kernels.swiglu_packed(mx.zeros((4, 8), mx.uint32)), DTypeError, "'h'"),
    (lambda: kernels.gather_add(f32(4, 8, 16), f32(4, 7)), ShapeError, "'scores' must be (4, 8)"),
    (lambda: kernels.gather_add(f32(16), f32(1)), ShapeError, "'y'"),
    (lambda: kernels.gather_add(mx.zeros((2, 2, 2), mx.int8), f32(2, 2)), DTypeError, "'y'"),
    (lambda: kernels.gather_add(f32(2, 2, 2), mx.zeros((2, 2), mx.int32)), DTypeError, "'scores'"),
    (lambda: kernels.moe_gating(f32(2, 8), 0), ZmlxError, "'k'"),
    (lambda: kernels.moe_gating(f32(2, 8), 9), ZmlxError, "'k'"),
    (lambda: kernels.moe_gating(f32(2, 64), 17), ZmlxError, "'k'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2.0), ZmlxError, "'k' must be an int"),
    (lambda: kernels.moe_gating(f32(2, 1024), 2), ShapeError, "'logits'"),
    (lambda: kernels.moe_gating(mx.zeros((2, 8), mx.int32), 2), DTypeError, "'logits'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2, mode="max"), ZmlxError, "'mode'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2, ties="low"), ZmlxError, "'ties'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2, ties=1), ZmlxError, "'ties'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2, bias=f32(8)), ZmlxError, "'bias'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2, mode="sigmoid", bias=f32(7)), ShapeError, "'bias'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2, scale=float("nan")), ZmlxError, "'scale'"),
    (lambda: kernels.moe_gating(f32(2, 8), 2, scale="big"), ZmlxError, "'scale'"),
    (lambda: kernels.dropout(f32(4), 1.0), ZmlxError, "'p' must be a probability in [0, 1)"),
    (lambda: kernels.dropout(f32(4), -0.1), ZmlxError, "'p'"),
    (lambda: kernels.dropout(f32(4), "0.5"), ZmlxError, "'p'"),
    (lambda: kernels.dropout(f32(4), 0.5, key=mx.zeros((2,), mx.int32)), DTypeError, "'key'"),
    (lambda: kernels.dropout(f32(4), 0.5, key=mx.zeros((3,), mx.uint32)), ShapeError, "'key'"),
    (lambda: kernels.dropout(mx.zeros((4,), mx.int32), 0.5), DTypeError, "'x'"),
]


@pytest.mark.parametrize(("call", "exc", "text"), CASES, ids=[c[2] for c in CASES])
def test_bad_input_raises_typed_error(call, exc, text):
    with pytest.raises(exc) as info:
        call()
    assert text in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_hierarchy():
    for cls in (ShapeError, DTypeError, zmlx_rs.BackendError):
        assert issubclass(cls, ZmlxError)
    assert issubclass(ZmlxError, ValueError)
