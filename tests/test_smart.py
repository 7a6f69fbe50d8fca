"""smart_patch on tiny fp32 models with planted patterns: a slow one and a wrong one must be
dropped (and really reverted), a fast one kept, and the plan cache must short-cut a second
call. Speed differences are planted with sleeps so that CPU timing noise cannot flip them."""

from __future__ import annotations

import json
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_rs
from mlx_lm.models.llama import Attention
from tiny import build, snapshot
from zmlx_rs import _native, measure
from zmlx_rs import patterns as registry
from zmlx_rs.patterns import OK, Fused, Pattern, decode_graphs_on
from zmlx_rs.patterns._base import decode_graph
from zmlx_rs.smart import SmartPatchReport, cache_dir, smart_patch

# Sleeping in Python while a decode step is built is real time for generate_step, the way
# a slow kernel's launch cost is; per call of one MLP.
DELAY_S = 0.004


class Dawdling(nn.Module):
    """An MLP that wastes time before computing: the slow baseline a good pattern fixes. It
    does not wait while both halves of the planted pair are applied somewhere in the model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __call__(self, x: mx.array) -> mx.array:
        if not (PairA.live and PairB.live):
            time.sleep(DELAY_S)
        return self.inner(x)


class _Planted(Fused):
    calls = 0
    live = 0

    def __call__(self, x: mx.array) -> mx.array:
        type(self).calls += 1
        return self.original(x)


class SlowFused(_Planted):
    pattern = "planted_slow"

    def __call__(self, x: mx.array) -> mx.array:
        time.sleep(DELAY_S)
        return super().__call__(x)


class WrongFused(_Planted):
    pattern = "planted_wrong"

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x) * 1.5


class FastFused(_Planted):
    pattern = "planted_fast"

    def __call__(self, x: mx.array) -> mx.array:
        type(self).calls += 1
        return self.original.inner(x)


class GraphFused(_Planted):
    """Faster than the baseline, and faster still as a decode graph: its op-by-op forward
    waits half the baseline's time, and a graph replays the forward without the wait (which
    runs only while the graph is traced)."""

    pattern = "planted_graph"

    def __call__(self, x: mx.array) -> mx.array:
        type(self).calls += 1
        inner = self.original.inner
        graph = None
        if decode_graphs_on(self):
            graph = decode_graph(self, "forward", (inner.gate_proj, inner.up_proj, inner.down_proj))
        return self.forward(x) if graph is None else graph(x)

    def forward(self, x: mx.array) -> mx.array:
        time.sleep(DELAY_S / 2)
        return self.original.inner(x)


class PairA(_Planted):
    """Half of a pair: a pass-through that speeds the model up only with the other half."""

    pattern = "planted_pair_a"
    live = 0  # applied instances

    def __call__(self, *args, **kwargs):
        return self.original(*args, **kwargs)


class PairB(PairA):
    pattern = "planted_pair_b"
    live = 0


class HalfFast(_Planted):
    """Waits half the baseline's time, and not at all while the planted pair is applied: a
    pattern that wins alone and wins more with two that gain nothing alone."""

    pattern = "planted_half_fast"

    def __call__(self, x: mx.array) -> mx.array:
        type(self).calls += 1
        if not (PairA.live and PairB.live):
            time.sleep(DELAY_S / 2)
        return self.original.inner(x)


class _PlantedPattern(Pattern):
    def __init__(self, fused: type[_Planted], target: type[nn.Module]) -> None:
        self.name = fused.pattern
        self.fused = fused
        self.target = target
        self.fused_types = (fused,)

    def matches(self, module: nn.Module, path: str) -> str | None:
        return OK if type(module) is self.target else None

    def apply(self, module: nn.Module, path: str) -> Fused:
        self.fused.live += 1
        return self.fused(module)

    def revert(self, fused: Fused) -> nn.Module:
        self.fused.live -= 1
        return fused.original


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """Registers the planted patterns, points the plan cache at a temporary folder."""
    monkeypatch.setenv("ZMLX_RS_CACHE_DIR", str(tmp_path / "cache"))
    saved = list(registry.ALL)
    for p in (
        _PlantedPattern(SlowFused, Dawdling),
        _PlantedPattern(WrongFused, Dawdling),
        _PlantedPattern(FastFused, Dawdling),
        _PlantedPattern(GraphFused, Dawdling),
        _PlantedPattern(HalfFast, Dawdling),
        _PlantedPattern(PairA, Attention),
        _PlantedPattern(PairB, nn.RMSNorm),
    ):
        registry.register(p)
    yield
    registry.ALL[:] = saved
    PairA.live = PairB.live = 0  # a failed test must not leave the pair "applied"


def dawdling_llama(seed: int = 0) -> nn.Module:
    model = build("llama", seed=seed)
    for layer in model.model.layers:
        layer.mlp = Dawdling(layer.mlp)
    return model


def forward(model: nn.Module) -> mx.array:
    out = model(mx.arange(12)[None])
    mx.eval(out)
    return out


def fused_patterns(model: nn.Module) -> set[str]:
    return {m.pattern for _, m in model.named_modules() if isinstance(m, Fused)}


def test_drops_slow_and_wrong_keeps_fast(planted):
    model = dawdling_llama()
    before = forward(model)
    weights = snapshot(model)
    report = smart_patch(
        model,
        patterns=["planted_slow", "planted_wrong", "planted_fast"],
        workloads=("decode",),
        budget_s=15,
        progress=False,
    )
    by_name = {d.pattern: d for d in report.decisions}
    assert report.kept == ["planted_fast"], str(report)
    assert by_name["planted_wrong"].reason.startswith("numerics:")
    assert not by_name["planted_wrong"].measurements  # dropped before any timing
    slow = by_name["planted_slow"].ratio("decode")
    assert slow is not None and slow.verdict == "loss" and slow.median_ratio < 0.9
    fast = by_name["planted_fast"].ratio("decode")
    assert fast is not None and fast.verdict == "gain" and fast.ci_low > 1.02
    assert report.verification is not None and report.verification.kept
    assert report.graphs is None and not report.decode_graphs  # no module took a graph
    assert sorted(report.paths("planted_fast")) == ["model.layers.0.mlp", "model.layers.1.mlp"]

    # Only the kept pattern runs now: the slow and wrong ones are really gone.
    assert fused_patterns(model) == {"planted_fast"}
    SlowFused.calls = WrongFused.calls = FastFused.calls = 0
    after = forward(model)
    assert (SlowFused.calls, WrongFused.calls, FastFused.calls) == (0, 0, 2)
    assert mx.array_equal(before, after)

    zmlx_rs.unpatch(model)
    assert fused_patterns(model) == set()
    assert all(mx.array_equal(weights[k], v) for k, v in snapshot(model).items())


def test_slow_pattern_alone_leaves_the_model_unpatched(planted):
    model = dawdling_llama()
    report = smart_patch(model, patterns=["planted_slow"], budget_s=10, progress=False)
    assert report.kept == [] and report.patched == []
    assert fused_patterns(model) == set()
    d = report.decisions[0]
    assert [m.workload for m in d.measurements] == ["decode", "prefill"]
    assert "loss" in d.reason or "not faster" in d.reason


def test_patterns_that_win_only_together_are_kept_together(planted):
    model = dawdling_llama()
    report = smart_patch(
        model,
        patterns=["planted_slow", "planted_pair_a", "planted_pair_b"],
        workloads=("decode",),
        budget_s=20,
        # A pass-through alone measures 1.0 give or take CPU noise; a 20% bar keeps that
        # noise from reading as a gain or a loss (the pair together: ~3x, slow: ~0.55x).
        min_gain=0.2,
        progress=False,
    )
    by_name = {d.pattern: d for d in report.decisions}
    for half in ("planted_pair_a", "planted_pair_b"):
        alone = by_name[half].ratio("decode")
        assert alone is not None and alone.verdict != "gain", str(report)
        assert by_name[half].reason == "kept with planted_pair_a+planted_pair_b: faster together"
    # The slow pattern lost alone, so it is not in the joint set.
    assert by_name["planted_slow"].ratio("decode").verdict == "loss"
    assert report.kept == ["planted_pair_a", "planted_pair_b"], str(report)
    v = report.verification
    assert v is not None and v.kept and v.pattern == "planted_pair_a+planted_pair_b"
    assert v.ratio("decode").ci_low > 1.2
    assert fused_patterns(model) == {"planted_pair_a", "planted_pair_b"}
    assert PairA.live and PairB.live
    zmlx_rs.unpatch(model)
    assert fused_patterns(model) == set() and not (PairA.live or PairB.live)


def test_no_joint_set_when_a_pattern_wins_alone(planted):
    report = smart_patch(
        dawdling_llama(),
        patterns=["planted_fast", "planted_pair_a"],
        workloads=("decode",),
        budget_s=10,
        min_gain=0.2,
        progress=False,
    )
    assert report.kept == ["planted_fast"], str(report)
    assert report.verification is not None and report.verification.pattern == "planted_fast"
    # The pass-through half is tried with it, head to head, and gains nothing there.
    e = report.extension
    assert e is not None and not e.kept and e.pattern == "planted_fast+planted_pair_a"


def test_patterns_that_pay_only_with_the_kept_set_are_added_to_it(planted):
    model = dawdling_llama()
    report = smart_patch(
        model,
        patterns=["planted_slow", "planted_half_fast", "planted_pair_a", "planted_pair_b"],
        workloads=("decode",),
        budget_s=30,
        min_gain=0.2,
        progress=False,
    )
    by_name = {d.pattern: d for d in report.decisions}
    assert by_name["planted_half_fast"].ratio("decode").verdict == "gain", str(report)
    assert by_name["planted_slow"].ratio("decode").verdict == "loss"
    v = report.verification
    assert v is not None and v.kept and v.pattern == "planted_half_fast", str(report)
    e = report.extension
    label = "planted_half_fast+planted_pair_a+planted_pair_b"
    assert e is not None and e.kept and e.pattern == label, str(report)
    assert e.reason.endswith(", against planted_half_fast")
    assert e.ratio("decode").ci_low > 1.2
    for half in ("planted_pair_a", "planted_pair_b"):
        assert by_name[half].ratio("decode").verdict != "gain"
        assert by_name[half].reason == f"kept with {label}: faster than without"
    assert report.kept == ["planted_half_fast", "planted_pair_a", "planted_pair_b"]
    assert fused_patterns(model) == {"planted_half_fast", "planted_pair_a", "planted_pair_b"}
    assert label in str(report) and label in report._repr_html_()
    assert SmartPatchReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    zmlx_rs.unpatch(model)
    assert not (PairA.live or PairB.live)


def test_decode_graphs_are_timed_against_none_and_kept_when_faster(planted):
    kwargs = {
        "patterns": ["planted_graph"],
        "workloads": ("decode",),
        "budget_s": 20,
        "min_gain": 0.2,
        "progress": False,
    }
    model = dawdling_llama()
    report = smart_patch(model, **kwargs)
    assert report.kept == ["planted_graph"], str(report)
    g = report.graphs
    assert g is not None and g.kept and g.pattern == "decode graphs", str(report)
    assert g.reason.endswith(", against planted_graph without graphs")
    assert g.ratio("decode").ci_low > 1.2
    assert report.decode_graphs and "decode graphs on" in str(report)
    fused = [m for _, m in model.named_modules() if isinstance(m, GraphFused)]
    assert len(fused) == 2 and all(m.decode_graphs for m in fused)
    again = SmartPatchReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    # The cached plan turns them on too.
    cached = smart_patch(dawdling_llama(seed=1), **kwargs)
    assert cached.cached and cached.decode_graphs


def test_second_call_applies_the_cached_plan(planted):
    kwargs = {"patterns": ["planted_fast"], "workloads": ("decode",), "progress": False}
    first = smart_patch(dawdling_llama(), budget_s=8, **kwargs)
    assert first.kept == ["planted_fast"] and not first.cached
    files = list((cache_dir() / "plans").glob("*.json"))
    assert len(files) == 1

    # Another instance of the same architecture: same fingerprint, no measuring.
    model = dawdling_llama(seed=1)
    start = time.perf_counter()
    second = smart_patch(model, budget_s=8, **kwargs)
    assert time.perf_counter() - start < 1.0
    assert second.cached and second.kept == ["planted_fast"]
    assert second.paths() == first.paths()
    assert fused_patterns(model) == {"planted_fast"}

    # A corrupt plan is ignored, measured again and rewritten.
    files[0].write_text("{not json")
    third = smart_patch(dawdling_llama(), budget_s=8, **kwargs)
    assert not third.cached
    json.loads(files[0].read_text())

    # remeasure bypasses a good plan; other options are another plan.
    assert not smart_patch(dawdling_llama(), budget_s=8, remeasure=True, **kwargs).cached
    other = {**kwargs, "workloads": ("decode", "prefill")}
    assert not smart_patch(dawdling_llama(), budget_s=8, **other).cached
    assert len(list((cache_dir() / "plans").glob("*.json"))) == 2


def test_report_round_trips_and_prints(planted):
    report = smart_patch(
        dawdling_llama(),
        patterns=["planted_wrong", "dense_mlp"],
        workloads=("decode",),
        budget_s=4,
        progress=False,
    )
    again = SmartPatchReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    text = str(report)
    assert "planted_wrong" in text and "numerics" in text and "smart_patch: kept" in text
    assert "<table>" in report._repr_html_()
    assert {d.pattern for d in report.decisions} == {"planted_wrong", "dense_mlp"}


def test_cache_dir_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("ZMLX_RS_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("ZMLX_RS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform != "darwin":
        assert cache_dir() == tmp_path / "xdg" / "zmlx_rs"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workloads": ("train",)}, "'workloads' must be a non-empty subset"),
        ({"workloads": ()}, "'workloads' must be a non-empty subset"),
        ({"budget_s": 0}, "'budget_s' must be a number > 0"),
        ({"min_gain": -0.1}, "'min_gain' must be in [0, 1)"),
        ({"patterns": "dense_mlp"}, "'patterns' must be a list of names"),
        ({"patterns": ["no_such_pattern"]}, "unknown pattern"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(zmlx_rs.ZmlxError, match=message.replace("[", r"\[").replace(")", r"\)")):
        smart_patch(build("llama"), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(zmlx_rs.ZmlxError, match=r"'model' must be an mlx\.nn\.Module"):
        smart_patch(object())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- statistics


def test_stats_median_and_interval():
    assert _native.median([3.0, 1.0, 2.0, 10.0]) == 2.5
    lo, hi = _native.bootstrap_median_ci([1.0, 1.1, 1.2, 1.3, 1.4], seed=3)
    assert 1.0 <= lo <= 1.2 <= hi <= 1.4
    assert _native.bootstrap_median_ci([1.0, 1.1, 1.2, 1.3, 1.4], seed=3) == (lo, hi)


def test_stats_verdicts_and_decision():
    base = [100.0, 120.0, 90.0, 110.0, 95.0, 105.0]
    faster = _native.compare_rounds([b * 1.2 for b in base], base, min_gain=0.02)
    slower = _native.compare_rounds([b * 0.7 for b in base], base, min_gain=0.02)
    level = _native.compare_rounds([b * 1.005 for b in base], base, min_gain=0.02)
    assert (faster.verdict, slower.verdict, level.verdict) == ("gain", "loss", "no_gain")
    assert faster.rounds == 6 and abs(faster.median_ratio - 1.2) < 1e-9
    assert faster.threshold == pytest.approx(1.02)
    assert _native.keep([faster, level]) and _native.settled([faster, level])
    assert not _native.keep([faster, slower])
    few = _native.compare_rounds([2.0, 2.0], [1.0, 1.0], min_gain=0.02)
    assert few.verdict == "unsure" and not _native.settled([few])
    assert _native.MIN_ROUNDS == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _native.median([]), "'values' must be at least one value"),
        (lambda: _native.compare_rounds([1.0], [1.0, 2.0], min_gain=0.0), "'candidate'"),
        (lambda: _native.compare_rounds([1.0], [0.0], min_gain=0.0), "throughputs > 0"),
        (lambda: _native.compare_rounds([1.0], [1.0], min_gain=-1.0), "'min_gain'"),
        (lambda: _native.bootstrap_median_ci([1.0], confidence=2.0), "'confidence'"),
    ],
)
def test_stats_errors_are_zmlx_errors(call, message):
    with pytest.raises(zmlx_rs.ZmlxError, match=message):
        call()


# ----------------------------------------------------------------------------- measuring


def test_graph_nodes_of_a_decode_step():
    model = build("llama")
    prompt = measure.prompt_tokens(model, None, 8)
    counts = measure.decode_graph_nodes(model, prompt)
    assert counts["nodes"] > counts["views"] > 0
    # The planted wrong pattern adds, per MLP, a multiply and the broadcast of its constant.
    for layer in model.model.layers:
        layer.mlp = WrongFused(layer.mlp)
    after = measure.decode_graph_nodes(model, prompt)
    assert after == {"nodes": counts["nodes"] + 4, "views": counts["views"] + 2}


def test_numerics_compare_teacher_forced_traces():
    model = build("llama")
    prompt = measure.prompt_tokens(model, None, 16)
    ref = measure.logit_trace(model, prompt, 4)
    same = measure.logit_trace(model, prompt, 4, feed=ref[1][:-1])
    good = measure.compare_traces(ref, same, mx.float32)
    assert good.ok and good.max_abs_dlogit == 0.0 and good.steps == 4
    for layer in model.model.layers:
        layer.mlp = WrongFused(layer.mlp)
    bad = measure.compare_traces(
        ref, measure.logit_trace(model, prompt, 4, feed=ref[1][:-1]), mx.float32
    )
    assert not bad.ok and ("differs" in bad.describe() or "over" in bad.describe())


def test_near_tie_flips_pass_and_real_mismatches_fail():
    # The reference's top two at step 0 differ by 0.001 at 5.0: a tie in bfloat16 (2 ulps
    # are 0.0625 there), not in float32.
    ref = ([mx.array([[0.0, 5.0, 4.999]]), mx.array([1.0, 0.0, 3.0])], [1, 2])
    flipped = ([mx.array([[0.0, 4.9995, 5.0]]), mx.array([1.0, 0.0, 3.0])], [2, 2])
    num = measure.compare_traces(ref, flipped, mx.bfloat16)
    assert num.ok and not num.identical and num.tie_flips == 1
    num = measure.compare_traces(ref, flipped, mx.float32)
    assert not num.ok and num.first_token_mismatch == 0 and "not a near tie" in num.describe()


def test_prompts_from_a_tokenizer_or_ids():
    model = build("llama")
    ids = measure.prompt_tokens(model, None, 20)
    assert ids.shape == (20,) and int(ids.max()) < 96

    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) % 96 for c in text[:10]]

    assert measure.prompt_tokens(model, Chars(), 25).tolist()[:10] == Chars().encode(measure._TEXT)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.cuda
def test_gpu_planted_slow_pattern_leaves_the_model_no_slower(tmp_path, monkeypatch):
    """Done-when check: smart_patch over every pattern plus a planted slow one, on a
    Qwen3-30B-A3B-shaped 4-bit model, leaves decode no slower than unpatched; the second
    call is a cache hit."""
    from zmlx_rs import synthetic
    from zmlx_rs.patch import patch, unpatch

    monkeypatch.setenv("ZMLX_RS_CACHE_DIR", str(tmp_path / "cache"))
    model = synthetic.build("qwen3-30b-a3b", layers=12)
    saved = list(registry.ALL)
    registry.register(_PlantedPattern(SlowFused, type(model.layers[0].mlp)))
    try:
        names = registry.names()
        report = smart_patch(model, patterns=names, budget_s=150)
        print(report)
        assert "planted_slow" in names and "planted_slow" not in report.kept
        assert "planted_slow" not in fused_patterns(model)

        plan = report.to_dict() if report.patched else None
        prompt = measure.prompt_tokens(model, None, 32)
        runs: dict[str, list[float]] = {"unpatched": [], "patched": []}
        for r in range(8):
            for config in ("unpatched", "patched") if r % 2 == 0 else ("patched", "unpatched"):
                unpatch(model)
                if config == "patched" and plan is not None:
                    patch(model, plan=plan)
                runs[config].append(measure.decode_tokens_per_s(model, prompt, 48))
        c = _native.compare_rounds(runs["patched"], runs["unpatched"], min_gain=0.02)
        print(c)
        assert c.verdict != "loss"

        unpatch(model)
        start = time.perf_counter()
        again = smart_patch(model, patterns=names, budget_s=150)
        assert again.cached and time.perf_counter() - start < 1.0
        assert again.paths() == report.paths()
    finally:
        registry.ALL[:] = saved
