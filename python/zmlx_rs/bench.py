"""End-to-end benchmark: decode and prefill tokens/s of mlx-lm models, patched vs unpatched.

Random-weight models of real shapes (`zmlx_rs.synthetic`): full size in bf16 on a GPU,
scaled down in fp32 on CPU. Per model: graph nodes of one decode step before and after
patching, numerics (greedy tokens and logits over `--check-steps` decode steps, patched
against unpatched on the same inputs), then interleaved rounds (A B | B A | ...) in one
process after a warm-up, A the unpatched model and B its patched twin (the same arrays),
summarised by the Rust statistics (median ratio, bootstrap interval).
`python -m zmlx_rs bench` and `benchmarks/e2e.py` both run `main`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm

from zmlx_rs import _backend, _native, measure, synthetic
from zmlx_rs import patterns as registry
from zmlx_rs.patch import patch
from zmlx_rs.smart import smart_patch

__all__ = ["add_arguments", "main", "markdown_table", "pattern_names", "run_model"]

_DECODE_PROMPT = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default="qwen3-30b-a3b,mixtral-8x7b,mistral-7b,qwen3-0.6b",
        help=f"comma-separated, from {', '.join(synthetic.SHAPES)}",
    )
    parser.add_argument("--layers", type=int, default=None, help="layer count override")
    parser.add_argument("--rounds", type=int, default=8, help="A/B rounds per model (max)")
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens per measurement")
    parser.add_argument("--prefill", type=int, default=512, help="prefill prompt tokens")
    parser.add_argument("--check-steps", type=int, default=64, help="greedy steps compared")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all models")
    parser.add_argument(
        "--smart", action="store_true", help="patch with smart_patch instead of patch"
    )
    parser.add_argument(
        "--patterns",
        default=None,
        help="comma-separated pattern names for patch (default: patch's default set); "
        "'all' for every registered pattern, the opt-in ones included",
    )
    parser.add_argument(
        "--decode-graphs",
        action="store_true",
        help="patched models replay their decode forwards as compiled calls "
        "(zmlx_rs.patterns.use_decode_graphs)",
    )
    parser.add_argument(
        "--scaled", action="store_true", default=None, help="scaled-down shapes (CPU default)"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON result")


def run_model(
    name: str,
    *,
    layers: int | None,
    rounds: int,
    tokens: int,
    prefill: int,
    check_steps: int,
    deadline: float,
    smart: bool,
    scaled: bool,
    patterns: list[str] | None = None,
) -> dict[str, Any]:
    """One model's row: build, count nodes, check numerics, time interleaved rounds. The
    patched model is a twin of the unpatched one (the same arrays, its own modules), patched
    once: rounds switch models, not patches, so no round pays for patching or is timed on
    freshly stacked arrays, and rounds stay short against drifting host speed."""
    shape, dtype = synthetic.sized(name, scaled)
    t = time.perf_counter()
    model = synthetic.build(shape, layers=layers, dtype=dtype)
    patched = synthetic.twin(model, shape)
    build_s = time.perf_counter() - t
    decode_prompt = measure.prompt_tokens(model, None, _DECODE_PROMPT, seed=1)
    prefill_prompt = measure.prompt_tokens(model, None, prefill, seed=2)

    nodes_before = measure.decode_graph_nodes(model, decode_prompt)
    reference = measure.logit_trace(model, decode_prompt, check_steps)
    measure.decode_tokens_per_s(model, decode_prompt, 4)  # JIT warm-up
    measure.prefill_tokens_per_s(model, prefill_prompt)

    t = time.perf_counter()
    if smart:
        budget = max(10.0, (deadline - t) / 3)
        report: Any = smart_patch(patched, budget_s=budget, progress=False)
    else:
        report = patch(patched, patterns=patterns)
    patch_s = time.perf_counter() - t
    nodes_after = measure.decode_graph_nodes(patched, decode_prompt)
    trace = measure.logit_trace(patched, decode_prompt, check_steps, feed=reference[1][:-1])
    numerics = measure.compare_traces(reference, trace, dtype)
    measure.decode_tokens_per_s(patched, decode_prompt, 4)
    measure.prefill_tokens_per_s(patched, prefill_prompt)

    models = {"unpatched": model, "patched": patched}
    runs: dict[str, dict[str, list[float]]] = {c: {"decode": [], "prefill": []} for c in models}
    for r in range(rounds):
        if r >= 2 and time.perf_counter() > deadline:
            break
        order = ["unpatched", "patched"] if r % 2 == 0 else ["patched", "unpatched"]
        for config in order:
            m = models[config]
            runs[config]["decode"].append(measure.decode_tokens_per_s(m, decode_prompt, tokens))
            runs[config]["prefill"].append(measure.prefill_tokens_per_s(m, prefill_prompt))

    row: dict[str, Any] = {
        "model": name,
        "notes": shape.notes,
        "layers": model.args.num_hidden_layers,
        "dtype": str(dtype).removeprefix("mlx.core."),
        "bits": shape.bits,
        "build_s": round(build_s, 2),
        "patch_s": round(patch_s, 3),
        "patched": report.counts(),
        "nodes_per_decode_step": {"unpatched": nodes_before, "patched": nodes_after},
        "numerics": {
            "ok": numerics.ok,
            "greedy_identical": numerics.identical,
            "greedy_steps": numerics.steps,
            "first_token_mismatch": numerics.first_token_mismatch,
            "near_tie_flips": numerics.tie_flips,
            "max_abs_dlogit": numerics.max_abs_dlogit,
            "tolerance": numerics.tolerance,
        },
        "rounds": len(runs["patched"]["decode"]),
    }
    if report.decode_graphs:
        row["decode_graphs"] = True
    if smart:
        row["smart_kept"] = report.kept
        row["smart"] = report.to_dict()["smart"]  # every decision with its measurements
    for workload in ("decode", "prefill"):
        a, b = runs["unpatched"][workload], runs["patched"][workload]
        entry: dict[str, Any] = {
            "unpatched_tps": _native.median(a),
            "patched_tps": _native.median(b),
            "unpatched_rounds": a,
            "patched_rounds": b,
        }
        c = _native.compare_rounds(b, a, min_gain=0.0)
        entry.update(
            median_ratio=c.median_ratio, ci_low=c.ci_low, ci_high=c.ci_high, verdict=c.verdict
        )
        row[workload] = entry
    del model, patched, models
    mx.clear_cache()
    return row


def markdown_table(result: dict[str, Any]) -> str:
    head = (
        "| model | layers | weights | patched | decode tok/s (unpatched → patched)"
        " | decode ratio [95% CI] | prefill tok/s | prefill ratio [95% CI]"
        " | nodes/decode step | greedy identical |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in result["rows"]:
        d, p = r["decode"], r["prefill"]
        nodes = r["nodes_per_decode_step"]
        patched = ", ".join(f"{n} {k}" for k, n in r["patched"].items()) or "nothing"
        if r.get("decode_graphs"):
            patched += ", decode graphs"
        num = r["numerics"]
        weights = f"{r['bits']}-bit, {r['dtype']}" if r["bits"] else r["dtype"]
        if num["greedy_identical"]:
            same = f"yes ({num['greedy_steps']} steps)"
        elif num["first_token_mismatch"] is None:
            same = f"no: {num['near_tie_flips']} near-tie flips"
        else:
            same = f"no (token {num['first_token_mismatch']})"
        if num["max_abs_dlogit"] > num["tolerance"]:
            same += f", |Δlogit| {num['max_abs_dlogit']:.3g} over tolerance"
        lines.append(
            f"| {r['notes']} | {r['layers']} | {weights} | {patched} "
            f"| {d['unpatched_tps']:.1f} → {d['patched_tps']:.1f} "
            f"| {d['median_ratio']:.3f}x [{d['ci_low']:.3f}, {d['ci_high']:.3f}] "
            f"| {p['unpatched_tps']:.0f} → {p['patched_tps']:.0f} "
            f"| {p['median_ratio']:.3f}x [{p['ci_low']:.3f}, {p['ci_high']:.3f}] "
            f"| {nodes['unpatched']['nodes']} → {nodes['patched']['nodes']} | {same} |"
        )
    env = result["environment"]
    lines.append(
        f"\n{env['device']} ({env['backend']}), mlx {env['mlx']}, mlx-lm {env['mlx_lm']}, "
        f"zmlx_rs {env['zmlx_rs']}; {result['rounds_asked']} interleaved rounds asked, "
        f"{result['tokens']} decode tokens and {result['prefill']} prefill tokens each."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, default_out: Path | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="zmlx_rs bench", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, default_out=default_out)


def pattern_names(arg: str | None) -> list[str] | None:
    """A `--patterns` value: None (patch's default set), "all" (every registered pattern) or
    comma-separated names, each checked."""
    if arg == "all":
        return registry.names()
    if not arg:
        return None
    chosen = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in registry.names()]
    if unknown:
        raise SystemExit(f"--patterns: unknown {unknown}; expected {registry.names()}")
    return chosen


def run(args: argparse.Namespace, *, default_out: Path | None = None) -> dict:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in synthetic.SHAPES]
    if unknown:
        raise SystemExit(
            f"--models: unknown {unknown}; expected names from {list(synthetic.SHAPES)}"
        )
    scaled = args.scaled if args.scaled is not None else not _backend.HAS_CUDA
    chosen = pattern_names(args.patterns)
    start = time.perf_counter()
    deadline = start + args.budget
    rows = []
    graphs_before = registry.decode_graphs_on()
    graphs = bool(args.decode_graphs) or graphs_before
    registry.use_decode_graphs(graphs)
    try:
        for i, name in enumerate(names):
            # Each model gets an equal share of what is left, so one slow model cannot starve
            # the others; the rounds stop early (after two) when the share is spent.
            share = (deadline - time.perf_counter()) / (len(names) - i)
            print(f"[e2e] {name}: building", flush=True)
            row = run_model(
                name,
                layers=args.layers,
                rounds=args.rounds,
                tokens=args.tokens,
                prefill=args.prefill,
                check_steps=args.check_steps,
                deadline=time.perf_counter() + share,
                smart=args.smart,
                scaled=scaled,
                patterns=chosen,
            )
            d = row["decode"]
            print(
                f"[e2e] {name}: decode {d['median_ratio']:.3f}x "
                f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}], nodes "
                f"{row['nodes_per_decode_step']['unpatched']['nodes']} -> "
                f"{row['nodes_per_decode_step']['patched']['nodes']}, "
                f"numerics {'ok' if row['numerics']['ok'] else 'FAILED'} ({row['rounds']} rounds)",
                flush=True,
            )
            rows.append(row)
    finally:
        registry.use_decode_graphs(graphs_before)
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    result = {
        "benchmark": "e2e",
        "mode": "smart_patch" if args.smart else "patch",
        "patterns": chosen,
        "decode_graphs": graphs,
        "scaled": scaled,
        "rounds_asked": args.rounds,
        "tokens": args.tokens,
        "prefill": args.prefill,
        "wall_s": round(time.perf_counter() - start, 1),
        "environment": {
            "backend": _backend.name(),
            "device": str(info.get("device_name", platform.processor() or "unknown")),
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
            "zmlx_rs": _native.__version__,
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    out = args.out or default_out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = out / f"e2e-{result['environment']['backend']}-{stamp}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"[e2e] wrote {path}")
    print()
    print(markdown_table(result))
    return result
