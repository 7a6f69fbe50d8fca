"""Quantised MoE decode kernels: time per call and achieved bandwidth (bytes of the selected
experts' weights, scales and biases / time) at real decode shapes, against the unfused
mx.gather_qmm path and the device's copy bandwidth measured in the same run.

Each call runs on its own expert picks (_picks: weights from HBM, not L2). Two times per call:
wall, one graph of CALLS independent calls evaluated at once, median over rounds (what a caller
sees, host cost and MLX's running of independent calls side by side included); and kernel, the
CUDA profiler's kernel durations with each call evaluated alone (common.kernel_seconds; where
torch is installed). The kernel share of copy bandwidth holds the kernel time to the copy
kernel timed the same way over 1 GiB, and to the copy kernel over the call's own bytes
(common.copy_kernel_bandwidth: as many bytes as the call reads, read from HBM as the calls'
weights are, and written): the copy bandwidth at that size, where launch and DRAM latency weigh
as they do on the call. A read floor puts that in context: the kernel time of a plain gathered
read of exactly the bytes a call reads (the picked experts' weights, scales and biases, 16-byte
loads, nothing computed), the best of a few launch shapes: what any kernel moving those bytes
costs at this size. Writes benchmarks/results/moe_qmv.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import mlx.core as mx
from common import copy_bandwidth, copy_kernel_bandwidth, copy_summary, kernel_seconds
from zmlx_rs import _backend, kernels
from zmlx_rs import reference as ref

# name: (D, I, experts, k)
SHAPES = {
    "qwen3_30b_a3b": (2048, 768, 128, 8),
    "mixtral_8x7b": (4096, 14336, 8, 2),
    "glm45_air": (4096, 1408, 128, 8),
}
CALLS = 64


def _timed(make, rounds: int) -> float:
    """Median seconds per call of `make()` (returns CALLS outputs), after a warm-up."""
    mx.eval(make())
    times = []
    for _ in range(rounds):
        outs = make()
        t0 = time.perf_counter()
        mx.eval(outs)
        times.append((time.perf_counter() - t0) / CALLS)
    return statistics.median(times)


def _picks(n_experts: int, k: int) -> list[mx.array]:
    """The CALLS calls' expert picks, (1, k) each: consecutive chunks of k of one random order
    of the experts, repeated. A call's experts are distinct, and an expert comes back only
    after every other one has been read (n_experts / k calls later; at every shape here more
    bytes than the 50 MB L2 of an H100 holds), so that each call reads its weights from HBM,
    as a layer's experts are in decode, with the rest of the model read between two uses. With
    random picks per call (this benchmark before) a third of the combine's experts at
    Qwen3-30B-A3B had been picked in the last 7 calls (7.1 MB each), and the kernels read part
    of their weights from L2: 9.16 against 9.39 us (gate|up), 5.29 against 5.76 (combine) on an
    H100 in one process (results/moe_picks_l2-h100-20261207.json)."""
    order = mx.random.permutation(n_experts).astype(mx.uint32)
    seq = mx.concatenate([order] * -(-CALLS * k // n_experts))
    mx.eval(seq)
    return [seq[j * k : (j + 1) * k].reshape(1, k) for j in range(CALLS)]


def _experts(n, rows, cols, bits, gs, dtype):
    w = (mx.random.normal((n, rows, cols)) * cols**-0.5).astype(dtype)
    q, s, b = mx.quantize(w, group_size=gs, bits=bits)
    mx.eval(q, s, b)
    return q, s, b


_READ_SOURCE = """
  // Every 16-byte chunk of the picked experts' weights, scales and biases, read once: chunks
  // READ_CH at a time per thread, all loads issued before the first use.
  const uint32_t e = min(indices[blockIdx.y], static_cast<uint32_t>(READ_E - 1));
  uint32_t acc = 0;
  auto sweep = [&](const uint4* p, long long n) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i0 = blockIdx.x * blockDim.x + threadIdx.x; i0 < n; i0 += READ_CH * stride) {
      uint4 v[READ_CH];
#pragma unroll
      for (int c = 0; c < READ_CH; ++c) {
        const long long i = i0 + c * stride;
        v[c] = i < n ? p[i] : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int c = 0; c < READ_CH; ++c) {
        acc ^= v[c].x ^ v[c].y ^ v[c].z ^ v[c].w;
      }
    }
  };
  sweep(reinterpret_cast<const uint4*>(w) + e * W16, W16);
  sweep(reinterpret_cast<const uint4*>(scales) + e * S16, S16);
  sweep(reinterpret_cast<const uint4*>(biases) + e * S16, S16);
  if (acc == 0x9E3779B9u) {  // data-dependent, so the loads stay
    out[0] = acc;
  }
"""


def read_floor_seconds(experts, picks) -> float | None:
    """Kernel seconds per call (kernel_seconds) of the plain gathered read of the picked
    experts' weights, scales and biases (picks[i]: call i's experts), the best of a few launch
    shapes; None where kernel_seconds is."""
    w, s, b = experts
    w16, s16 = w[0].nbytes // 16, s[0].nbytes // 16
    flat = [p.reshape(-1) for p in picks]
    mx.eval(flat)
    sizes = f"constexpr long long W16 = {w16}, S16 = {s16}; constexpr int READ_E = {w.shape[0]};"
    best = None
    for blocks, ch in ((16, 8), (32, 8), (64, 4), (128, 2), (256, 4)):
        kernel = mx.fast.cuda_kernel(
            name=f"moe_read_floor_{w16}_{s16}_{w.shape[0]}_{ch}",  # a name per specialisation
            input_names=["w", "scales", "biases", "indices"],
            output_names=["out"],
            source=_READ_SOURCE,
            header=f"{sizes} constexpr int READ_CH = {ch};",
        )

        def call(i, kernel=kernel, blocks=blocks):
            return kernel(
                inputs=[w, s, b, flat[i]],
                grid=(blocks * 256, flat[i].size, 1),
                threadgroup=(256, 1, 1),
                output_shapes=[(1,)],
                output_dtypes=[mx.uint32],
            )[0]

        t = kernel_seconds(call, len(flat))
        if t is None:
            return None
        best = t if best is None else min(best, t)
    return best


def _variant(launch, tiles: dict, grid=None, threadgroup=None):
    """`launch` with other tiling template arguments `tiles` (and the grid they need). It runs
    through the kernel's `mx.fast.cuda_kernel`, which takes the variant's template: a
    precompiled cubin is built for the planned launch's template only."""
    v = copy.copy(launch)
    v.template = [(n, tiles.get(n, x)) for n, x in launch.template]
    if grid is not None:
        v.grid, v.threadgroup = grid, threadgroup
    v.precompiled = False
    v.call = None  # bound to the new tiling on first use
    return v


def _tilings(base, n_rows: int, rows_arg: str) -> list[tuple[dict, object]]:
    """(fields, launch) for the planned tiling and its neighbours, each as a variant (so that
    all run through the same JIT path). Tensor-core kernels: parts of each warp's rows and
    parts in flight (the same steps: outputs bit for bit the planned ones'); split-K kernels:
    warps per block and outputs per block."""
    planned = dict(base.template)
    if "PARTS" in planned:
        p0, a0 = planned["PARTS"], planned["AHEAD"]
        tiles = {
            (p, a) for p in (max(p0 // 2, 1), p0) for a in (max(a0 // 2, 1), a0, a0 + 1, 2 * a0)
        }
        return [
            (
                {"parts": p, "ahead": a, "planned": (p, a) == (p0, a0)},
                _variant(base, {"PARTS": p, "AHEAD": a}),
            )
            for p, a in sorted(tiles)
            if a <= p
        ]
    w0, r0 = planned["WARPS"], planned[rows_arg]
    # The combine splits each expert's reduction over WARPS / K warps: a multiple of K.
    step = planned["K"] if rows_arg == "RB" else 1
    tiles = {(w0, r0)}
    tiles |= {(w, r0) for w in (w0 // 2, w0 * 2) if w <= 32 and w >= step and w % step == 0}
    tiles |= {(w0, r) for r in (max(r0 // 2, 1), r0 * 2)}
    out = []
    for warps, r in sorted(tiles):
        grid = (-(-n_rows // r) * warps * 32, base.grid[1], 1)
        v = _variant(base, {"WARPS": warps, rows_arg: r}, grid, (warps * 32, 1, 1))
        out.append(({"warps": warps, "rows_per_block": r, "planned": (warps, r) == (w0, r0)}, v))
    return out


def _tiling_seconds(kernel, inputs, launch) -> float:
    """Kernel seconds per call of `launch` over the calls' inputs; wall where the profiler
    does not run."""
    t = kernel_seconds(lambda i: kernel(inputs[i], launch)[0], len(inputs))
    return t if t is not None else _timed(lambda: [kernel(i, launch)[0] for i in inputs], 1)


def sweep_tiles(up, down, xs, picks, scores, acts, d, inter, gs, bits, rounds):
    """Time per call of each tiling of both kernels (_tilings), the planner's own among them,
    in interleaved rounds: kernel time (kernel_seconds) where the profiler runs, else wall
    time. Each tiling's outputs are compared bit for bit with the planned tiling's (the
    split-K kernels' other warp counts sum in another order); one that does not build is
    listed with its error."""
    rows = []
    for op, kernel, n_rows, rows_arg in (
        ("gather_qmv_swiglu", kernels._QMV_SWIGLU, inter, "JB"),
        ("gather_qmv_combine", kernels._QMV_COMBINE, d, "RB"),
    ):
        if op == "gather_qmv_swiglu":
            base = kernels._qmv_swiglu_launch(xs[0], picks[0], *up, gs, bits)
            inputs = [[x, i, *up] for x, i in zip(xs, picks, strict=True)]
        else:
            base = kernels._qmv_combine_launch(acts[0], picks[0], scores[0], *down, gs, bits)
            inputs = [[a, i, s, *down] for a, i, s in zip(acts, picks, scores, strict=True)]
        runs = []
        want = None
        for fields, v in _tilings(base, n_rows, rows_arg):
            row = {"op": op, **fields}
            try:
                outs = [kernel(i, v)[0] for i in inputs]
                mx.eval(outs)
            except (RuntimeError, ValueError) as e:  # MLX raises what NVRTC reports
                rows.append(row | {"error": str(e).splitlines()[0][:200]})
                continue
            if fields["planned"]:
                want = outs
            runs.append((row, v, outs))
        times: dict[int, list[float]] = {j: [] for j in range(len(runs))}
        for _ in range(max(rounds // 5, 3)):
            for j, (_, v, _) in enumerate(runs):
                times[j].append(_tiling_seconds(kernel, inputs, v))
        for j, (row, _, outs) in enumerate(runs):
            same = want is not None and all(
                bool(mx.array_equal(a, b)) for a, b in zip(outs, want, strict=True)
            )
            ts = sorted(t * 1e6 for t in times[j])
            rows.append(row | {"us": statistics.median(ts), "us_range": ts, "bitwise": same})
    return rows


def bench_shape(name, d, inter, n_experts, k, bits, gs, dtype, rounds, sweep=False):
    up = _experts(n_experts, 2 * inter, d, bits, gs, dtype)
    down = _experts(n_experts, d, inter, bits, gs, dtype)
    xs = [mx.random.normal((1, d)).astype(dtype) for _ in range(CALLS)]
    picks = _picks(n_experts, k)
    scores = [mx.softmax(mx.random.normal((1, k)), axis=-1).astype(dtype) for _ in range(CALLS)]
    q = {"group_size": gs, "bits": bits}
    pairs = list(zip(xs, picks, strict=True))
    acts = [ref.gather_qmv_swiglu(x, i, *up, **q) for x, i in pairs]
    triples = list(zip(acts, picks, scores, strict=True))
    mx.eval(xs, picks, scores, acts)

    def row_bytes(cols):  # packed weights + one scale and one bias per group
        return cols * bits // 8 + 2 * (cols // gs) * up[1].itemsize

    up_bytes = k * 2 * inter * row_bytes(d)
    down_bytes = k * d * row_bytes(inter)
    runs = {
        "gather_qmv_swiglu": (
            up_bytes,
            up,
            lambda i: kernels.gather_qmv_swiglu(*pairs[i], *up, **q),
            lambda i: ref.gather_qmv_swiglu(*pairs[i], *up, **q),
        ),
        "gather_qmv_combine": (
            down_bytes,
            down,
            lambda i: kernels.gather_qmv_combine(*triples[i], *down, **q),
            lambda i: ref.gather_qmv_combine(*triples[i], *down, **q),
        ),
    }
    rows = []
    if sweep and _backend.on_cuda():
        for r in sweep_tiles(up, down, xs, picks, scores, acts, d, inter, gs, bits, rounds):
            nbytes = up_bytes if r["op"] == "gather_qmv_swiglu" else down_bytes
            if "us" in r:
                r["GBps"] = nbytes / r["us"] / 1e3
            rows.append({"shape": name, "sweep": True, **r})
    for op, (nbytes, experts, fused, unfused) in runs.items():
        t_fused = _timed(lambda f=fused: [f(i) for i in range(CALLS)], rounds)
        t_unfused = _timed(lambda f=unfused: [f(i) for i in range(CALLS)], rounds)
        row = {
            "shape": name,
            "op": op,
            "D": d,
            "I": inter,
            "experts": n_experts,
            "k": k,
            "bytes": nbytes,
            "fused_us": t_fused * 1e6,
            "unfused_us": t_unfused * 1e6,
            "fused_GBps": nbytes / t_fused / 1e9,
            "unfused_GBps": nbytes / t_unfused / 1e9,
        }
        k_fused, k_unfused = kernel_seconds(fused, CALLS), kernel_seconds(unfused, CALLS)
        if k_fused is not None and k_unfused is not None:
            row |= {
                "fused_kernel_us": k_fused * 1e6,
                "unfused_kernel_us": k_unfused * 1e6,
                "fused_kernel_GBps": nbytes / k_fused / 1e9,
            }
        floor = None if k_fused is None else read_floor_seconds(experts, picks)
        if floor is not None:
            row |= {"read_floor_kernel_us": floor * 1e6, "kernel_of_read_floor": floor / k_fused}
        same = None if k_fused is None else copy_kernel_bandwidth(nbytes, CALLS)
        if same is not None:
            row |= {
                "copy_kernel_same_bytes_GBps": same / 1e9,
                "kernel_fraction_of_copy_same_bytes": nbytes / k_fused / same,
            }
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/moe_qmv.json")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also time other tilings (interleaved, kernel time, outputs compared bit for bit)",
    )
    args = p.parse_args()
    dtype = mx.bfloat16
    copy_big = copy_bandwidth(1 << 30, args.rounds)
    copy_kernel = copy_kernel_bandwidth(1 << 30)
    device = mx.device_info() if hasattr(mx, "device_info") else {}
    rows: list[dict] = []
    sweeps: list[dict] = []
    result = {
        "backend": _backend.name(),
        "device": str(device.get("device_name", platform.processor())),
        "bits": args.bits,
        "group_size": args.group_size,
        "dtype": "bfloat16",
        "calls_per_graph": CALLS,
        "copy_GBps": copy_big / 1e9,
        "copy_kernel_GBps": None if copy_kernel is None else copy_kernel / 1e9,
        "rows": rows,
        "tilings": sweeps,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, (d, inter, n_experts, k) in SHAPES.items():
        for r in bench_shape(
            name, d, inter, n_experts, k, args.bits, args.group_size, dtype, args.rounds, args.sweep
        ):
            if r.get("sweep"):
                sweeps.append(r)
                continue
            r["fraction_of_copy"] = r["fused_GBps"] * 1e9 / copy_big
            if copy_kernel is not None and "fused_kernel_GBps" in r:
                r["kernel_fraction_of_copy"] = r["fused_kernel_GBps"] * 1e9 / copy_kernel
            rows.append(r)
        out.write_text(json.dumps(result, indent=2))  # after every shape: a cut run keeps it
    copies = copy_summary(copy_big / 1e9, result["copy_kernel_GBps"])
    print(f"{result['device']} ({result['backend']}): {copies}")
    print(
        f"{'shape':<15}{'op':<20}{'MB':>7}{'fused us':>10}{'GB/s':>8}{'of copy':>9}"
        f"{'unfused us':>12}{'kernel us':>11}{'GB/s':>8}{'of copy':>9}{'unfused':>9}"
        f"{'read us':>9}{'of read':>9}{'copy@size':>11}{'of it':>7}"
    )
    for r in rows:
        kernel = (
            ""
            if "fused_kernel_us" not in r
            else (
                f"{r['fused_kernel_us']:>11.2f}{r['fused_kernel_GBps']:>8.0f}"
                f"{r.get('kernel_fraction_of_copy', float('nan')):>9.0%}"
                f"{r['unfused_kernel_us']:>9.2f}"
                f"{r.get('read_floor_kernel_us', float('nan')):>9.2f}"
                f"{r.get('kernel_of_read_floor', float('nan')):>9.0%}"
                f"{r.get('copy_kernel_same_bytes_GBps', float('nan')):>11.0f}"
                f"{r.get('kernel_fraction_of_copy_same_bytes', float('nan')):>7.0%}"
            )
        )
        print(
            f"{r['shape']:<15}{r['op']:<20}{r['bytes'] / 1e6:>7.1f}{r['fused_us']:>10.1f}"
            f"{r['fused_GBps']:>8.0f}{r['fraction_of_copy']:>9.0%}{r['unfused_us']:>12.1f}" + kernel
        )

    for r in sweeps:
        if "parts" in r:
            tiling = f"parts {r['parts']:>2} in flight {r['ahead']:>2}"
        else:
            tiling = f"warps {r['warps']:>2} outputs/block {r['rows_per_block']:>2}"
        if "error" in r:
            timing = f"does not build: {r['error']}"
        else:
            timing = f"{r['us']:7.2f} us {r['GBps']:6.0f} GB/s bitwise {r['bitwise']}"
        planned = " (planned)" if r["planned"] else ""
        print(f"  tiling {r['shape']:<15}{r['op']:<20} {tiling}: {timing}{planned}")


if __name__ == "__main__":
    main()
