"""Per-op kernel benchmark: MLX ops vs the same mx.compile'd vs zmlx_rs, at decode and
prefill shapes of Qwen3-30B-A3B, Mixtral-8x7B and Mistral-7B.

GPU time comes from many calls built into one graph and evaluated once (per-call build and
eval reported separately); variants run in interleaved rounds and the ratio ours / best MLX
variant is reported per round (median, min, max). Bandwidth is bytes read + written / eval
time, next to the device-to-device copy bandwidth measured in the same run. For cases of
at least LARGE bytes, also each variant's kernel time from the CUDA profiler (where torch is
installed: common.kernel_seconds, each call evaluated alone) and ours as a share of the copy
kernel timed the same way: what the kernel itself reaches, without host cost or the
overlap of independent calls in one graph.

    python benchmarks/kernels.py [--rounds 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zmlx_rs
from common import (
    copy_bandwidth,
    copy_kernel_bandwidth,
    copy_summary,
    device_name,
    interleaved,
    kernel_seconds,
    median,
    ratio_stats,
    table,
    write_json,
)
from zmlx_rs import kernels, reference

DT = mx.bfloat16
# Distinct input sets per shape so that large cases stream from HBM, not L2.
STREAM_BYTES = 256 << 20
# Cases that move at least this many bytes per call also get profiler kernel times.
LARGE = 16 << 20


def normals(*shapes: tuple[int, ...]) -> tuple[mx.array, ...]:
    return tuple(mx.random.normal(s).astype(DT) for s in shapes)


def normal_and_uniform(shape: tuple[int, ...]) -> tuple[mx.array, ...]:
    """y (..., k, hidden) and scores (..., k)."""
    return mx.random.normal(shape).astype(DT), mx.random.uniform(shape=shape[:-1]).astype(DT)


def input_sets(make: Callable[[], tuple], per_set_bytes: int) -> list[tuple]:
    count = max(1, min(16, STREAM_BYTES // max(per_set_bytes, 1)))
    sets = [make() for _ in range(count)]
    mx.eval(sets)
    return sets


# --- the MLX formulations mlx-lm runs today -----------------------------------------------


def mlx_swiglu(g, u):
    return nn.silu(g) * u


def mlx_swiglu_packed(h):
    g, u = mx.split(h, 2, axis=-1)
    return nn.silu(g) * u


def mlx_geglu(g, u):
    return nn.gelu_approx(g) * u


def mlx_gather_add(y, s):
    return (y * s[..., None]).sum(axis=-2).astype(y.dtype)


def mlx_gating(logits, k):
    gates = mx.softmax(logits, axis=-1, precise=True)
    inds = mx.argpartition(gates, kth=-k, axis=-1)[..., -k:]
    scores = mx.take_along_axis(gates, inds, axis=-1)
    return scores / scores.sum(axis=-1, keepdims=True), inds


def mlx_dropout(x, p):
    mask = mx.random.bernoulli(1 - p, x.shape)
    return (mask * x) * (1 / (1 - p))


def device_key(seed: int) -> mx.array:
    """mx.random.key(seed) as a view of a 16-byte buffer: MLX-CUDA keeps arrays of 8 bytes or
    less (a key) in a pool of managed memory, larger results of GPU ops in device memory."""
    key = mx.random.key(seed)
    view = mx.concatenate([key, key])[:2]
    mx.eval(view)
    return view


def stream_branch_weight(shape: tuple[int, ...]) -> tuple[mx.array, ...]:
    """x, r (..., D) and an RMSNorm weight (D,)."""
    return (*normals(shape, shape), mx.random.uniform(0.5, 1.5, shape[-1:]).astype(DT))


def qkv_and_norms(shape: tuple[int, ...], head_dim: int) -> tuple[mx.array, ...]:
    """A q|k|v projection output and the q and k head-norm weights."""
    w = (head_dim,)
    return (*normals(shape), *(mx.random.uniform(0.5, 1.5, w).astype(DT) for _ in range(2)))


def mlx_add_rms_norm(x, r, w):
    h = x + r
    return h, mx.fast.rms_norm(h, w, 1e-5)


def mlx_qk_rms_norm(qkv, qw, kw):
    return reference.qk_rms_norm(qkv, qw, kw, (1e-6, 1e-6), 32, 4)


# Decode-token RoPE fronts at position 4095: Mistral-7B (32 query, 8 key/value heads of 128,
# base 1e6) and Qwen3-30B-A3B (32 and 4, base 1e6).
_MISTRAL_ROPE = {"n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "base": 1e6}
_QWEN3_ROPE = {"n_heads": 32, "n_kv_heads": 4, "base": 1e6}


def mlx_qkv_rope(qkv):
    return reference.qkv_rope(qkv, 4095, **_MISTRAL_ROPE)


def mlx_qk_norm_rope(qkv, qw, kw):
    return reference.qk_norm_rope(qkv, qw, kw, (1e-6, 1e-6), 4095, **_QWEN3_ROPE)


def ours(fn: Callable) -> dict[str, Callable]:
    """Our two entry points: the inference kernel (one node) and the differentiable one."""
    return {"ours": partial(fn, differentiable=False), "ours (grad)": fn}


# --- cases ---------------------------------------------------------------------------------

Case = tuple[str, str, Callable[[], tuple], dict[str, Callable], Callable[[tuple], int]]


def cases(quick: bool) -> list[Case]:
    out: list[Case] = []
    # "batch 32": where the fixed per-call cost of a custom-kernel node stops dominating
    # (the crossover against one compiled node lies between decode and prefill sizes).
    tok = [("decode", 1), ("batch 32", 32), ("prefill", 512 if quick else 2048)]
    glu_shapes = [
        ("qwen3-30b-a3b", (8, 768)),
        ("mixtral-8x7b", (2, 14336)),
        ("mistral-7b", (14336,)),
    ]
    for model, inner in glu_shapes:
        for phase, t in tok:
            shape = (t, *inner)
            mk = partial(normals, shape, shape)
            out.append(
                (
                    f"swiglu {model} {phase}",
                    str(shape),
                    mk,
                    {
                        "mlx": mlx_swiglu,
                        "compiled": mx.compile(mlx_swiglu),
                        # Our fp32-math reference, one compiled node: what the op runs
                        # below GLU_KERNEL_MIN_SIZE elements; "kernel" forces the kernel.
                        "reference": reference.swiglu,
                        **ours(kernels.swiglu),
                        "kernel": partial(kernels.swiglu, differentiable=False, kernel=True),
                    },
                    lambda a: 3 * a[0].nbytes,
                )
            )
            pshape = (*shape[:-1], 2 * shape[-1])
            mkp = partial(normals, pshape)
            out.append(
                (
                    f"swiglu_packed {model} {phase}",
                    str(pshape),
                    mkp,
                    {
                        "mlx": mlx_swiglu_packed,
                        "compiled": mx.compile(mlx_swiglu_packed),
                        "reference": reference.swiglu_packed,
                        **ours(kernels.swiglu_packed),
                    },
                    lambda a: a[0].nbytes * 3 // 2,
                )
            )
    for phase, t in tok:
        shape = (t, 14336)
        mk = partial(normals, shape, shape)
        out.append(
            (
                f"geglu(tanh) mistral-7b {phase}",
                str(shape),
                mk,
                {
                    "mlx": mlx_geglu,
                    "compiled": mx.compile(mlx_geglu),
                    **ours(partial(kernels.geglu, approximate=True)),
                },
                lambda a: 3 * a[0].nbytes,
            )
        )
    for model, k, hidden in [("qwen3-30b-a3b", 8, 2048), ("mixtral-8x7b", 2, 4096)]:
        for phase, t in tok:
            shape = (t, k, hidden)
            mk = partial(normal_and_uniform, shape)
            out.append(
                (
                    f"gather_add {model} {phase}",
                    str(shape),
                    mk,
                    {
                        "mlx": mlx_gather_add,
                        "compiled": mx.compile(mlx_gather_add),
                        **ours(kernels.gather_add),
                    },
                    lambda a: a[0].nbytes + a[1].nbytes + a[0].nbytes // a[0].shape[-2],
                )
            )
    for model, experts, k in [("qwen3-30b-a3b", 128, 8), ("mixtral-8x7b", 8, 2)]:
        for phase, t in tok:
            shape = (t, experts)
            mk = partial(normals, shape)
            ref = partial(mlx_gating, k=k)
            if model == "mixtral-8x7b":

                def ref(x, k=k):
                    inds = mx.argpartition(-x, kth=k - 1, axis=-1)[..., :k]
                    return mx.softmax(
                        mx.take_along_axis(x, inds, axis=-1), axis=-1, precise=True
                    ), inds

                fused = partial(kernels.moe_gating, k=k, mode="topk_softmax")
            else:
                fused = partial(kernels.moe_gating, k=k)
            out.append(
                (
                    f"moe_gating {model} {phase}",
                    f"{shape} k={k}",
                    mk,
                    {"mlx": ref, "compiled": mx.compile(ref), **ours(fused)},
                    lambda a, k=k: a[0].nbytes + a[0].shape[0] * k * (a[0].itemsize + 4),
                )
            )
    for model, hidden in [("mistral-7b", 4096), ("qwen3-30b-a3b", 2048)]:
        for phase, t in tok:
            shape = (t, hidden)
            mk = partial(stream_branch_weight, shape)
            out.append(
                (
                    f"add_rms_norm {model} {phase}",
                    str(shape),
                    mk,
                    {
                        "mlx": mlx_add_rms_norm,
                        "compiled": mx.compile(mlx_add_rms_norm),
                        "ours": partial(kernels.add_rms_norm, eps=1e-5),
                    },
                    lambda a: 4 * a[0].nbytes + a[2].nbytes,
                )
            )
    for phase, t in tok:
        # Qwen3-30B-A3B: 32 query and 4 key/value heads of 128.
        shape = (t, 36 * 128 + 4 * 128)
        mk = partial(qkv_and_norms, shape, 128)
        out.append(
            (
                f"qk_rms_norm qwen3-30b-a3b {phase}",
                str(shape),
                mk,
                {
                    "mlx": mlx_qk_rms_norm,
                    "compiled": mx.compile(mlx_qk_rms_norm),
                    "ours": partial(
                        kernels.qk_rms_norm, eps=(1e-6, 1e-6), n_heads=32, n_kv_heads=4
                    ),
                },
                lambda a: 2 * a[0].nbytes,
            )
        )
    for phase, b in tok[:2]:  # one token per row: decode and a batch of 32 rows
        shape = (b, 1, 48 * 128)
        out.append(
            (
                f"qkv_rope mistral-7b {phase}",
                str(shape),
                partial(normals, shape),
                {
                    "mlx": mlx_qkv_rope,
                    "compiled": mx.compile(mlx_qkv_rope),
                    "ours": partial(kernels.qkv_rope, offset=4095, **_MISTRAL_ROPE),
                },
                lambda a: 2 * a[0].nbytes,
            )
        )
        shape = (b, 1, 40 * 128)
        out.append(
            (
                f"qk_norm_rope qwen3-30b-a3b {phase}",
                str(shape),
                partial(qkv_and_norms, shape, 128),
                {
                    "mlx": mlx_qk_norm_rope,
                    "compiled": mx.compile(mlx_qk_norm_rope),
                    "ours": partial(
                        kernels.qk_norm_rope, eps=(1e-6, 1e-6), offset=4095, **_QWEN3_ROPE
                    ),
                },
                lambda a: 2 * a[0].nbytes,
            )
        )
    # A LoRA layer's input: the hidden width, and Mistral-7B's down_proj input (14336) at 2048
    # tokens, where the key draw's fixed cost (~4 us) is a smaller share of the call.
    dropouts = [("dropout p=0.1 training", (512 if quick else 2048, 4096))]
    if not quick:
        dropouts.append(("dropout p=0.1 training prefill", (2048, 14336)))
    for name, shape in dropouts:
        out.append(
            (
                name,
                str(shape),
                partial(normals, shape),
                {
                    "mlx": partial(mlx_dropout, p=0.1),
                    "compiled": mx.compile(partial(mlx_dropout, p=0.1)),
                    "ours": partial(kernels.dropout, p=0.1),
                    # The kernel alone: no key drawn from the global random state per call.
                    "ours (given key)": partial(kernels.dropout, p=0.1, key=mx.random.key(0)),
                    "ours (given key, device buffer)": partial(
                        kernels.dropout, p=0.1, key=device_key(0)
                    ),
                },
                lambda a: 2 * a[0].nbytes,
            )
        )
    return out


def call_on(fn: Callable, sets: list[tuple], i: int):
    return fn(*sets[i % len(sets)])


def kernel_share(case: dict) -> str:
    """A case's profiler bandwidth and share of the copy kernel, "-" where it has none."""
    if "ours_kernel_gbs" not in case:
        return "-"
    return f"{case['ours_kernel_gbs']:.0f} ({100 * case['ours_kernel_fraction_of_copy']:.0f}%)"


def markdown_table(payload: dict) -> str:
    """The README table: per case, eval µs per call of each variant and our speedup; at
    large sizes the GPU time of the compiled MLX node and ours (CUDA profiler)."""
    lines = [
        "| case | shape | MLX ops µs | mx.compile µs | ours µs | ours (grad) µs "
        "| ours vs best MLX, median [min-max] | GPU µs, mx.compile / ours "
        "| ours GB/s (% of copy) | ours kernel GB/s (% of copy kernel) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in payload["cases"]:
        e, s = c["eval_us"], c["speedup_vs_best_mlx"]
        grad = f"{e['ours (grad)']:.1f}" if "ours (grad)" in e else "-"
        k = c.get("kernel_us")
        gpu = "-" if k is None else f"{k['compiled']:.1f} / {k['ours']:.1f}"
        lines.append(
            f"| {c['case']} | {c['shape']} | {e['mlx']:.1f} | {e['compiled']:.1f} "
            f"| {e['ours']:.1f} | {grad} | {s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}] "
            f"| {gpu} | {c['ours_gbs']:.0f} ({100 * c['ours_fraction_of_copy']:.0f}%) "
            f"| {kernel_share(c)} |"
        )
    lines.append("")
    lines.append(
        f"{payload['device']}, mlx {payload['mlx']}, zmlx_rs {payload['zmlx_rs']}, "
        f"{payload['dtype']}; eval time per call from {payload['rounds']} interleaved rounds "
        f"of many calls in one graph; kernel time from the CUDA profiler, each call alone; "
        f"{copy_summary(payload['copy_gbs'], payload.get('copy_kernel_gbs'))}."
    )
    return "\n".join(lines)


def update_readme(table: str) -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    begin, end = "<!-- kernels:begin -->", "<!-- kernels:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
    print(f"updated {readme}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smaller prefill shapes (CPU smoke run)")
    ap.add_argument("--output", default="kernels.json")
    ap.add_argument("--only", help="comma-separated substrings: run the cases whose name has one")
    ap.add_argument(
        "--readme-from", metavar="JSON", help="only write the README table from a results file"
    )
    args = ap.parse_args()
    if args.readme_from:
        update_readme(markdown_table(json.loads(Path(args.readme_from).read_text())))
        return

    dev = device_name()
    copy_gbs = copy_bandwidth(256 << 20, args.rounds) / 1e9
    copy_kernel = copy_kernel_bandwidth(256 << 20)
    rows, records = [], []
    payload = {
        "device": dev,
        "backend": zmlx_rs._backend.name(),
        "mlx": mx.__version__,
        "zmlx_rs": zmlx_rs.__version__,
        "rounds": args.rounds,
        "dtype": "bfloat16",
        "copy_gbs": copy_gbs,
        "copy_kernel_gbs": None if copy_kernel is None else copy_kernel / 1e9,
        "cases": records,
    }
    for name, shape, make, variants, moved in cases(args.quick):
        if args.only and not any(o in name for o in args.only.split(",")):
            continue
        sets = input_sets(make, sum(a.nbytes for a in make()))
        n = 10 if "prefill" in name else 200
        calls = {v: partial(call_on, f, sets) for v, f in variants.items()}
        res = interleaved(calls, n=n, rounds=args.rounds)
        evals = {v: [e for _, e in ts] for v, ts in res.items()}
        builds = {v: [b for b, _ in ts] for v, ts in res.items()}
        best_mlx = min(("mlx", "compiled"), key=lambda v: median(evals[v]))
        speed = ratio_stats(evals[best_mlx], evals["ours"])  # > 1: ours faster
        bytes_moved = moved(sets[0])
        gbs = bytes_moved / median(evals["ours"]) / 1e9
        rec = {
            "case": name,
            "shape": shape,
            "bytes": bytes_moved,
            "calls_per_graph": n,
            "eval_us": {v: 1e6 * median(e) for v, e in evals.items()},
            "build_us": {v: 1e6 * median(b) for v, b in builds.items()},
            "best_mlx": best_mlx,
            "speedup_vs_best_mlx": speed,
            "gbs": {v: bytes_moved / median(e) / 1e9 for v, e in evals.items()},
            "ours_gbs": gbs,
            "ours_fraction_of_copy": gbs / copy_gbs,
        }
        if bytes_moved >= LARGE and copy_kernel is not None:
            times = {v: kernel_seconds(f, len(sets)) for v, f in calls.items()}
            if all(t is not None for t in times.values()):
                rec["kernel_us"] = {v: 1e6 * t for v, t in times.items()}
                rec["ours_kernel_gbs"] = bytes_moved / times["ours"] / 1e9
                rec["ours_kernel_fraction_of_copy"] = rec["ours_kernel_gbs"] * 1e9 / copy_kernel
        records.append(rec)
        rows.append(
            [
                name,
                shape,
                *(f"{rec['eval_us'][v]:.1f}" for v in ("mlx", "compiled", "ours")),
                f"{rec['eval_us'].get('reference', float('nan')):.1f}",
                f"{rec['eval_us'].get('ours (grad)', float('nan')):.1f}",
                f"{rec['eval_us'].get('kernel', float('nan')):.1f}",
                f"{rec['build_us']['ours']:.1f}",
                f"{speed['median']:.2f}x [{speed['min']:.2f}-{speed['max']:.2f}]",
                f"{gbs:.0f} ({100 * gbs / copy_gbs:.0f}%)",
                kernel_share(rec),
            ]
        )
        write_json(args.output, payload)  # after every case: a cut run keeps what it measured
    path = write_json(args.output, payload)
    copies = copy_summary(copy_gbs, payload["copy_kernel_gbs"])
    print(f"device: {dev}   {copies}   rounds: {args.rounds}   -> {path}")
    print(
        table(
            rows,
            [
                "case",
                "shape",
                "mlx us",
                "compiled us",
                "ours us",
                "fp32 reference us",
                "ours (grad) us",
                "forced kernel us",
                "ours build us",
                "speedup vs best MLX (median [min-max])",
                "ours GB/s (% copy)",
                "ours kernel GB/s (% copy kernel)",
            ],
        )
    )


if __name__ == "__main__":
    main()
