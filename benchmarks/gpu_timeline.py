"""Per-kernel GPU time of decode steps, unpatched vs patched, from the CUDA profiler.

    python benchmarks/gpu_timeline.py --models mistral-7b [--patterns all] [--steps 8]
    python benchmarks/gpu_timeline.py --models mistral-7b --pipelined --steps 64 [--runs 8]

MLX has no kernel timeline of its own; PyTorch's profiler (CUPTI underneath) records every
kernel the process launches, MLX's included, so this runs where `torch` with CUDA is
installed (the lent GPU machines have it; it is not a dependency of zmlx_rs). Each step is
evaluated on its own with a pause after it, so a step's kernels form one cluster: per step it
reports the span (first kernel start to last kernel end), the kernels' summed time (above the
span where independent branches overlap) and the kernels by total time. The span is what the
GPU needs per token; whether the GPU or the CPU bounds decode is for `step_profile.py`.

`--pipelined` profiles decode as it runs instead: mlx-lm's `generate_step`, step n+1 built
and encoded while step n runs, back to back. Over the second half of the tokens (steady
decode) it reports per token the wall time, the GPU's busy time (the union of its kernels'
intervals) and idle time (the two add up to the wall time), and the CUDA runtime and driver
calls the process made (graph building, instantiation and launch, synchronisation,
allocation) by total time: what lies between a step's GPU span measured alone and the token
time decode sees, and per token the CUDA graph calls (instantiations, updates, launches).
The profiler adds host cost of its own: compare configurations of one run.

`--runs N` profiles N runs per config, unpatched and patched alternating (each patched run
patches anew), one table line per run: decode speed that changes from
run to run (a host-bound patched step ran 125-160 or 200-285 tok/s a run on one H100) shows
next to what the host did in that run.
Writes benchmarks/results/gpu_timeline-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from common import environment, model_options, parse_model_args, result_name, table, write_json
from mlx_lm.models.cache import make_prompt_cache
from zmlx_rs import measure, patch, synthetic, unpatch

PROMPT = 16
GAP_S = 0.004  # pause after each step: kernels more than 2 ms apart belong to another step
_GPU_EVENTS = ("kernel", "gpu_memset", "gpu_memcpy")
_GRAPH_CALLS = ("GraphInstantiate", "GraphExecUpdate", "GraphLaunch")  # by name substring
_CONFIGS = ("unpatched", "patched")


def _steps(model: Any, prompt: mx.array, n: int, gap: float) -> None:
    cache = make_prompt_cache(model)
    token = mx.argmax(model(prompt[None], cache=cache)[:, -1, :], axis=-1, keepdims=True)
    mx.eval(token)
    for _ in range(n):
        token = mx.argmax(model(token, cache=cache)[:, -1, :], axis=-1, keepdims=True)
        mx.eval(token)
        time.sleep(gap)


def _trace(prof: Any) -> list[dict]:
    """The profiler's complete events ("X": start `ts` and `dur` in microseconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return [e for e in events if e.get("ph") == "X"]


def _gpu_events(events: list[dict]) -> list[dict]:
    return sorted((e for e in events if e.get("cat") in _GPU_EVENTS), key=lambda e: e["ts"])


def _profile(model: Any, prompt: mx.array, n: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    _steps(model, prompt, 4, 0.0)  # JIT and allocator warm-up
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _steps(model, prompt, n, GAP_S)
    gpu = _gpu_events(_trace(prof))
    clusters: list[list[dict]] = [[]]
    for e in gpu:
        last = clusters[-1][-1] if clusters[-1] else None
        if last is not None and e["ts"] - (last["ts"] + last["dur"]) > 2000:
            clusters.append([])
        clusters[-1].append(e)
    steps = clusters[-n:]  # the prompt's cluster comes first
    by_kernel: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for step in steps:
        for e in step:
            by_kernel[e["name"][:100]][0] += 1 / len(steps)
            by_kernel[e["name"][:100]][1] += e["dur"] / len(steps)
    return {
        "kernels_per_step": statistics.median(len(s) for s in steps),
        "span_us": statistics.median(s[-1]["ts"] + s[-1]["dur"] - s[0]["ts"] for s in steps),
        "busy_us": statistics.median(sum(e["dur"] for e in s) for s in steps),
        "top": sorted(
            ({"kernel": k, "calls": c, "us": t} for k, (c, t) in by_kernel.items()),
            key=lambda row: -row["us"],
        )[:15],
    }


def _busy_idle(gpu: list[dict], start: float, end: float) -> tuple[float, float, int]:
    """GPU events sorted by start: (busy, idle, events starting) over [start, end), busy the
    union of their intervals, idle the rest."""
    busy = 0.0
    covered = start  # time accounted for up to here
    for e in gpu:
        s, f = max(e["ts"], covered), min(e["ts"] + e["dur"], end)
        if f > s:
            busy += f - s
            covered = f
    return busy, (end - start) - busy, sum(1 for e in gpu if start <= e["ts"] < end)


def _profile_pipelined(model: Any, prompt: mx.array, n: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    measure.decode_tokens_per_s(model, prompt, 8)  # JIT and allocator warm-up
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        tps = measure.decode_tokens_per_s(model, prompt, n)
    events = _trace(prof)
    gpu = _gpu_events(events)
    tokens = max(1, n // 2)
    end = max(e["ts"] + e["dur"] for e in gpu)
    start = end - tokens * 1e6 / tps
    busy, idle, events_in = _busy_idle(gpu, start, end)
    calls: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and start <= e["ts"] < end:
            calls[e["name"]][0] += 1
            calls[e["name"]][1] += e["dur"]
    graph_calls = {
        kind: sum(c for name, (c, _) in calls.items() if kind in name) / tokens
        for kind in _GRAPH_CALLS
    }
    return {
        "token_us": 1e6 / tps,
        "tokens_in_window": tokens,
        "union_busy_us": busy / tokens,
        "idle_us": idle / tokens,
        "gpu_events_per_token": events_in / tokens,
        "graph_calls_per_token": graph_calls,
        "api": sorted(
            ({"call": k, "per_token": c / tokens, "us": t / tokens} for k, (c, t) in calls.items()),
            key=lambda row: -row["us"],
        )[:12],
    }


def _cells(model: str, r: dict[str, Any], pipelined: bool) -> list[str]:
    if pipelined:
        top = ", ".join(f"{a['call']} {a['per_token']:.0f}x {a['us']:.0f} us" for a in r["api"][:2])
        graph = r["graph_calls_per_token"]
        return [
            model,
            r["config"],
            f"{r['gpu_events_per_token']:.0f}",
            f"{r['token_us']:.0f}",
            f"{r['union_busy_us']:.0f}",
            f"{r['idle_us']:.0f}",
            " / ".join(f"{graph[k]:.2f}" for k in _GRAPH_CALLS),
            top,
        ]
    top = r["top"][0]
    return [
        model,
        r["config"],
        f"{r['kernels_per_step']:.0f}",
        f"{r['span_us']:.0f}",
        f"{r['busy_us']:.0f}",
        f"{top['us']:.0f} us in {top['calls']:.0f} x {top['kernel'][:40]}",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_options(p, "mistral-7b", scaled=False)
    p.add_argument("--steps", type=int, default=8, help="decode steps profiled per config")
    p.add_argument(
        "--pipelined",
        action="store_true",
        help="profile generate_step's back-to-back decode (per token: wall, GPU busy and "
        "idle, CUDA API calls) instead of steps evaluated alone",
    )
    p.add_argument(
        "--runs", type=int, default=1, help="profiled runs per config, the configs alternating"
    )
    args = parse_model_args(p)
    if args.runs < 1:
        p.error(f"--runs must be >= 1, got {args.runs}")
    try:
        import torch
    except ImportError as e:
        raise SystemExit("gpu_timeline.py needs PyTorch with CUDA (its profiler)") from e
    if not torch.cuda.is_available():
        raise SystemExit("gpu_timeline.py needs a CUDA GPU")
    torch.cuda.init()
    profile = _profile_pipelined if args.pipelined else _profile
    rows = []
    for name in args.names:
        model = synthetic.build(synthetic.SHAPES[name], layers=args.layers, dtype=mx.bfloat16)
        prompt = measure.prompt_tokens(model, None, PROMPT, seed=1)
        row: dict[str, Any] = {"model": name, "runs": []}
        for r in range(args.runs):
            for config in _CONFIGS if r % 2 == 0 else _CONFIGS[::-1]:
                unpatch(model)
                if config == "patched":
                    row["patterns"] = patch(model, patterns=args.chosen).counts()
                row["runs"].append({"config": config, **profile(model, prompt, args.steps)})
        unpatch(model)
        rows.append(row)
        del model
        mx.clear_cache()
    payload = {
        **environment(),
        "steps": args.steps,
        "pipelined": args.pipelined,
        "runs": args.runs,
        "rows": rows,
    }
    path = write_json(result_name("gpu_timeline"), payload, args.out)
    lines = [_cells(row["model"], run, args.pipelined) for row in rows for run in row["runs"]]
    if args.pipelined:
        header = [
            "model",
            "config",
            "events",
            "token us",
            "GPU busy us",
            "idle us",
            "graph instantiate / update / launch",
            "top calls",
        ]
        print(f"{payload['device']}, generate_step, {args.steps} tokens a run, per token")
    else:
        header = ["model", "config", "kernels", "span us", "busy us", "largest"]
        print(f"{payload['device']}, {args.steps} decode steps per config")
    print(table(lines, header))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
