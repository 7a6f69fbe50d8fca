"""qwen3's q/k head norms from the fused projection: bit for bit MLX's split + rms_norm on
CUDA, the reference elsewhere; typed errors; the qk_norm pattern (any backend)."""

from __future__ import annotations

import mlx.core as mx
import pytest
import tiny
import zmlx_rs
from helpers import poison
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from zmlx_rs import _native, kernels, patterns
from zmlx_rs import reference as ref
from zmlx_rs.patterns.attention_qkv import FusedQKVAttention
from zmlx_rs.patterns.qk_norm import FusedQKNormAttention
from zmlx_rs.patterns.qk_norm_rope import FusedQKNormRopeAttention

# (query heads, key heads, head dim, value head dim): Qwen3-30B-A3B, Qwen3-0.6B-ish, small.
LAYOUTS = [(32, 4, 128, 128), (16, 8, 128, 128), (3, 1, 64, 32), (2, 2, 256, 256)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=str)
@pytest.mark.parametrize(("hq", "hk", "d", "dv"), LAYOUTS, ids=str)
@pytest.mark.parametrize("rows", [1, 5])
def test_is_mlx_split_and_head_norms_bit_for_bit(rows, hq, hk, d, dv, dtype):
    if dtype == mx.float32 and d > 128:
        pytest.skip("float32 heads stop at 128")
    qkv = mx.random.normal((1, rows, (hq + hk) * d + hk * dv)).astype(dtype) * 2
    qw, kw = (mx.random.uniform(0.5, 1.5, (d,)).astype(dtype) for _ in range(2))
    want = ref.qk_rms_norm(qkv, qw, kw, (1e-6, 1e-5), hq, hk)
    mx.eval(want)
    poison(*[(a.shape, dtype) for a in want])
    got = kernels.qk_rms_norm(qkv, qw, kw, (1e-6, 1e-5), hq, hk)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == dtype
        assert mx.array_equal(g, w).item()


def test_bad_arguments_raise_typed_errors():
    qkv, w = mx.zeros((1, 5 * 64 + 2 * 64)), mx.ones((64,))
    with pytest.raises(_native.ShapeError, match="'qkv'"):
        kernels.qk_rms_norm(qkv[:, :-1], w, w, (1e-6, 1e-6), 3, 2)
    with pytest.raises(_native.DTypeError, match="'k_weight'"):
        kernels.qk_rms_norm(qkv, w, w.astype(mx.float16), (1e-6, 1e-6), 3, 2)
    with pytest.raises(_native.ZmlxError, match="'n_heads'"):
        kernels.qk_rms_norm(qkv, w, w, (1e-6, 1e-6), 0, 2)
    with pytest.raises(_native.ZmlxError, match="'n_kv_heads'"):
        kernels.qk_rms_norm(qkv, w, w, (1e-6, 1e-6), 3, 2.0)
    with pytest.raises(_native.ZmlxError, match="'eps'"):
        kernels.qk_rms_norm(qkv, w, w, 1e-6, 3, 2)
    got = kernels.qk_rms_norm(qkv, w, w, (1e-6, 1e-6), 3, 2)
    assert [a.shape for a in got] == [(1, 3, 64), (1, 2, 64), (1, 2, 64)]


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_pattern_wraps_fused_qwen3_attention_and_reverts(family):
    model = tiny.build(family)
    tokens = mx.array([[1, 5, 9, 2, 33, 70, 4, 8]])
    want = model(tokens)
    assert zmlx_rs.patch(model).counts()["qk_norm_rope"] == model.args.num_hidden_layers
    zmlx_rs.unpatch(model)
    # On its own, and ahead of attention_qkv when both are asked for.
    for chosen in (["qk_norm"], ["attention_qkv", "qk_norm"]):
        report = zmlx_rs.patch(model, patterns=chosen)
        assert report.counts() == {"qk_norm": model.args.num_hidden_layers}
        zmlx_rs.unpatch(model)
    zmlx_rs.patch(model, patterns=["qk_norm"])
    attn = model.model.layers[0].self_attn
    assert isinstance(attn, FusedQKNormAttention) and isinstance(attn, FusedQKVAttention)
    assert not isinstance(attn.original, patterns.Fused)
    assert mx.allclose(model(tokens), want, rtol=1e-5, atol=1e-5).item()
    zmlx_rs.unpatch(model)
    assert not any(isinstance(m, patterns.Fused) for _, m in model.named_modules())
    assert mx.array_equal(model(tokens), want).item()
    # Everything at once, the opt-in patterns included, and back.
    zmlx_rs.patch(model, patterns=patterns.names())
    assert mx.allclose(model(tokens), want, rtol=1e-4, atol=1e-4).item()
    zmlx_rs.unpatch(model)
    assert mx.array_equal(model(tokens), want).item()


def test_pattern_leaves_llama_attention_alone():
    model = tiny.build("llama")
    report = zmlx_rs.patch(model, patterns=["attention_qkv", "qk_norm"])
    assert "qk_norm" not in report.counts() and report.counts()["attention_qkv"] > 0


# (base, scale, traditional) for qk_norm_rope.
ROPES = [(1e6, 1.0, False), (10000, 0.5, True)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=str)
@pytest.mark.parametrize(("hq", "hk", "d", "dv"), LAYOUTS, ids=str)
@pytest.mark.parametrize(("base", "scale", "traditional"), ROPES, ids=str)
@pytest.mark.parametrize("offset", [0, 9, 131071])
def test_norm_rope_is_mlx_split_norms_and_rope_bit_for_bit(
    offset, base, scale, traditional, hq, hk, d, dv, dtype
):
    if dtype == mx.float32 and d > 128:
        pytest.skip("float32 heads stop at 128")
    qkv = mx.random.normal((2, 1, (hq + hk) * d + hk * dv)).astype(dtype) * 2
    qw, kw = (mx.random.uniform(0.5, 1.5, (d,)).astype(dtype) for _ in range(2))
    rope = {"n_heads": hq, "n_kv_heads": hk, "base": base, "scale": scale}
    rope["traditional"] = traditional
    want = ref.qk_norm_rope(qkv, qw, kw, (1e-6, 1e-5), offset, **rope)
    mx.eval(want)
    poison(*[(a.shape, dtype) for a in want])
    got = kernels.qk_norm_rope(qkv, qw, kw, (1e-6, 1e-5), offset, **rope)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == dtype
        assert mx.array_equal(g, w).item()


def test_norm_rope_reference_and_errors():
    qkv = mx.random.normal((2, 1, 5 * 64 + 2 * 32))
    w = mx.random.uniform(0.5, 1.5, (64,))
    rope = {"n_heads": 3, "n_kv_heads": 2, "base": 1e6}
    q, k, v = kernels.qk_norm_rope(qkv, w, w, (1e-6, 1e-6), 4, **rope)
    nq, _, nv = ref.qk_rms_norm(qkv, w, w, (1e-6, 1e-6), 3, 2)
    want_q = mx.fast.rope(
        nq.transpose(0, 2, 1, 3), 64, traditional=False, base=1e6, scale=1.0, offset=4
    )
    assert mx.allclose(q, want_q, rtol=1e-5, atol=1e-5).item()
    assert k.shape == (2, 2, 1, 64) and mx.array_equal(v, nv.transpose(0, 2, 1, 3)).item()
    with pytest.raises(_native.ShapeError, match="'qkv'"):
        kernels.qk_norm_rope(mx.concatenate([qkv, qkv], 1), w, w, (1e-6, 1e-6), 0, **rope)
    with pytest.raises(_native.ShapeError, match="'q_weight'"):
        odd = mx.ones((36,))
        kernels.qk_norm_rope(mx.zeros((1, 1, 5 * 36 + 72)), odd, odd, (1e-6, 1e-6), 0, **rope)
    with pytest.raises(_native.DTypeError, match="'offset'"):
        kernels.qk_norm_rope(qkv, w, w, (1e-6, 1e-6), mx.array(1.0), **rope)
    with pytest.raises(_native.ZmlxError, match="'eps'"):
        kernels.qk_norm_rope(qkv, w, w, 1e-6, 0, **rope)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_norm_rope_pattern_decodes_the_same_and_reverts(family):
    model = tiny.build(family)
    prompt = mx.array([(3 * i + 2) % 96 for i in range(10)])

    def greedy() -> list[int]:
        steps = generate_step(prompt, model, max_tokens=10, prompt_cache=make_prompt_cache(model))
        return [int(t) for t, _ in steps]

    want, want_logits = greedy(), model(prompt[None])
    assert "qk_norm_rope" in zmlx_rs.patch(model).counts()  # a default
    zmlx_rs.unpatch(model)
    report = zmlx_rs.patch(model, patterns=["qk_norm", "qk_norm_rope"])
    assert report.counts() == {"qk_norm_rope": model.args.num_hidden_layers}
    assert isinstance(model.model.layers[0].self_attn, FusedQKNormRopeAttention)
    assert greedy() == want
    zmlx_rs.unpatch(model)
    assert mx.array_equal(model(prompt[None]), want_logits).item()
