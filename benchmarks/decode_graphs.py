"""Decode graphs on vs off: numerics and decode speed in one process.

    python benchmarks/decode_graphs.py --models qwen3-30b-a3b,mistral-7b --rounds 8

For each model: patch with the default patterns (or --patterns), then compare the logits of a
prompt and `--check-steps` greedy decode steps with decode graphs off and on (teacher-forced:
the graphs replay the same primitives, so the logits should be bit for bit the same), and
time decode tokens/s through mlx-lm's `generate_step` for unpatched / patched / patched with
graphs in interleaved rounds (ABC | CBA | ...). Reports median ratios with bootstrap 95%
intervals (`zmlx_rs._native.compare_rounds`). Writes
benchmarks/results/decode_graphs-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
from typing import Any

import mlx.core as mx
from common import environment, model_options, parse_model_args, result_name, table, write_json
from zmlx_rs import _native, measure, patch, synthetic, unpatch
from zmlx_rs import patterns as registry
from zmlx_rs.patterns._base import graphs_built

PROMPT = 32
CONFIGS = ("unpatched", "patched", "graphs")


def _use(model: Any, config: str, chosen: list[str] | None) -> dict[str, int]:
    unpatch(model)
    registry.use_decode_graphs(config == "graphs")
    return {} if config == "unpatched" else patch(model, patterns=chosen).counts()


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    shape, dtype = synthetic.sized(name, args.scaled)
    model = synthetic.build(shape, layers=args.layers, dtype=dtype)
    prompt = measure.prompt_tokens(model, None, PROMPT, seed=1)
    counts = _use(model, "patched", args.chosen)
    off = measure.logit_trace(model, prompt, args.check_steps)
    _use(model, "graphs", args.chosen)
    on = measure.logit_trace(model, prompt, args.check_steps, feed=off[1][:-1])
    bitwise = all(mx.array_equal(a, b).item() for a, b in zip(off[0], on[0], strict=True))
    numerics = measure.compare_traces(off, on, dtype)
    graphs = graphs_built(model)
    for config in CONFIGS:  # warm-up: JIT, traces
        _use(model, config, args.chosen)
        measure.decode_tokens_per_s(model, prompt, 8)
    tps: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        for config in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
            _use(model, config, args.chosen)
            tps[config].append(measure.decode_tokens_per_s(model, prompt, args.tokens))
    unpatch(model)
    registry.use_decode_graphs(False)
    del model
    mx.clear_cache()
    ratios = {}
    for a, b in (("patched", "unpatched"), ("graphs", "unpatched"), ("graphs", "patched")):
        c = _native.compare_rounds(tps[a], tps[b], min_gain=0.0)
        ratios[f"{a}/{b}"] = {"median": c.median_ratio, "ci": [c.ci_low, c.ci_high]}
    return {
        "model": name,
        "layers": args.layers,
        "dtype": str(dtype).removeprefix("mlx.core."),
        "patched": counts,
        "modules_with_graphs": graphs,
        "graphs_bitwise": bitwise,
        "graphs_numerics": numerics.describe(),
        "graphs_tokens_identical": numerics.identical,
        "tokens_per_s": tps,
        "ratios": ratios,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_options(p, "qwen3-30b-a3b,mistral-7b")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64, help="decode tokens per measurement")
    p.add_argument("--check-steps", type=int, default=16, help="decode steps compared")
    args = parse_model_args(p)
    rows = [run_model(n, args) for n in args.names]
    payload = {
        **environment(),
        "rounds": args.rounds,
        "tokens": args.tokens,
        "models": rows,
    }
    path = write_json(result_name("decode_graphs"), payload, args.out)
    lines = []
    for row in rows:
        bitwise = "yes" if row["graphs_bitwise"] else "NO"
        cells = [row["model"], str(row["modules_with_graphs"]), bitwise]
        for key in ("patched/unpatched", "graphs/unpatched", "graphs/patched"):
            r = row["ratios"][key]
            cells.append(f"{r['median']:.3f}x [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
        lines.append(cells)
    header = ["model", "graphs", "bitwise"]
    header += ["patched/unpatched", "graphs/unpatched", "graphs/patched"]
    rounds = f"{args.rounds} rounds x {args.tokens} tokens"
    print(f"{payload['device']} ({payload['backend']}), {rounds}")
    print(table(lines, header))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
