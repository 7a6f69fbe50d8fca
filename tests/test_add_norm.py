"""Residual add + RMSNorm: bit for bit MLX's two ops on CUDA, the reference elsewhere; typed
errors; the add_norm pattern on mlx-lm decoder blocks (any backend)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import tiny
import zmlx_rs
from helpers import poison
from zmlx_rs import _native, kernels, patterns
from zmlx_rs import reference as ref
from zmlx_rs.patterns.add_norm import FusedAddNormBlock

# Row widths over MLX's dispatch: 64 x 1, 128 x 2..8 and 64 x 3 vectors per thread, a
# partial last vector row (1000), the widest half-type row (8192).
WIDTHS = [96, 512, 1000, 1536, 2048, 4096, 5120, 7168, 8192]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=str)
@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("rows", [1, 3])
def test_is_mlx_add_then_rms_norm_bit_for_bit(rows, d, dtype):
    if dtype == mx.float32 and d > 4096:
        pytest.skip("float32 rows stop at 4096")
    x, r = (mx.random.normal((rows, d)).astype(dtype) * 3 for _ in range(2))
    w = mx.random.uniform(0.5, 1.5, (d,)).astype(dtype)
    want_h, want = x + r, mx.fast.rms_norm(x + r, w, 1e-6)
    mx.eval(want_h, want)
    poison(((rows, d), dtype), ((rows, d), dtype))
    h, out = kernels.add_rms_norm(x, r, w, 1e-6)
    assert h.dtype == out.dtype == dtype
    assert mx.array_equal(h, want_h).item()
    assert mx.array_equal(out, want).item()


def test_reference_and_fallback():
    x, r = mx.random.normal((2, 5, 64)), mx.random.normal((2, 5, 64))
    w = mx.random.uniform(shape=(64,))
    h, out = ref.add_rms_norm(x, r, w, 1e-5)
    hs = np.array(x) + np.array(r)
    rms = np.sqrt((hs.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.array(out), hs / rms * np.array(w), rtol=1e-5, atol=1e-6)
    got = kernels.add_rms_norm(x, r, w, 1e-5)
    assert mx.allclose(got[0], h).item() and mx.allclose(got[1], out, rtol=1e-5).item()


def test_bad_arguments_raise_typed_errors():
    x, w = mx.zeros((2, 64)), mx.ones((64,))
    with pytest.raises(_native.ShapeError, match="'r'"):
        kernels.add_rms_norm(x, x[:, :32], w)
    with pytest.raises(_native.DTypeError, match="'r'"):
        kernels.add_rms_norm(x, x.astype(mx.float16), w)
    with pytest.raises(_native.ShapeError, match="'weight'"):
        kernels.add_rms_norm(x, x, w[:32])
    with pytest.raises(_native.DTypeError, match="'weight'"):
        kernels.add_rms_norm(x, x, w.astype(mx.bfloat16))
    with pytest.raises(_native.DTypeError, match="'x'"):
        kernels.add_rms_norm(x.astype(mx.int32), x.astype(mx.int32), w)
    with pytest.raises(_native.ZmlxError, match="'eps'"):
        kernels.add_rms_norm(x, x, w, float("nan"))
    with pytest.raises(_native.ZmlxError, match="'eps'"):
        kernels.add_rms_norm(x, x, w, "1e-5")
    wide = mx.zeros((1, 4160))
    with pytest.raises(_native.ShapeError, match="4096"):
        kernels.add_rms_norm(wide, wide, mx.ones((4160,)))


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe", "mixtral"])
def test_pattern_takes_decoder_blocks_and_reverts(family):
    model = tiny.build(family)
    tokens = mx.array([[1, 5, 9, 2, 33, 70, 4, 8]])
    want = model(tokens)
    assert zmlx_rs.patch(model).counts()["add_norm"] == model.args.num_hidden_layers
    zmlx_rs.unpatch(model)
    report = zmlx_rs.patch(model, patterns=["add_norm"])
    assert report.counts() == {"add_norm": model.args.num_hidden_layers}
    assert all(isinstance(layer, FusedAddNormBlock) for layer in model.model.layers)
    assert mx.allclose(model(tokens), want, rtol=1e-5, atol=1e-5).item()
    # With every other pattern inside the blocks too, and back.
    zmlx_rs.unpatch(model)
    zmlx_rs.patch(model, patterns=patterns.names())
    assert mx.allclose(model(tokens), want, rtol=1e-4, atol=1e-4).item()
    zmlx_rs.unpatch(model)
    assert not any(isinstance(m, patterns.Fused) for _, m in model.named_modules())
    assert mx.array_equal(model(tokens), want).item()


def test_patched_block_keeps_the_originals_settings_and_trains():
    model = tiny.build("llama")
    zmlx_rs.patch(model, patterns=["add_norm"])
    block = model.model.layers[0]
    assert block.use_sliding == block.original.use_sliding and block.args is model.args
    model.train()
    x = mx.random.normal((1, 4, model.args.hidden_size))

    def loss(params):
        block.update(params)
        return block(x).sum()

    grads = mx.grad(loss)(block.trainable_parameters())
    norm_grad = grads["post_attention_layernorm"]["weight"]
    assert mx.isfinite(norm_grad).all().item() and mx.abs(norm_grad).sum().item() > 0


def test_pattern_skips_blocks_it_cannot_take():
    model = tiny.build("llama")
    layer = model.model.layers[0]
    layer.post_attention_layernorm = nn.LayerNorm(model.args.hidden_size)
    report = zmlx_rs.patch(model, patterns=["add_norm"])
    assert report.counts()["add_norm"] == model.args.num_hidden_layers - 1
    assert any("LayerNorm" in s.reason for s in report.skipped)
    assert patterns.get("add_norm").matches(nn.Linear(2, 2), "x") is None


def test_linked_blocks_hand_on_the_next_norm_and_save_two_nodes_each():
    from zmlx_rs import measure

    model = tiny.build("qwen3")
    layers = model.args.num_hidden_layers
    prompt = mx.array([3, 1, 4, 1, 5, 9, 2, 6])
    want = model(prompt[None])
    before = measure.decode_graph_nodes(model, prompt)["nodes"]
    zmlx_rs.patch(model, patterns=["add_norm"])
    blocks = model.model.layers
    assert [b.next_block for b in blocks] == [*blocks[1:], None]
    # On CUDA one kernel node each; elsewhere the fallback is the same two MLX ops.
    saved = 2 * layers - 1 if zmlx_rs._backend.on_cuda() else 0
    assert measure.decode_graph_nodes(model, prompt)["nodes"] == before - saved
    # On the CPU the kernel is MLX's two ops, so the linked model is the unpatched one exactly.
    if not zmlx_rs._backend.on_cuda():
        assert mx.array_equal(model(prompt[None]), want).item()
    # A block called on an array of its own still normalises it itself.
    x = mx.random.normal((1, 3, model.args.hidden_size))
    got = blocks[1](x)
    assert mx.allclose(got, blocks[1].original(x), rtol=1e-5, atol=1e-5).item()
    # Patching twice keeps one link per block; a block taken out of the list is unlinked.
    zmlx_rs.patch(model, patterns=["add_norm"])
    assert blocks[0].next_block is blocks[1]
    zmlx_rs.unpatch(model)
    assert mx.array_equal(model(prompt[None]), want).item()


def test_mixed_dtypes_take_mlx_ops():
    model = tiny.build("llama")
    zmlx_rs.patch(model, patterns=["add_norm"])
    block = model.model.layers[0]
    x = mx.random.normal((1, 2, model.args.hidden_size)).astype(mx.bfloat16)  # fp32 weights
    assert mx.allclose(block(x), block.original(x), rtol=1e-2, atol=1e-2).item()
