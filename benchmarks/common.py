"""Timing helpers for the benchmarks: many calls in one graph, interleaved A/B rounds."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    if mx.cuda.is_available():
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "cuda"
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    return str(info.get("device_name", platform.processor() or "cpu"))


def time_calls(make: Callable[[int], object], n: int) -> tuple[float, float]:
    """Builds `n` calls into one lazy graph, then evaluates it once.
    Returns (build, eval) seconds per call. `make(i)` builds call i."""
    t0 = time.perf_counter()
    outs = [make(i) for i in range(n)]
    t1 = time.perf_counter()
    mx.eval(outs)
    t2 = time.perf_counter()
    return (t1 - t0) / n, (t2 - t1) / n


def interleaved(
    variants: dict[str, Callable[[int], object]], n: int, rounds: int, warmup: int = 2
) -> dict[str, list[tuple[float, float]]]:
    """Runs every variant once per round, rotating the order each round (ABC, BCA, ...), so
    drifts of the noisy GPU hit all variants alike. Warm-up rounds (JIT) are dropped."""
    names = list(variants)
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t = time_calls(variants[name], n)
            if r >= warmup:
                out[name].append(t)
    return out


def copy_bandwidth(nbytes: int, rounds: int) -> float:
    """Bytes read + written per second by `a * 1` on a bf16 array of `nbytes` (median)."""
    a = mx.random.normal((nbytes // 2,)).astype(mx.bfloat16)
    mx.eval(a)
    mx.eval(a * 1)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        mx.eval(a * 1)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def ratio_stats(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Per-round ratios num/den: median, min and max (the spread)."""
    rs = sorted(a / b for a, b in zip(num, den, strict=True))
    return {"median": statistics.median(rs), "min": rs[0], "max": rs[-1]}


def write_json(name: str, payload: dict, folder: Path | None = None) -> Path:
    """Writes `payload` as `name` under `folder` (default: benchmarks/results/)."""
    folder = RESULTS if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(payload, indent=1))
    return path


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
