"""Dense 4-bit qmv: bit for bit mx.quantized_matmul at one row on CUDA, the reference
elsewhere; typed errors; the qmv pattern on quantized models (any backend)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import tiny
import zmlx_rs
from helpers import poison
from mlx_lm.tuner.utils import linear_to_lora_layers
from zmlx_rs import _native, kernels, patterns
from zmlx_rs import reference as ref
from zmlx_rs.errors import ZmlxError
from zmlx_rs.patterns.qmv import FusedQuantizedLinear


def _case(n, k, group_size, dtype, rows=1, seed=None):
    seed = int(np.random.randint(1 << 30)) if seed is None else seed
    k1, k2 = mx.random.split(mx.random.key(seed))
    w = (mx.random.normal((n, k), key=k1) * k**-0.5).astype(dtype)
    q = mx.quantize(w, group_size=group_size, bits=4)
    x = mx.random.normal((rows, k), key=k2).astype(dtype)
    return x, q


# (N, K, group size): a 7B MLP's and attention's widths, odd row counts, a K with a partial
# last step of 512 values (4128, 544), the smallest K.
SHAPES = [
    (4096, 4096, 64),
    (14336, 4096, 64),
    (1000, 2048, 32),
    (512, 1536, 128),
    (300, 14336, 64),
    (33, 4128, 32),
    (96, 544, 32),
    (7, 32, 32),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=str)
@pytest.mark.parametrize(("n", "k", "group_size"), SHAPES, ids=str)
def test_one_row_is_mlx_bit_for_bit(n, k, group_size, dtype):
    x, q = _case(n, k, group_size, dtype)
    want = mx.quantized_matmul(x, *q, transpose=True, group_size=group_size, bits=4)
    mx.eval(want)
    poison(((1, n), dtype))
    got = kernels.qmv(x, *q, group_size=group_size)
    assert got.dtype == dtype and got.shape == (1, n)
    assert mx.array_equal(got, want).item()


@pytest.mark.cuda
def test_rows_are_independent_one_row_products():
    x, q = _case(200, 1024, 64, mx.bfloat16, rows=6)
    x = x.reshape(2, 3, 1024)
    got = kernels.qmv(x, *q, group_size=64)
    assert got.shape == (2, 3, 200)
    rows = mx.stack([kernels.qmv(r[None], *q, group_size=64)[0] for r in x.reshape(6, 1024)])
    assert mx.array_equal(got.reshape(6, 200), rows).item()


def test_reference_path_matches_quantized_matmul():
    x, q = _case(64, 256, 32, mx.bfloat16, rows=3, seed=3)
    want = ref.qmv(x, *q, group_size=32, bits=4)
    if not zmlx_rs._backend.on_cuda():
        assert mx.array_equal(kernels.qmv(x, *q, group_size=32), want).item()
    assert mx.array_equal(
        want, mx.quantized_matmul(x, *q, transpose=True, group_size=32, bits=4)
    ).item()


def test_bad_arguments_raise_typed_errors():
    x, (w, s, b) = _case(64, 256, 64, mx.bfloat16, seed=1)
    with pytest.raises(_native.DTypeError, match="'x'"):
        kernels.qmv(x.astype(mx.float32), w, s, b)
    with pytest.raises(_native.ShapeError, match="'w'"):
        kernels.qmv(x[:, :128], w, s, b)
    with pytest.raises(_native.ZmlxError, match="'bits'"):
        kernels.qmv(x, w, s, b, bits=8)
    with pytest.raises(_native.ZmlxError, match="'group_size'"):
        kernels.qmv(x, w, s, b, group_size=16)
    with pytest.raises(_native.ZmlxError, match="'group_size'"):
        kernels.qmv(x, w, s, b, group_size=64.0)
    with pytest.raises(_native.DTypeError, match="'scales'"):
        kernels.qmv(x, w, s.astype(mx.float16), b)
    with pytest.raises(_native.ShapeError, match="'biases'"):
        kernels.qmv(x, w, s, b[:, :2])
    with pytest.raises(_native.DTypeError, match="'w'"):
        kernels.qmv(x, w.astype(mx.int32), s, b)
    with pytest.raises(_native.ShapeError, match="'x'"):
        kernels.qmv(mx.zeros((0, 256), dtype=mx.bfloat16), w, s, b)


def _bf16_model(family: str) -> nn.Module:
    model = tiny.build(family, bits=4, group_size=32)
    model.set_dtype(mx.bfloat16)
    return model


def test_pattern_takes_4bit_linears_and_stacks_and_reverts_bitwise():
    model = _bf16_model("llama")
    tokens = mx.array([[1, 5, 9, 2, 33, 70, 4, 8]])
    want = model(tokens)
    # Opt-in: patch() without patterns leaves it out.
    assert "qmv" not in zmlx_rs.patch(model).counts()
    zmlx_rs.unpatch(model)
    report = zmlx_rs.patch(model, patterns=patterns.names())
    counts = report.counts()
    # Every layer's o_proj, down_proj, and the q|k|v and gate|up stacks; and the LM head.
    assert counts["qmv"] >= 4 * model.args.num_hidden_layers
    layer = model.model.layers[0]
    assert isinstance(layer.mlp.gate_up_proj, FusedQuantizedLinear)
    assert isinstance(layer.mlp.down_proj, nn.QuantizedLinear)  # the layer class still holds
    assert mx.array_equal(model(tokens), want).item()
    # One token, the kernel's case (on CUDA), against the unpatched model's own one-token run.
    zmlx_rs.unpatch(model)
    one = model(tokens[:, :1])
    zmlx_rs.patch(model, patterns=patterns.names())
    assert mx.array_equal(model(tokens[:, :1]), one).item()
    zmlx_rs.unpatch(model)
    assert not any(isinstance(m, patterns.Fused) for _, m in model.named_modules())
    assert type(model.model.layers[0].mlp.down_proj) is nn.QuantizedLinear
    assert mx.array_equal(model(tokens), want).item()


def test_pattern_skips_what_mlx_does_not_run_through_qmv():
    model = tiny.build("llama", bits=4, group_size=32)  # fp32 scales
    report = zmlx_rs.patch(model, patterns=["qmv"])
    assert "qmv" not in report.counts()
    assert any("float32 scales" in s.reason for s in report.skipped)
    model = _bf16_model("llama")
    report = zmlx_rs.patch(model, patterns=["qmv"])
    assert report.counts()["qmv"] > 0
    wide = nn.QuantizedLinear(64, 16_448, bits=4, group_size=32)
    wide.set_dtype(mx.bfloat16)
    assert "wider than MLX's qmv" in patterns.get("qmv").matches(wide, "lm_head")
    eight = nn.QuantizedLinear(64, 64, bits=8, group_size=32)
    eight.set_dtype(mx.bfloat16)
    assert "8-bit" in patterns.get("qmv").matches(eight, "o_proj")


def test_lora_converts_the_patched_layers_and_unpatch_still_restores():
    model = _bf16_model("llama")
    tokens = mx.array([[3, 1, 4, 1, 5]])
    zmlx_rs.patch(model, patterns=["qmv"])
    model.freeze()
    linear_to_lora_layers(model, 1, {"rank": 4, "scale": 10.0, "dropout": 0.0})
    lora = model.model.layers[-1].self_attn.o_proj
    assert "LoRA" in type(lora).__name__ and isinstance(lora.linear, FusedQuantizedLinear)
    out = model(tokens)
    assert mx.isfinite(out.astype(mx.float32)).all().item()
    zmlx_rs.unpatch(model)
    assert type(model.model.layers[-1].self_attn.o_proj.linear) is nn.QuantizedLinear
    assert mx.array_equal(model(tokens), out).item()


def test_stacked_layers_block_unpatch_only_when_something_else_took_them():
    model = _bf16_model("qwen3")
    zmlx_rs.patch(model, patterns=patterns.names())
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.gate_up_proj, FusedQuantizedLinear)
    assert mlp.revert_blocker() is None
    mlp.gate_up_proj = nn.Linear(4, 4)
    with pytest.raises(ZmlxError, match="Linear"):
        zmlx_rs.unpatch(model)
