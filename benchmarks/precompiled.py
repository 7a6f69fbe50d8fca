"""Precompiled (NVRTC cubin, `mx.fast.precompiled_cuda_kernel`) vs JIT (`mx.fast.cuda_kernel`)
launches of the catalog's kernels, on MLX-CUDA.

1. Per-call cost: chains of 1,000 calls at decode sizes (Qwen3-30B-A3B: expert FFN 768,
   128 experts, top-8, hidden 2048), graph build (Python) and eval timed separately, the
   two paths interleaved ABBA over rounds; a built-in multiply chain as the yardstick.
2. Cold start in fresh processes: the first result of every decode kernel (and, with
   --model, `zmlx_rs.patch` + the first generated token) for the JIT path, the precompiled
   path with an empty cache, and with a warm one.

Writes benchmarks/results/precompiled.json and prints a table.
    python benchmarks/precompiled.py [--rounds 20] [--model PATH_OR_REPO | synthetic:NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import mlx.core as mx
from zmlx_rs import _compile, _native
from zmlx_rs import kernels as K

CHAIN = 1000
RESULTS = Path(__file__).parent / "results"


def _case_glu(kernel):
    x = mx.random.normal((1, 768)).astype(mx.bfloat16) * 0.1
    launch = kernel.launch(("bench",), "silu", [1, 768], "bfloat16", [1, 768], "bfloat16")

    def build():
        y = x
        for _ in range(CHAIN):
            y = kernel([y, x], launch)[0]
        return [y]

    return build


def _case_gating(kernel):
    logits = mx.random.normal((1, 128)).astype(mx.bfloat16)
    launch = kernel.launch(
        ("bench",), [1, 128], "bfloat16", 8, "softmax", True, None, None, 1.0, "higher"
    )

    def build():
        return [kernel([logits], launch)[0] for _ in range(CHAIN)]

    return build


def _case_gather_add(kernel):
    y = mx.random.normal((1, 8, 2048)).astype(mx.bfloat16)
    s = mx.random.uniform(shape=(1, 8)).astype(mx.bfloat16)
    launch = kernel.launch(("bench",), [1, 8, 2048], "bfloat16", [1, 8], "bfloat16")

    def build():
        return [kernel([y, s], launch)[0] for _ in range(CHAIN)]

    return build


CASES = {
    "glu (1,768) bf16, chained": (_native.plan_glu, _case_glu),
    "moe_gating (1,128) k=8": (_native.plan_moe_gating, _case_gating),
    "gather_add (1,8,2048)": (_native.plan_gather_add, _case_gather_add),
}


def _builtin_chain():
    x = mx.random.normal((1, 768)).astype(mx.bfloat16)

    def build():
        y = x
        for _ in range(CHAIN):
            y = y * x
        return [y]

    return build


def _time(build) -> tuple[float, float]:
    """(build µs per call, eval µs per call) of one chain."""
    t0 = time.perf_counter()
    outs = build()
    t1 = time.perf_counter()
    mx.eval(outs)
    t2 = time.perf_counter()
    return (t1 - t0) / CHAIN * 1e6, (t2 - t1) / CHAIN * 1e6


def per_call(rounds: int) -> dict:
    _compile.use_precompiled(True)
    results = {}
    for label, (plan, case) in CASES.items():
        builds = {
            "precompiled": case(K._Kernel(plan)),
            "jit": case(K._Kernel(plan, precompiled=False)),
        }
        for b in builds.values():  # JIT-compile / load, then warm the allocator
            _time(b)
            _time(b)
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in builds}
        for r in range(rounds):
            order = ["precompiled", "jit"] if r % 2 == 0 else ["jit", "precompiled"]
            for k in order:
                samples[k].append(_time(builds[k]))
        results[label] = {
            k: {
                "build_us": statistics.median(s[0] for s in v),
                "eval_us": statistics.median(s[1] for s in v),
            }
            for k, v in samples.items()
        }
        pairs = list(zip(samples["precompiled"], samples["jit"], strict=True))
        for i, what in enumerate(("build", "eval")):
            ratios = [p[i] / j[i] for p, j in pairs]
            results[label][f"precompiled_over_jit_{what}"] = {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
            }
    b = _builtin_chain()
    _time(b)
    base = [_time(b) for _ in range(rounds)]
    results["builtin multiply (1,768) bf16, chained"] = {
        "builtin": {
            "build_us": statistics.median(s[0] for s in base),
            "eval_us": statistics.median(s[1] for s in base),
        }
    }
    return results


COLD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import mlx.core as mx
    import zmlx_rs
    from zmlx_rs import _compile, kernels as K
    _compile.use_precompiled(sys.argv[1] != "jit")
    model_path = sys.argv[2] if len(sys.argv) > 2 else None
    t_import = time.perf_counter()
    if model_path:
        if model_path.startswith("synthetic:"):
            from zmlx_rs import synthetic
            model = synthetic.build(model_path.removeprefix("synthetic:"))
            prompt = mx.array([[9707]])
        else:
            import mlx_lm
            model, tok = mlx_lm.load(model_path)
            prompt = mx.array(tok.encode("Hello"))[None]
        t_load = time.perf_counter()
        if sys.argv[1] != "unpatched":
            zmlx_rs.patch(model)
        mx.eval(model(prompt))
    else:
        t_load = time.perf_counter()
        x = mx.random.normal((1, 768)).astype(mx.bfloat16)
        h = mx.random.normal((1, 1536)).astype(mx.bfloat16)
        logits = mx.random.normal((1, 128)).astype(mx.bfloat16)
        y = mx.random.normal((1, 8, 2048)).astype(mx.bfloat16)
        s, i = K.moe_gating(logits, 8)
        mx.eval(K.swiglu(x, x), K.swiglu_packed(h), s, i, K.gather_add(y, s))
    t_end = time.perf_counter()
    print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import,
                      "first_result_s": t_end - t_load, "report": _compile.report()}))
    """
)


def _cold(mode: str, cache: str, model: str | None) -> dict:
    env = {**os.environ, _compile.CACHE_DIR_ENV: cache}
    cmd = [sys.executable, "-c", COLD_SCRIPT, mode] + ([model] if model else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cold_start(model: str | None, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {
        "jit": [],
        "precompiled, empty cache": [],
        "precompiled, warm cache": [],
    }
    if model:
        runs["unpatched"] = []
    # A throwaway run first: MLX JIT-compiles its own kernels on first use (disk-cached in
    # MLX_PTX_CACHE_DIR), a cost that must not land on whichever mode runs first.
    with tempfile.TemporaryDirectory() as cache:
        _cold("precompiled", cache, model)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            if model:
                runs["unpatched"].append(_cold("unpatched", cache, model))
            runs["jit"].append(_cold("jit", cache, model))
            runs["precompiled, empty cache"].append(_cold("precompiled", cache, model))
            runs["precompiled, warm cache"].append(_cold("precompiled", cache, model))
    return {
        k: {
            "first_result_s": statistics.median(r["first_result_s"] for r in v),
            "all_first_result_s": [r["first_result_s"] for r in v],
            "report": v[-1]["report"],
        }
        for k, v in runs.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--cold-repeats", type=int, default=3)
    p.add_argument(
        "--model",
        help="also time patch() + first token of this mlx-lm model (a path or repo), or of "
        "a random-weight one: synthetic:NAME (a zmlx_rs.synthetic shape, e.g. the demo's "
        "synthetic:qwen3-30b-a3b)",
    )
    args = p.parse_args()
    if not mx.cuda.is_available():
        sys.exit("needs MLX-CUDA with a GPU")
    mx.set_default_device(mx.gpu)
    K.swiglu(mx.ones((1, 8)), mx.ones((1, 8)))  # start the compiler (probe) before timing
    report = _compile.report()
    if report["path"] != "precompiled":
        print(f"warning: precompiled path off: {report['reason']}", file=sys.stderr)

    cold = cold_start(args.model, args.cold_repeats)
    result = {
        "device": mx.device_info().get("device_name"),
        "compile": report,
        "chain": CHAIN,
        "per_call": per_call(args.rounds),
        "cold_start": cold,
        "cubin_bytes": {v[0]: len(v[1]) for v in _compile._state.kernels.values() if v},
        "model": args.model,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "precompiled.json"
    out.write_text(json.dumps(result, indent=2))

    print(f"\n{result['device']}, NVRTC {report.get('nvrtc')}, {report.get('arch')}")
    print(f"\nPer call, chains of {CHAIN} (median of {args.rounds} interleaved rounds):")
    print(f"{'case':42} {'path':12} {'build µs':>9} {'eval µs':>8}")
    for label, paths in result["per_call"].items():
        for path, v in paths.items():
            if "build_us" in v:
                print(f"{label:42} {path:12} {v['build_us']:9.2f} {v['eval_us']:8.2f}")
        b, e = paths.get("precompiled_over_jit_build"), paths.get("precompiled_over_jit_eval")
        if b and e:
            print(
                f"{'':42} {'pre/jit':12} {b['median']:9.2f} {e['median']:8.2f}   "
                f"(build {b['min']:.2f}-{b['max']:.2f}, eval {e['min']:.2f}-{e['max']:.2f})"
            )
    what = "patch() + first token" if args.model else "first result of the decode kernels"
    print(f"\nCold start, fresh process ({what}), median of {args.cold_repeats}:")
    for k, v in result["cold_start"].items():
        print(f"{k:28} {v['first_result_s']:8.3f} s   cache {v['report']['cache']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
