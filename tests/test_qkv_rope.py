"""llama attention's split, heads and RoPE at one decode token: bit for bit MLX's split +
mx.fast.rope on CUDA, the reference elsewhere; typed errors; the qkv_rope pattern (any
backend)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
import tiny
import zmlx_rs
from helpers import poison
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from zmlx_rs import ZmlxError, _native, kernels, patterns
from zmlx_rs import reference as ref
from zmlx_rs.patterns.attention_qkv import FusedQKVAttention
from zmlx_rs.patterns.qkv_rope import FusedRopeAttention

# (query heads, key heads, head dim, value head dim): Mistral-7B, Llama-3-70B-ish, small, odd.
LAYOUTS = [(32, 8, 128, 128), (64, 8, 128, 128), (3, 1, 64, 32), (5, 5, 96, 80)]
# (base, scale, traditional)
ROPES = [(1e6, 1.0, False), (10000, 0.25, False), (500000.0, 1.0, True)]


def _case(rows: int, hq: int, hk: int, d: int, dv: int, dtype: mx.Dtype) -> mx.array:
    return (mx.random.normal((rows, 1, (hq + hk) * d + hk * dv)) * 3).astype(dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=str)
@pytest.mark.parametrize(("hq", "hk", "d", "dv"), LAYOUTS, ids=str)
@pytest.mark.parametrize(("base", "scale", "traditional"), ROPES, ids=str)
@pytest.mark.parametrize("offset", [0, 7, 4095, 131071])
def test_is_mlx_split_and_rope_bit_for_bit(offset, base, scale, traditional, hq, hk, d, dv, dtype):
    qkv = _case(2, hq, hk, d, dv, dtype)
    kw = {"n_heads": hq, "n_kv_heads": hk, "head_dim": d, "base": base, "scale": scale}
    kw["traditional"] = traditional
    want = ref.qkv_rope(qkv, offset, **kw)
    mx.eval(want)
    poison(*[(a.shape, dtype) for a in want])
    got = kernels.qkv_rope(qkv, offset, **kw)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == dtype
        assert mx.array_equal(g, w).item()


@pytest.mark.cuda
def test_one_position_per_row():
    qkv = _case(3, 4, 2, 64, 64, mx.bfloat16)
    kw = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 64, "base": 10000.0}
    offsets = mx.array([0, 5, 900], dtype=mx.int32)
    want = ref.qkv_rope(qkv, offsets, **kw)
    mx.eval(want)
    poison(*[(a.shape, mx.bfloat16) for a in want])
    for g, w in zip(kernels.qkv_rope(qkv, offsets, **kw), want, strict=True):
        assert mx.array_equal(g, w).item()


def test_reference_is_mlx_lm_attention_front():
    # The reference is the llama forward's ops, run on any backend.
    qkv = _case(2, 4, 2, 32, 16, mx.float32)
    q, k, v = kernels.qkv_rope(qkv, 3, n_heads=4, n_kv_heads=2, head_dim=32, base=10000)
    qq = qkv[..., :128].reshape(2, 1, 4, 32).transpose(0, 2, 1, 3)
    want_q = nn.RoPE(32, base=10000)(qq, offset=3)
    assert q.shape == (2, 4, 1, 32) and k.shape == (2, 2, 1, 32) and v.shape == (2, 2, 1, 16)
    assert mx.allclose(q, want_q, rtol=1e-6, atol=1e-6).item()
    assert mx.array_equal(v, qkv[..., 192:].reshape(2, 1, 2, 16).transpose(0, 2, 1, 3)).item()


def test_bad_arguments_raise_typed_errors():
    qkv = _case(2, 3, 2, 64, 64, mx.float32)
    kw = {"n_heads": 3, "n_kv_heads": 2, "head_dim": 64, "base": 10000.0}
    with pytest.raises(_native.ShapeError, match=r"'qkv'.*one decode token"):
        kernels.qkv_rope(mx.concatenate([qkv, qkv], axis=1), 0, **kw)
    with pytest.raises(_native.ShapeError, match="'qkv'"):
        kernels.qkv_rope(qkv[..., :-1], 0, **kw)
    with pytest.raises(_native.DTypeError, match=r"'offset'.*int32"):
        kernels.qkv_rope(qkv, mx.array(3.0), **kw)
    with pytest.raises(_native.ShapeError, match="'offset'"):
        kernels.qkv_rope(qkv, mx.array([1, 2, 3], dtype=mx.int32), **kw)
    with pytest.raises(ZmlxError, match="'offset' must be an int"):
        kernels.qkv_rope(qkv, 1.5, **kw)
    with pytest.raises(ZmlxError, match="'head_dim'"):
        kernels.qkv_rope(qkv, 0, **{**kw, "head_dim": 63})
    with pytest.raises(ZmlxError, match="'n_kv_heads'"):
        kernels.qkv_rope(qkv, 0, **{**kw, "n_kv_heads": 0})
    with pytest.raises(ZmlxError, match="'base'"):
        kernels.qkv_rope(qkv, 0, **{**kw, "base": -1.0})
    with pytest.raises(ZmlxError, match="'traditional'"):
        kernels.qkv_rope(qkv, 0, **kw, traditional=1)
    with pytest.raises(_native.DTypeError, match="'qkv'"):
        kernels.qkv_rope(qkv.astype(mx.int32), 0, **kw)


@pytest.mark.parametrize("family", ["llama", "mistral", "mixtral"])
def test_pattern_takes_llama_attention_decodes_the_same_and_reverts(family):
    model = tiny.build(family)
    prompt = mx.array([(5 * i + 1) % 96 for i in range(12)])

    def greedy() -> list[int]:
        steps = generate_step(prompt, model, max_tokens=12, prompt_cache=make_prompt_cache(model))
        return [int(t) for t, _ in steps]

    want = greedy()
    tokens = prompt[None]
    want_logits = model(tokens)
    report = zmlx_rs.patch(model, patterns=["qkv_rope"])
    assert report.counts() == {"qkv_rope": model.args.num_hidden_layers}
    attn = model.model.layers[0].self_attn
    assert isinstance(attn, FusedRopeAttention) and isinstance(attn, FusedQKVAttention)
    assert greedy() == want
    # Prefill takes mlx-lm's ops: the same logits.
    assert mx.allclose(model(tokens), want_logits, rtol=1e-5, atol=1e-5).item()
    zmlx_rs.unpatch(model)
    assert not any(isinstance(m, patterns.Fused) for _, m in model.named_modules())
    assert mx.array_equal(model(tokens), want_logits).item()
    # Ahead of attention_qkv when both are asked for.
    report = zmlx_rs.patch(model, patterns=["attention_qkv", "qkv_rope"])
    assert report.counts() == {"qkv_rope": model.args.num_hidden_layers}


def test_pattern_leaves_other_attention_alone():
    model = tiny.build("qwen3")
    report = zmlx_rs.patch(model, patterns=["qkv_rope", "attention_qkv"])
    assert "qkv_rope" not in report.counts() and report.counts()["attention_qkv"] > 0
    zmlx_rs.unpatch(model)
    model = tiny.build("llama")
    for layer in model.model.layers:
        layer.self_attn.rope = nn.RoPE(layer.self_attn.rope.dims // 2, base=10000)
    report = zmlx_rs.patch(model, patterns=["qkv_rope"])
    assert "qkv_rope" not in report.counts()
    assert "whole heads" in str(report)
