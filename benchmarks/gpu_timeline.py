"""Per-kernel GPU time of decode steps, unpatched vs patched, from the CUDA profiler.

    python benchmarks/gpu_timeline.py --models mistral-7b [--patterns all] [--steps 8]

MLX has no kernel timeline of its own; PyTorch's profiler (CUPTI underneath) records every
kernel the process launches, MLX's included, so this runs where `torch` with CUDA is
installed (the lent GPU machines have it; it is not a dependency of zmlx_rs). Each step is
evaluated on its own with a pause after it, so a step's kernels form one cluster: per step it
reports the span (first kernel start to last kernel end), the kernels' summed time (above the
span where independent branches overlap) and the kernels by total time. The span is what the
GPU needs per token; whether the GPU or the CPU bounds decode is for `step_profile.py`.
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


def _steps(model: Any, prompt: mx.array, n: int, gap: float) -> None:
    cache = make_prompt_cache(model)
    token = mx.argmax(model(prompt[None], cache=cache)[:, -1, :], axis=-1, keepdims=True)
    mx.eval(token)
    for _ in range(n):
        token = mx.argmax(model(token, cache=cache)[:, -1, :], axis=-1, keepdims=True)
        mx.eval(token)
        time.sleep(gap)


def _profile(model: Any, prompt: mx.array, n: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    _steps(model, prompt, 4, 0.0)  # JIT and allocator warm-up
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _steps(model, prompt, n, GAP_S)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    gpu = sorted(
        (e for e in events if e.get("ph") == "X" and e.get("cat") in _GPU_EVENTS),
        key=lambda e: e["ts"],
    )
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_options(p, "mistral-7b", scaled=False)
    p.add_argument("--steps", type=int, default=8, help="decode steps profiled per config")
    args = parse_model_args(p)
    try:
        import torch
    except ImportError as e:
        raise SystemExit("gpu_timeline.py needs PyTorch with CUDA (its profiler)") from e
    if not torch.cuda.is_available():
        raise SystemExit("gpu_timeline.py needs a CUDA GPU")
    torch.cuda.init()
    rows = []
    for name in args.names:
        model = synthetic.build(synthetic.SHAPES[name], layers=args.layers, dtype=mx.bfloat16)
        prompt = measure.prompt_tokens(model, None, PROMPT, seed=1)
        row: dict[str, Any] = {"model": name}
        for config in ("unpatched", "patched"):
            unpatch(model)
            if config == "patched":
                row["patched"] = patch(model, patterns=args.chosen).counts()
            row[config] = _profile(model, prompt, args.steps)
        unpatch(model)
        rows.append(row)
        del model
        mx.clear_cache()
    payload = {**environment(), "steps": args.steps, "rows": rows}
    path = write_json(result_name("gpu_timeline"), payload, args.out)
    lines = []
    for row in rows:
        for config in ("unpatched", "patched"):
            r = row[config]
            top = r["top"][0]
            lines.append(
                [
                    row["model"],
                    config,
                    f"{r['kernels_per_step']:.0f}",
                    f"{r['span_us']:.0f}",
                    f"{r['busy_us']:.0f}",
                    f"{top['us']:.0f} us in {top['calls']:.0f} x {top['kernel'][:40]}",
                ]
            )
    header = ["model", "config", "kernels", "span us", "busy us", "largest"]
    print(f"{payload['device']}, {args.steps} decode steps per config")
    print(table(lines, header))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
