"""Timing helpers for the benchmarks: many calls in one graph, interleaved A/B rounds."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx
from zmlx_rs import _backend, synthetic
from zmlx_rs.bench import pattern_names

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


def environment() -> dict[str, str]:
    """Where a result was measured: the first keys of every benchmark's JSON."""
    return {"device": device_name(), "backend": _backend.name(), "mlx": mx.__version__}


def result_name(prefix: str) -> str:
    """`prefix-<date>-<time>.json`: a result file that does not overwrite earlier runs."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def model_options(p: argparse.ArgumentParser, models: str, *, scaled: bool = True) -> None:
    """The options of the benchmarks that build random-weight models: --models, --layers,
    --patterns, --out and (where CPU runs make sense) --scaled."""
    p.add_argument(
        "--models", default=models, help=f"comma-separated, from {list(synthetic.SHAPES)}"
    )
    p.add_argument("--layers", type=int, default=None, help="layer count override")
    p.add_argument(
        "--patterns", default=None, help="comma-separated, or 'all' (default: patch's set)"
    )
    if scaled:
        p.add_argument("--scaled", action="store_true", help="scaled-down fp32 shapes (CPU)")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON result")


def parse_model_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """`p.parse_args()` plus `names` (the --models list), `chosen` (the checked --patterns)
    and `scaled` forced on where there is no CUDA."""
    args = p.parse_args()
    args.names = [n.strip() for n in args.models.split(",") if n.strip()]
    args.chosen = pattern_names(args.patterns)
    if "scaled" in args:
        args.scaled = args.scaled or not _backend.HAS_CUDA
    return args


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


def _copy_variants(
    nbytes: int, sources: int = 1
) -> tuple[int, dict[str, Callable[[int], mx.array]]]:
    """Ways to copy an fp32 array of `nbytes` (rounded down to 16): MLX's streaming unary
    kernel (`-x`) and, on CUDA, a 16-byte vectorised copy kernel; with the bytes one copy
    reads and writes. Call i copies source i % `sources` (distinct arrays, so that copies of a
    size that fits in L2 read DRAM)."""
    n = nbytes // 16 * 4
    xs = [mx.random.normal((n,)) for _ in range(sources)]
    mx.eval(xs)
    variants: dict[str, Callable[[int], mx.array]] = {
        "negative": lambda i: mx.negative(xs[i % sources])
    }
    if mx.cuda.is_available():
        kernel = mx.fast.cuda_kernel(
            name="bench_copy",
            input_names=["src"],
            output_names=["dst"],
            source="""
              const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
              if (i < n4) {
                reinterpret_cast<float4*>(dst)[i] = reinterpret_cast<const float4*>(src)[i];
              }
            """,
            header=f"constexpr long long n4 = {n // 4};",
        )
        variants["copy kernel"] = lambda i: kernel(
            inputs=[xs[i % sources]],
            grid=(n // 4, 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(n,)],
            output_dtypes=[mx.float32],
        )[0]
    return 2 * xs[0].nbytes, variants


def copy_bandwidth(nbytes: int, rounds: int) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second, over `nbytes`: the
    better median of MLX's streaming unary kernel (`-x`) and, on CUDA, a 16-byte vectorised
    copy kernel (MLX's binary `x * 1` reaches well under either on an H100). Wall time of one
    call and its sync."""
    moved, variants = _copy_variants(nbytes)
    best = 0.0
    for make in variants.values():
        mx.eval(make(0))
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            mx.eval(make(0))
            times.append(time.perf_counter() - t0)
        best = max(best, moved / statistics.median(times))
    return best


def kernel_seconds(call: Callable[[int], object], n: int) -> float | None:
    """GPU time per call, from the CUDA profiler's kernel records (CUPTI, through
    torch.profiler): the kernels of calls 0..n-1, each call evaluated on its own so that no
    two kernels overlap (in one graph MLX runs independent calls concurrently), summed and
    divided by n, after a warm-up on call n - 1 (call 0 then reads what the warm-up did not,
    when calls read different data). Launch gaps and host cost are not in it, as in a
    profiler's kernel column. None without CUDA or without torch installed."""
    if not mx.cuda.is_available():
        return None
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    mx.eval(call(n - 1))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            mx.eval(call(i))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    kernels = [e["dur"] for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    return sum(kernels) * 1e-6 / n if kernels else None


def copy_kernel_bandwidth(nbytes: int, n: int = 8) -> float | None:
    """copy_bandwidth's 16-byte copy kernel over `nbytes`, timed by kernel_seconds over n
    calls that take turns over as many distinct sources as fit in 512 MiB (at most n), so
    that a size that fits in L2 is read from DRAM, as a kernel's weights are: the reference for
    kernel_seconds-based bandwidths. None where kernel_seconds is."""
    moved, variants = _copy_variants(nbytes, max(1, min(n, (512 << 20) // max(nbytes, 1))))
    if "copy kernel" not in variants:
        return None
    t = kernel_seconds(variants["copy kernel"], n)
    return None if t is None else moved / t


def copy_summary(copy_gbs: float, copy_kernel_gbs: float | None) -> str:
    """The copy references of a run in words (GB/s, read + write): the wall-timed copy and,
    where the profiler ran, the copy kernel's kernel time."""
    text = f"copy {copy_gbs:.0f} GB/s (wall)"
    if copy_kernel_gbs is not None:
        text += f", copy kernel {copy_kernel_gbs:.0f} GB/s (profiler)"
    return text


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
