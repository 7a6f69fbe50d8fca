"""Dense 4-bit qmv (one row) against mx.quantized_matmul, and what it does to decode.

    python benchmarks/qmv.py                # kernels: per-call time, GB/s, ratio, bitwise
    python benchmarks/qmv.py --e2e mistral-7b --layers 32 --rounds 12

Kernels: for each (N, K) of Mistral-7B and Qwen3-30B-A3B at bf16, group size 64, CALLS calls
on distinct weights (more bytes than L2) in one graph, the two variants interleaved over the
rounds; bandwidth = weight + scale + bias bytes / time, against the copy bandwidth
measured in the same run. `--e2e`: decode tokens/s of a random-weight model unpatched,
patched without qmv and patched with it, rounds interleaved (generate_step, KV cache).
JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx.core as mx
from common import copy_bandwidth, device_name, ratio_stats, table, write_json
from zmlx_rs import _native, kernels, measure, patch, patterns, synthetic, unpatch

CALLS = 64
# (N, K): Mistral-7B q/o, q|k|v, gate and up, gate|up, down; Qwen3-30B-A3B q|k|v, o.
SHAPES = [(4096, 4096), (6144, 4096), (14336, 4096), (28672, 4096), (4096, 14336), (5120, 2048),
          (2048, 4096)]  # fmt: skip


def bench_shape(n: int, k: int, rounds: int, copy: float) -> tuple[dict, list[str]]:
    copies = max(2, int(4e8 // (n * k // 2)))
    ws = [
        mx.quantize((mx.random.normal((n, k)) * k**-0.5).astype(mx.bfloat16), group_size=64)
        for _ in range(copies)
    ]
    x = mx.random.normal((1, k)).astype(mx.bfloat16)
    mx.eval(ws, x)
    nbytes = sum(a.nbytes for a in ws[0])
    variants = {
        "mlx": lambda i: mx.quantized_matmul(x, *ws[i % copies], transpose=True, group_size=64),
        "zmlx": lambda i: kernels.qmv(x, *ws[i % copies], group_size=64),
    }
    bitwise = all(
        mx.array_equal(variants["mlx"](i), variants["zmlx"](i)).item() for i in range(copies)
    )
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds + 1):
        for name in list(variants)[:: 1 if r % 2 else -1]:
            outs = [variants[name](i) for i in range(CALLS)]
            t0 = time.perf_counter()
            mx.eval(outs)
            if r:  # round 0 warms up the JIT
                times[name].append((time.perf_counter() - t0) / CALLS)
    mlx_t, ours_t = statistics.median(times["mlx"]), statistics.median(times["zmlx"])
    speed = ratio_stats(times["mlx"], times["zmlx"])
    entry = {
        "n": n,
        "k": k,
        "bytes": nbytes,
        "mlx_us": mlx_t * 1e6,
        "zmlx_us": ours_t * 1e6,
        "mlx_copy_fraction": nbytes / mlx_t / copy,
        "zmlx_copy_fraction": nbytes / ours_t / copy,
        "speedup": speed,
        "bitwise": bitwise,
    }
    row = [
        f"{n}x{k}",
        f"{mlx_t * 1e6:.1f}",
        f"{ours_t * 1e6:.1f}",
        f"{speed['median']:.2f}x [{speed['min']:.2f}, {speed['max']:.2f}]",
        f"{nbytes / ours_t / 1e9:.0f} ({nbytes / ours_t / copy:.0%})",
        "yes" if bitwise else "NO",
    ]
    return entry, row


def bench_kernels(rounds: int) -> dict:
    copy = copy_bandwidth(1 << 30, rounds)
    entries, rows = [], []
    for n, k in SHAPES:
        entry, row = bench_shape(n, k, rounds, copy)
        entries.append(entry)
        rows.append(row)
    header = ["N x K", "mlx us", "zmlx us", "speedup [min, max]", "zmlx GB/s (of copy)", "bitwise"]
    print(table(rows, header))
    print(f"copy bandwidth {copy / 1e9:.0f} GB/s, {device_name()}, {rounds} rounds")
    return {"copy_gbps": copy / 1e9, "calls": CALLS, "rounds": rounds, "shapes": entries}


def bench_e2e(name: str, layers: int | None, rounds: int, tokens: int) -> dict:
    model = synthetic.build(name, layers=layers)
    prompt = measure.prompt_tokens(model, None, 32, seed=1)
    everything = patterns.names()
    configs = {
        "unpatched": None,
        "patched_without_qmv": [p for p in everything if p != "qmv"],
        "patched_with_qmv": everything,
    }

    def use(config: str) -> None:
        unpatch(model)
        if configs[config] is not None:
            patch(model, patterns=configs[config])

    for config in configs:
        use(config)
        measure.decode_tokens_per_s(model, prompt, 8)
    tps: dict[str, list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        for config in list(configs)[:: 1 if r % 2 == 0 else -1]:
            use(config)
            tps[config].append(measure.decode_tokens_per_s(model, prompt, tokens))
    unpatch(model)
    result: dict = {"model": name, "layers": model.args.num_hidden_layers, "tokens": tokens,
                    "decode_tps": tps}  # fmt: skip
    for a, b in [("patched_without_qmv", "unpatched"), ("patched_with_qmv", "unpatched"),
                 ("patched_with_qmv", "patched_without_qmv")]:  # fmt: skip
        c = _native.compare_rounds(tps[a], tps[b], min_gain=0.0)
        result[f"{a}/{b}"] = {"median": c.median_ratio, "ci_low": c.ci_low, "ci_high": c.ci_high}
        print(f"{name}: {a}/{b} {c.median_ratio:.3f}x [{c.ci_low:.3f}, {c.ci_high:.3f}]")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--e2e", default=None, help="a synthetic model name: decode A/B instead")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    if args.e2e:
        payload = bench_e2e(args.e2e, args.layers, args.rounds, args.tokens)
        out = f"qmv_e2e_{args.e2e}.json"
    else:
        payload = bench_kernels(args.rounds)
        out = "qmv.json"
    payload["device"] = device_name()
    print(f"wrote {write_json(out, payload)}")


if __name__ == "__main__":
    main()
