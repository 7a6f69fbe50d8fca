"""patch()/unpatch() on tiny fp32 models of every family: parity, greedy decoding, bitwise
restore, generation APIs, LoRA training, memory, the report and its plan."""

from __future__ import annotations

import gc
import importlib
import json

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
import zmlx_rs
from mlx_lm.generate import batch_generate, generate, generate_step, stream_generate
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.tuner.trainer import default_loss
from mlx_lm.tuner.utils import linear_to_lora_layers
from tiny import FAMILIES, build, snapshot, tokenizer
from zmlx_rs import PatchReport, ZmlxError, patterns
from zmlx_rs.patterns.dense_mlp import _gated_form
from zmlx_rs.patterns.moe import FusedMoEBlock, FusedSwitchGLU, MoEBlock

# Prompt long enough that tokens x top-k >= 64: the MoE prefill takes the sorted path.
PROMPT = mx.array([[(7 * i + 3) % 96 for i in range(40)]])

# What patch() must fuse in each tiny family (2 layers; MoE families with one dense layer
# where their config has first_k_dense_replace / mlp_only_layers).
EXPECTED = {
    "llama": {"add_norm": 2, "qkv_rope": 2, "dense_mlp": 2},
    "mistral": {"add_norm": 2, "qkv_rope": 2, "dense_mlp": 2},
    "qwen2": {"add_norm": 2, "qkv_rope": 2, "dense_mlp": 2},
    "qwen3": {"add_norm": 2, "qk_norm_rope": 2, "dense_mlp": 2},
    "qwen3_moe": {
        "add_norm": 2,
        "moe_block": 1,
        "moe_experts": 1,
        "qk_norm_rope": 2,
        "dense_mlp": 1,
    },
    "qwen2_moe": {
        "add_norm": 2,
        "moe_block": 2,
        "moe_experts": 2,
        "qkv_rope": 2,
        "dense_mlp": 2,
    },
    "qwen3_next": {"moe_block": 2, "moe_experts": 2, "dense_mlp": 2},
    "mixtral": {"add_norm": 2, "moe_block": 2, "moe_experts": 2, "qkv_rope": 2},
    "glm4_moe": {"moe_block": 1, "moe_experts": 1, "dense_mlp": 2},
    "deepseek_v3": {"moe_block": 1, "moe_experts": 1, "dense_mlp": 2},
    "gemma": {"qkv_rope": 2, "dense_mlp": 2},
    "gemma2": {"dense_mlp": 2},
    "phi3": {"add_norm": 2, "dense_mlp": 2},
    "internlm2": {"dense_mlp": 2},
    "gpt_oss": {"moe_block": 2},
}
assert set(EXPECTED) == set(FAMILIES)


def expected(family: str, quantized: bool) -> dict[str, int]:
    """EXPECTED, with moe_decode taking the blocks whose experts are quantised SwiGLU ones
    (those moe_experts packs)."""
    counts = dict(EXPECTED[family])
    if quantized and "moe_experts" in counts:
        counts["moe_decode"] = counts.pop("moe_block")
    return counts


QUANTS = [None, (4, 32), (8, 64)]


def greedy(model: nn.Module, steps: int) -> list[int]:
    tokens = generate_step(
        PROMPT[0], model, max_tokens=steps, prompt_cache=make_prompt_cache(model)
    )
    return [int(t) for t, _ in tokens]


def close(a: mx.array, b: mx.array) -> bool:
    scale = mx.abs(b).max().item()
    return mx.abs(a - b).max().item() <= 1e-4 * max(scale, 1.0)


@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: "fp32" if q is None else f"q{q[0]}g{q[1]}")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_patch_parity_and_bitwise_unpatch(family, quant):
    bits, group = quant or (None, 64)
    model = build(family, bits=bits, group_size=group)
    before = snapshot(model)
    ref = model(PROMPT)
    ref_tokens = greedy(model, 32)

    report = zmlx_rs.patch(model)
    assert report.counts() == expected(family, bits is not None), str(report)
    assert all(p.note for p in report.patched)
    assert close(model(PROMPT), ref)
    assert greedy(model, 32) == ref_tokens

    again = zmlx_rs.patch(model)
    assert all(p.note == "already patched" for p in again.patched)
    assert len(again.patched) == len(report.patched)

    restored = zmlx_rs.unpatch(model)
    assert sorted(restored) == sorted(report.paths())
    assert zmlx_rs.unpatch(model) == []
    after = snapshot(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and mx.array_equal(after[key], value), key
        # The never-patched layout too: MLX-CUDA's quantized matmuls need row-contiguous
        # weights, scales and biases (numpy sees the array's real strides).
        assert np.asarray(after[key]).flags["C_CONTIGUOUS"], key
    assert mx.array_equal(model(PROMPT), ref)


@pytest.mark.parametrize("bits", [None, 4], ids=["fp32", "q4"])
def test_weights_are_moved_not_copied(bits):
    model = build("qwen3_moe", bits=bits, hidden_size=256, moe_intermediate_size=256)
    n_params = len(snapshot(model))
    gc.collect()
    resident = mx.get_active_memory()
    zmlx_rs.patch(model)
    gc.collect()
    assert mx.get_active_memory() <= resident * 1.01
    # gate+up pairs became one array each: fewer arrays, same bytes.
    assert len(snapshot(model)) < n_params
    zmlx_rs.unpatch(model)
    gc.collect()
    assert mx.get_active_memory() <= resident * 1.01


def test_moe_decode_and_prefill_paths_both_run():
    model = build("qwen3_moe")
    zmlx_rs.patch(model)
    block = model.model.layers[1].mlp
    assert isinstance(block, FusedMoEBlock) and isinstance(block.switch_mlp, FusedSwitchGLU)
    x = mx.random.normal((1, 40, 64))
    zmlx_rs.unpatch(model)
    assert model.model.layers[1].mlp is block.original
    expected_prefill, expected_decode = block.original(x), block.original(x[:, :1])
    zmlx_rs.patch(model)
    block = model.model.layers[1].mlp
    assert close(block(x), expected_prefill)  # 80 picks: sorted path
    assert close(block(x[:, :1]), expected_decode)  # 2 picks: gathered path


def test_group_limited_routing_keeps_the_model_router():
    model = build("deepseek_v3", n_group=2, topk_group=1)
    ref = model(PROMPT)
    report = zmlx_rs.patch(model)
    assert "group-limited" in next(p.note for p in report.patched if p.pattern == "moe_block")
    assert close(model(PROMPT), ref)


@pytest.mark.parametrize("quant", [None, (4, 64)], ids=["fp32", "q4"])
def test_tensor_parallel_sharded_model(quant):
    """mlx-lm's own `shard()` (a one-process group here): sharded linears fuse into a
    sharded linear, and the MoE block keeps its sharding_group all-sum."""
    model = build("qwen3_moe", bits=quant and quant[0])
    group = mx.distributed.init()
    model.shard(group)
    ref = model(PROMPT)
    report = zmlx_rs.patch(model)
    assert report.counts() == expected("qwen3_moe", quant is not None)
    layer = model.model.layers[1]
    assert "AllToShardedLinear" in type(layer.self_attn.qkv_proj).__name__
    assert layer.mlp.sharding_group is group
    assert close(model(PROMPT), ref)
    zmlx_rs.unpatch(model)
    assert model.model.layers[1].mlp.sharding_group is group
    assert mx.array_equal(model(PROMPT), ref)


@pytest.mark.parametrize("every", [False, True], ids=["default", "every_pattern"])
@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_generation_apis_on_patched_models(family, every):
    model, tok = build(family), tokenizer()
    prompts = [[5, 9, 11, 20, 3], [7, 8, 1]]
    # generate_step prefills in chunks; a small step size forces prompt-cache reuse too.
    kwargs = {"max_tokens": 12, "prefill_step_size": 2}

    def run() -> tuple:
        text = generate(model, tok, prompt=prompts[0], **kwargs)
        streamed = [r.token for r in stream_generate(model, tok, prompt=prompts[0], **kwargs)]
        cache = make_prompt_cache(model)
        first = [r.token for r in stream_generate(model, tok, prompts[0], 4, prompt_cache=cache)]
        rest = [r.token for r in stream_generate(model, tok, [first[-1]], 6, prompt_cache=cache)]
        batched = batch_generate(model, tok, prompts, max_tokens=8, return_token_ids=True)
        return text, streamed, first + rest, batched.token_ids

    expected = run()
    zmlx_rs.patch(model, patterns=patterns.names() if every else None)
    assert run() == expected


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_lora_training_losses_match(family):
    batch = mx.array([[(5 * i + j) % 96 for i in range(24)] for j in range(2)])
    lengths = mx.array([[0, 23], [0, 23]])
    # Keys present in both the patched and the unpatched model.
    lora = {
        "rank": 4,
        "scale": 10.0,
        "dropout": 0.0,
        "keys": ["self_attn.o_proj", "mlp.down_proj", "mlp.switch_mlp.down_proj"],
    }

    def train(patched: bool) -> list[float]:
        model = build(family)
        if patched:
            zmlx_rs.patch(model)
        model.freeze()
        mx.random.seed(1)
        linear_to_lora_layers(model, 2, lora)
        model.train()  # as mlx_lm's trainer does: patched modules take the differentiable path
        optimizer = optim.Adam(learning_rate=1e-2)
        step = nn.value_and_grad(model, default_loss)
        losses = []
        for _ in range(4):
            (loss, _), grads = step(model, batch, lengths)
            optimizer.update(model, grads)
            mx.eval(model.parameters(), optimizer.state)
            losses.append(loss.item())
        return losses

    plain, patched = train(False), train(True)
    assert plain[-1] < plain[0]
    assert patched == pytest.approx(plain, rel=1e-4)


def test_report_table_html_and_json_round_trip():
    model = build("qwen2_moe")
    report = zmlx_rs.patch(model, verbose=False)
    text = str(report)
    assert "model.layers.0.mlp.switch_mlp" in text and "moe_experts" in text
    assert text.splitlines()[0].startswith("PatchReport qwen2_moe: patched")
    assert "<table>" in report._repr_html_()
    data = json.loads(json.dumps(report.to_dict()))
    assert PatchReport.from_dict(data) == report
    with pytest.raises(ZmlxError, match="format"):
        PatchReport.from_dict({"format": 99})


def test_plan_reapplies_exactly():
    model = build("qwen3_moe")
    plan = zmlx_rs.patch(model, exclude=["model.layers.0.*"])
    assert not any(p.startswith("model.layers.0.") for p in plan.paths())
    assert any(s.reason == "excluded" for s in plan.skipped)
    fresh = build("qwen3_moe")
    again = zmlx_rs.patch(fresh, plan=plan.to_dict())
    assert sorted(again.paths()) == sorted(plan.paths())
    assert {s.reason for s in again.skipped} == {"not in the plan"}


def test_pattern_selection_and_errors():
    model = build("qwen3_moe")
    report = zmlx_rs.patch(model, patterns=["dense_mlp"])
    assert set(report.counts()) == {"dense_mlp"}
    zmlx_rs.unpatch(model)
    report = zmlx_rs.patch(model, exclude=["attention_qkv", "qk_norm_rope", "qk_norm", "add_norm"])
    assert report.counts() == {"dense_mlp": 1, "moe_block": 1, "moe_experts": 1}
    # qk_norm_rope and qk_norm are patterns of their own: excluding attention_qkv leaves
    # them, and excluding qk_norm_rope leaves qk_norm.
    zmlx_rs.unpatch(model)
    assert "qk_norm_rope" in zmlx_rs.patch(model, exclude=["attention_qkv"]).counts()
    zmlx_rs.unpatch(model)
    assert "qk_norm" in zmlx_rs.patch(model, exclude=["qk_norm_rope"]).counts()
    with pytest.raises(ZmlxError, match="unknown pattern"):
        zmlx_rs.patch(model, patterns=["nope"])
    with pytest.raises(ZmlxError, match="'patterns'"):
        zmlx_rs.patch(model, patterns="dense_mlp")
    with pytest.raises(ZmlxError, match="'model'"):
        zmlx_rs.patch(object())
    assert patterns.names() == [
        "add_norm",
        "moe_decode",
        "moe_block",
        "moe_experts",
        "qk_norm_rope",
        "qk_norm",
        "qkv_rope",
        "attention_qkv",
        "dense_mlp",
        "qmv",
    ]


def test_unrecognised_forward_is_reported_not_patched():
    class SwappedMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(8, 16)
            self.up_proj = nn.Linear(8, 16)
            self.down_proj = nn.Linear(16, 8)

        def __call__(self, x):
            return self.down_proj(nn.silu(self.up_proj(x)) * self.up_proj(x))

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = SwappedMLP()

    report = zmlx_rs.patch(Holder())
    assert report.patched == []
    assert [(s.path, s.pattern) for s in report.skipped] == [("mlp", "dense_mlp")]


def test_mixed_quantization_is_skipped_with_reason():
    model = build("llama")
    nn.quantize(model, bits=4, class_predicate=lambda p, m: p.endswith("gate_proj"))
    report = zmlx_rs.patch(model, patterns=["dense_mlp"])
    assert report.patched == []
    assert all("mixed layer types" in s.reason for s in report.skipped)


# Sizes for the CUDA parity models: every quantized layer's input width above the group
# size (64). MLX-CUDA 0.32.4 sends a quantized matmul with K <= group_size to its sm90 CUTLASS
# kernel, a path real models never take (K >= 2048). With K = 64 the unpatched tiny q4 models
# gave garbage logits and illegal-address faults on the H100 (suspected cause; these sizes
# are not yet run on the GPU).
CUDA_SIZES = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 128,
    "shared_expert_intermediate_size": 128,
    "head_dim": 32,
    "v_head_dim": 32,
    "qk_nope_head_dim": 32,
    "kv_lora_rank": 128,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
}


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", [False, True], ids=["ops", "graphs"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe", "mixtral"])
def test_cuda_every_pattern_keeps_the_logits_bitwise(family, graphs):
    """bf16, 4-bit: every pattern, the opt-in ones included, rounds where mlx-lm's ops
    round, so prefill and one-token decode logits are the unpatched model's bit for bit,
    op by op and with decode graphs (which replay the same primitives).
    Except moe_decode: at these sizes (fewer than 8 (token, expert) pairs per decode step)
    MLX's gather_qmm runs an fp32 qmv whose order its kernels do not repeat (within
    tolerance: test_moe_qmv.py); where MLX runs its tensor-core kernel they are bitwise
    (test_kernels_are_mlx_lm_bitwise_where_mlx_uses_tensor_cores)."""
    model = build(family, bits=4, group_size=64, **CUDA_SIZES)
    model.set_dtype(mx.bfloat16)

    def logits() -> list[mx.array]:
        cache = make_prompt_cache(model)
        out = [model(PROMPT, cache=cache)]
        for token in (3, 17, 60):
            out.append(model(mx.array([[token]]), cache=cache))
        mx.eval(out)
        return out

    want = logits()
    report = zmlx_rs.patch(model, patterns=[n for n in patterns.names() if n != "moe_decode"])
    assert {"add_norm", "qmv"} <= set(report.counts()), str(report)
    assert family in ("llama", "mixtral") or "qk_norm_rope" in report.counts()
    assert family in ("qwen3", "qwen3_moe") or "qkv_rope" in report.counts()
    patterns.use_decode_graphs(graphs)
    try:
        got_logits = logits()
    finally:
        patterns.use_decode_graphs(False)
    for got, ref in zip(got_logits, want, strict=True):
        assert mx.array_equal(got, ref).item()
    with_graphs = [m for _, m in model.named_modules() if "_decode_graph" in m.__dict__]
    assert bool(with_graphs) == graphs


@pytest.mark.cuda
@pytest.mark.parametrize("bits", [None, 4], ids=["dense", "q4"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16], ids=str)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cuda_parity(family, dtype, bits):
    """The CUDA kernels inside patched models. fp32: greedy decoding identical. Half
    precision: the kernels round once from fp32 math where mlx-lm rounds every op (and MoE
    routing may then pick another expert on a near tie), so the patched model is held to the
    fp32 model: no further from it than the unpatched half-precision model."""
    model = build(family, bits=bits, **CUDA_SIZES)
    truth = model(PROMPT).astype(mx.float32)
    model.set_dtype(dtype)
    ref = model(PROMPT).astype(mx.float32)
    ref_tokens = greedy(model, 32)
    zmlx_rs.patch(model)
    out = model(PROMPT).astype(mx.float32)
    scale = max(mx.abs(truth).max().item(), 1.0)
    if dtype == mx.float32:
        assert mx.abs(out - ref).max().item() <= 1e-3 * scale
        assert greedy(model, 32) == ref_tokens
    else:
        err_ref = mx.abs(ref - truth).mean().item()
        err_out = mx.abs(out - truth).mean().item()
        assert err_out <= 1.5 * err_ref + 1e-3 * scale, (err_out, err_ref)
        # The argmax may move only where the fp32 model's top two are within the error.
        top2 = mx.sort(truth, axis=-1)[..., -2:]
        near_tie = (top2[..., 1] - top2[..., 0]) <= 2 * mx.abs(out - truth).max()
        moved = out.argmax(-1) != truth.argmax(-1)
        assert mx.all(near_tie | ~moved).item(), "argmax moved away from a clear winner"
    zmlx_rs.unpatch(model)
    assert mx.array_equal(model(PROMPT).astype(mx.float32), ref)


def test_quantized_moe_blocks_take_moe_decode_unless_excluded():
    model = build("qwen3_moe", bits=4)
    assert zmlx_rs.patch(model).counts()["moe_decode"] == 1
    zmlx_rs.unpatch(model)
    counts = zmlx_rs.patch(model, exclude=["moe_decode"]).counts()
    assert counts["moe_block"] == 1 and "moe_decode" not in counts
    # Experts the decode kernels cannot read (3-bit; unquantized) stay with moe_block.
    for model in (build("qwen3_moe", bits=3), build("qwen3_moe")):
        counts = zmlx_rs.patch(model).counts()
        assert counts["moe_block"] == 1 and "moe_decode" not in counts


def test_a_specialised_moe_block_can_take_the_patterns_place():
    class CountingBlock(FusedMoEBlock):
        calls = 0

        def experts_and_combine(self, x, indices, scores):
            CountingBlock.calls += 1
            return super().experts_and_combine(x, indices, scores)

    saved = list(patterns.ALL)
    try:
        patterns.register(MoEBlock(fused_class=CountingBlock))
        assert patterns.names() == [
            "add_norm",
            "moe_decode",
            "moe_block",
            "moe_experts",
            "qk_norm_rope",
            "qk_norm",
            "qkv_rope",
            "attention_qkv",
            "dense_mlp",
            "qmv",
        ]
        model = build("qwen3_moe")
        ref = model(PROMPT)
        zmlx_rs.patch(model)
        assert close(model(PROMPT), ref) and CountingBlock.calls == 1
        zmlx_rs.unpatch(model)
        assert mx.array_equal(model(PROMPT), ref)
    finally:
        patterns.ALL[:] = saved


def test_moe_beyond_the_gating_kernel_is_skipped_with_reason():
    model = build("qwen3_moe", num_experts=32)
    block = model.model.layers[1].mlp
    for top_k, reason in [(40, "top-k 40 not in 1..32"), (17, "moe_gating cannot route it")]:
        block.top_k = top_k
        report = zmlx_rs.patch(model, patterns=["moe_block"])
        assert report.patched == [] and reason in report.skipped[0].reason
    block.top_k = 8
    assert zmlx_rs.patch(model, patterns=["moe_block"]).counts() == {"moe_block": 1}


ACCEPTED_MLPS = {
    # module.class: (activation, projections feeding it, down projection)
    "llama.MLP": ("silu", ("gate_proj", "up_proj"), "down_proj"),
    "glm4_moe.MLP": ("silu", ("gate_proj", "up_proj"), "down_proj"),
    "exaone.MLP": ("silu", ("c_fc_0", "c_fc_1"), "c_proj"),
    "internlm2.MLP": ("silu", ("w1", "w3"), "w2"),
    "qwen.MLP": ("silu", ("w2", "w1"), "c_proj"),
    "dbrx.MLP": ("silu", ("w1", "v1"), "w2"),
    "phi3.MLP": ("silu", ("gate_up_proj",), "down_proj"),
    "glm4.Glm4MLP": ("silu", ("gate_up_proj",), "down_proj"),
    "plamo2.MLP": ("silu", ("gate_up_proj",), "down_proj"),
    "gemma.MLP": ("gelu", ("gate_proj", "up_proj"), "down_proj"),
    "gemma2.MLP": ("gelu_approx", ("gate_proj", "up_proj"), "down_proj"),
    "olmo_hybrid.MLP": ("silu", ("gate_proj", "up_proj"), "down_proj"),
}
REJECTED_MLPS = ["gpt2.MLP", "step3p5.Step3p5MLP", "phi3small.MLP", "lille-130m.Lille130mMLP"]


def _model_class(name: str) -> type:
    module, cls = name.rsplit(".", 1)
    return getattr(importlib.import_module(f"mlx_lm.models.{module}"), cls)


@pytest.mark.parametrize("name", list(ACCEPTED_MLPS))
def test_gated_mlp_forms_read_from_source(name):
    assert _gated_form(_model_class(name)) == ACCEPTED_MLPS[name]


@pytest.mark.parametrize("name", REJECTED_MLPS)
def test_other_mlp_forms_are_rejected(name):
    assert isinstance(_gated_form(_model_class(name)), str)


def test_a_module_shared_between_layers_is_fused_once():
    model = build("llama")
    layers = model.model.layers
    layers[1].mlp = layers[0].mlp
    ref = model(PROMPT)
    report = zmlx_rs.patch(model, patterns=["dense_mlp"])
    assert layers[0].mlp is layers[1].mlp
    assert sum(p.note.startswith("shared with model.layers.") for p in report.patched) == 1
    assert close(model(PROMPT), ref)
    zmlx_rs.unpatch(model)
    assert layers[0].mlp is layers[1].mlp and not isinstance(layers[0].mlp, patterns.Fused)
    assert mx.array_equal(model(PROMPT), ref)


def test_lora_on_fused_projections_trains_and_blocks_unpatch():
    """Default LoRA keys pick up the fused projections themselves: training works; unpatch
    refuses (the stacked weights now sit under a LoRA layer) instead of corrupting."""
    model = build("qwen3")
    zmlx_rs.patch(model)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 10.0, "dropout": 0.0})
    assert "LoRA" in type(model.model.layers[0].mlp.gate_up_proj).__name__
    batch = mx.array([[(5 * i) % 96 for i in range(24)]])
    loss, grads = nn.value_and_grad(model, default_loss)(model, batch, mx.array([[0, 23]]))
    assert mx.isfinite(loss[0]).item() and grads
    with pytest.raises(ZmlxError, match="LoRA"):
        zmlx_rs.unpatch(model)
    assert isinstance(model.model.layers[0].mlp, patterns.Fused)
