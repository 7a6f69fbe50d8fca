"""DecodeGraph (a fused module's decode forward as one compiled call) and the patterns that
use it. The patterns take the graph only on MLX-CUDA; here the backend check is stood in for,
so the wiring runs on any backend (the kernels fall back to the reference ops)."""

from __future__ import annotations

import gc
import sys
import weakref
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import pytest
import tiny
import zmlx_rs
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from zmlx_rs import ZmlxError
from zmlx_rs.patterns import (
    Fused,
    add_norm,
    attention_qkv,
    dense_mlp,
    moe_decode,
    use_decode_graphs,
)
from zmlx_rs.patterns._base import DecodeGraph, decode_graph, graphs_built


@pytest.fixture(autouse=True)
def graphs_on():
    use_decode_graphs(True)
    yield
    use_decode_graphs(False)


class _Owner(Fused):
    """Two projections; `forward` raises on a width it was told to refuse."""

    def __init__(self, quantized: bool) -> None:
        super().__init__(nn.Module())
        self.a = nn.Linear(32, 40, bias=True)
        self.b = nn.Linear(40, 8, bias=False)
        if quantized:
            nn.quantize(self, group_size=32, bits=4, class_predicate=lambda p, m: p == "a")
        object.__setattr__(self, "refuse", -1)
        object.__setattr__(self, "traces", 0)

    def forward(self, x: mx.array) -> mx.array:
        object.__setattr__(self, "traces", self.traces + 1)
        if x.shape[0] == self.refuse:
            raise ValueError("refused")
        return self["b"](self["a"](x))


@pytest.mark.parametrize("quantized", [False, True])
def test_graph_replays_the_forward_with_the_current_weights(quantized):
    owner = _Owner(quantized)
    mods = (owner["a"], owner["b"])
    graph = decode_graph(owner, "forward", mods)
    assert decode_graph(owner, "forward", mods) is graph
    for rows in (1, 3, 1):
        x = mx.random.normal((rows, 32))
        assert mx.array_equal(graph(x), owner.forward(x)).item()
    # Traced once per shape (two shapes), the eager checks above aside.
    assert owner.traces == 2 + 3
    # A reassigned weight flows in without a retrace.
    owner["b"]["weight"] = mx.random.normal((8, 40))
    x = mx.random.normal((1, 32))
    traces = owner.traces
    assert mx.array_equal(graph(x), owner.forward(x)).item()
    assert owner.traces == traces + 1
    # A swapped module, or one whose arrays changed, needs a new graph.
    owner["b"] = nn.Linear(40, 8, bias=False)
    assert not graph.fits("forward", (owner["a"], owner["b"]))
    mods = (owner["a"], owner["b"])
    fresh = decode_graph(owner, "forward", mods)
    assert fresh is not graph and mx.array_equal(fresh(x), owner.forward(x)).item()
    assert fresh.fits("forward", mods)
    assert not fresh.fits("other", mods) and not fresh.fits("forward", mods, args=2)
    owner["b"]["bias"] = mx.zeros((8,))
    assert not fresh.fits("forward", mods)


def test_a_failed_trace_puts_the_arrays_back():
    owner = _Owner(False)
    before = {k: owner["a"][k] for k in owner["a"]}
    object.__setattr__(owner, "refuse", 5)
    graph = DecodeGraph(owner, "forward", (owner["a"], owner["b"]))
    with pytest.raises(ValueError, match="refused"):
        graph(mx.zeros((5, 32)))
    assert all(owner["a"][k] is v for k, v in before.items())
    x = mx.random.normal((2, 32))
    assert mx.array_equal(graph(x), owner.forward(x)).item()


def test_the_graph_does_not_keep_its_owner_alive():
    owner = _Owner(True)
    decode_graph(owner, "forward", (owner["a"], owner["b"]))(mx.zeros((1, 32)))
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None


@pytest.fixture
def cuda_paths(monkeypatch):
    """The patterns' CUDA branches on any backend (their kernels run the reference)."""
    for module in (moe_decode, dense_mlp, attention_qkv):
        monkeypatch.setattr(module, "_backend", SimpleNamespace(on_cuda=lambda: True))


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "llama", "qwen3"])
def test_patterns_decode_through_the_graph_and_unpatch_bitwise(family, cuda_paths):
    model = tiny.build(family, bits=4, group_size=32)
    # 40 tokens: past the MoE kernels' 64 (token, expert) pairs, and more than one row.
    prompt, token = mx.array([[(7 * i + 3) % 96 for i in range(40)]]), mx.array([[9]])
    want_prompt, want = model(prompt), model(token)
    zmlx_rs.patch(model)
    fused = [
        m
        for _, m in model.named_modules()
        if isinstance(
            m,
            moe_decode.FusedMoEDecodeBlock | dense_mlp.FusedGatedMLP | add_norm.FusedAddNormBlock,
        )
        or (isinstance(m, attention_qkv.FusedQKVAttention) and m.fuses_front(mx.float32))
    ]
    assert len({type(m) for m in fused}) >= 3
    # A prompt runs op by op, one token per row through the graph.
    assert mx.allclose(model(prompt), want_prompt, rtol=1e-4, atol=1e-4).item()
    assert not any("_decode_graph" in m.__dict__ for m in fused)
    for _ in range(2):
        assert mx.allclose(model(token), want, rtol=1e-4, atol=1e-4).item()
    assert all("_decode_graph" in m.__dict__ for m in fused)
    zmlx_rs.unpatch(model)
    assert mx.array_equal(model(token), want).item()
    assert mx.array_equal(model(prompt), want_prompt).item()


def test_training_mode_runs_op_by_op(cuda_paths):
    model = tiny.build("qwen3_moe", bits=4, group_size=32)
    zmlx_rs.patch(model)
    model.train()
    model(mx.array([[9]]))
    assert not any("_decode_graph" in m.__dict__ for _, m in model.named_modules())


def test_graphs_are_off_by_default_for_a_dense_model_and_the_switch_checks_its_argument(
    cuda_paths,
):
    use_decode_graphs(False)
    model = tiny.build("llama", bits=4, group_size=32)
    zmlx_rs.patch(model)
    model(mx.array([[9]]))
    assert not any("_decode_graph" in m.__dict__ for _, m in model.named_modules())
    with pytest.raises(ZmlxError, match="'enabled' must be a bool"):
        use_decode_graphs(1)


def test_patch_turns_graphs_on_per_model_and_plans_carry_it(cuda_paths):
    use_decode_graphs(False)
    token = mx.array([[9]])
    model = tiny.build("qwen3_moe", bits=4, group_size=32)
    other = tiny.build("qwen3_moe", bits=4, group_size=32, seed=1)
    want = model(token)
    report = zmlx_rs.patch(model, decode_graphs=True)
    assert report.decode_graphs and "decode graphs on" in str(report)
    assert not zmlx_rs.patch(other, decode_graphs=False).decode_graphs
    assert mx.allclose(model(token), want, rtol=1e-4, atol=1e-4).item()
    other(token)
    assert graphs_built(model) and not graphs_built(other)
    assert all(m.decode_graphs for _, m in model.named_modules() if isinstance(m, Fused))

    plan = report.to_dict()
    assert plan["decode_graphs"] is True
    zmlx_rs.unpatch(model)
    assert zmlx_rs.patch(model, plan=plan).decode_graphs  # the plan's setting
    zmlx_rs.unpatch(model)
    assert not zmlx_rs.patch(model, plan=plan, decode_graphs=False).decode_graphs
    # Every fused module of the model follows the latest call, already patched ones too.
    assert zmlx_rs.patch(model, decode_graphs=True).decode_graphs
    assert all(m.decode_graphs for _, m in model.named_modules() if isinstance(m, Fused))
    with pytest.raises(ZmlxError, match="'decode_graphs' must be a bool or None, got 1"):
        zmlx_rs.patch(model, decode_graphs=1)
    with pytest.raises(ZmlxError, match="'decode_graphs' must be a bool, got 'yes'"):
        zmlx_rs.patch(model, plan={**plan, "decode_graphs": "yes"})


@pytest.mark.parametrize(
    ("family", "cuda", "want"),
    [
        ("qwen3_moe", True, True),
        ("mixtral", True, True),
        ("qwen3_moe", False, False),
        ("llama", True, False),
    ],
)
def test_patch_turns_graphs_on_by_default_where_moe_decode_runs_on_cuda(
    family, cuda, want, monkeypatch
):
    # MoE decode steps are host-bound: patch replays them as graphs unless told otherwise.
    monkeypatch.setattr(
        sys.modules["zmlx_rs.patch"], "_backend", SimpleNamespace(on_cuda=lambda: cuda)
    )
    use_decode_graphs(False)
    model = tiny.build(family, bits=4, group_size=32)
    report = zmlx_rs.patch(model)
    assert report.decode_graphs is want and bool(report.paths("moe_decode")) is (family != "llama")
    assert all(m.decode_graphs is want for _, m in model.named_modules() if isinstance(m, Fused))
    assert zmlx_rs.patch(model, decode_graphs=not want).decode_graphs is not want
    zmlx_rs.unpatch(model)
    assert not zmlx_rs.patch(model, exclude=["moe_decode"]).decode_graphs
    zmlx_rs.unpatch(model)
    plan = {**report.to_dict(), "decode_graphs": False}
    assert not zmlx_rs.patch(model, plan=plan).decode_graphs  # a plan keeps its setting


@pytest.mark.parametrize("family", ["qwen3_moe", "llama", "qwen3"])
def test_greedy_decode_with_a_cache_keeps_the_tokens(family, cuda_paths):
    model = tiny.build(family, bits=4, group_size=32)
    prompt = mx.array([(3 * i + 2) % 96 for i in range(10)])

    def greedy() -> list[int]:
        cache = make_prompt_cache(model)
        return [int(t) for t, _ in generate_step(prompt, model, max_tokens=12, prompt_cache=cache)]

    want = greedy()
    zmlx_rs.patch(model)
    assert greedy() == want
    assert graphs_built(model)
    zmlx_rs.unpatch(model)
    assert greedy() == want


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "llama", "qwen3"])
def test_cuda_graphs_replay_the_op_by_op_logits_bitwise(family):
    """bf16, 4-bit, default patterns (moe_decode included): the logits of a prompt and three
    decode steps with decode graphs on are those with them off, bit for bit. Head dim 64:
    at the tiny configs' 16, MLX-CUDA's own unpatched forward gives different prompt logits
    from one pass to the next (an H100, mlx 0.32.4, cuDNN attention on or off; head dims 32
    and 64 repeat exactly, and so does a lone SDPA call at 16), which the check below catches."""
    model = tiny.build(
        family, bits=4, group_size=64, hidden_size=256, intermediate_size=512, head_dim=64
    )
    model.set_dtype(mx.bfloat16)

    def same(a: list[mx.array], b: list[mx.array]) -> str | None:
        for step, (x, y) in enumerate(zip(a, b, strict=True)):
            if not mx.array_equal(x, y).item():
                diff = mx.abs(x.astype(mx.float32) - y.astype(mx.float32)).max().item()
                return f"step {step}: max |diff| {diff}"
        return None

    # MLX itself first: two unpatched passes must agree, or nothing below means anything.
    use_decode_graphs(False)
    unpatched = [logits_of(model) for _ in range(2)]
    assert same(*unpatched) is None, f"unpatched passes differ: {same(*unpatched)}"
    zmlx_rs.patch(model, decode_graphs=False)  # on by default for MoE: the switch decides

    def logits(on: bool) -> list[mx.array]:
        use_decode_graphs(on)
        try:
            return logits_of(model)
        finally:
            use_decode_graphs(False)

    off, on = logits(False), logits(True)
    # The op-by-op path against the unpatched model (default patterns, moe_decode included:
    # within tolerance where MLX runs an fp32 qmv, see test_patch), then graphs against it.
    assert same(off, unpatched[0]) is None or family in ("qwen3_moe", "mixtral"), (
        f"patched op by op vs unpatched: {same(off, unpatched[0])}"
    )
    graphs = [p for p, m in model.named_modules() if "_decode_graph" in m.__dict__]
    assert graphs
    assert same(off, on) is None, f"graphs vs op by op: {same(off, on)}, graphs {graphs}"


def logits_of(model: nn.Module) -> list[mx.array]:
    """Logits of a 6-token prompt and three decode steps, from a fresh KV cache."""
    cache = make_prompt_cache(model)
    out = [model(mx.array([[3, 1, 4, 1, 5, 9]]), cache=cache)]
    for token in (2, 6, 5):
        out.append(model(mx.array([[token]]), cache=cache))
    mx.eval(out)
    return out
