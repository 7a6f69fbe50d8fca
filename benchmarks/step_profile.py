"""Where one decode step's time goes, unpatched vs patched: building the lazy graph (Python),
encoding it (`mx.async_eval`: MLX walks the graph and records the kernels on the calling
thread) and waiting for the device (`mx.synchronize`), per step, in interleaved rounds.

    python benchmarks/step_profile.py --models mistral-7b --rounds 6 --steps 32 [--pipelined]

`generate_step` overlaps the next step's build and encode with this step's device work, so
its time per token is about max(build + encode, device); a fusion that removes nodes pays
only where build + encode is the larger. `--pipelined` times that order itself ("wait" is
then reading the previous token, "step" the time per token). Writes
benchmarks/results/step_profile-<time>.json and prints a table (medians over steps, then
over rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import mlx.core as mx
from common import environment, model_options, parse_model_args, result_name, table, write_json
from mlx_lm.models.cache import make_prompt_cache
from zmlx_rs import measure, patch, synthetic, unpatch

PROMPT = 16


def profile_steps(model: Any, steps: int, pipelined: bool = False) -> dict[str, float]:
    """Median microseconds per phase over `steps` greedy decode steps after a prompt.

    Synchronous: each step is built, encoded and waited for alone ("wait" is the device's
    share after encoding). Pipelined: `generate_step`'s order, step n+1 built and encoded
    before step n's token is read ("wait" is that read), so "step" is the time per token
    decode really sees."""
    cache = make_prompt_cache(model)
    prompt = measure.prompt_tokens(model, None, PROMPT, seed=1)
    logits = model(prompt[None], cache=cache)
    token = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
    mx.eval(token)
    phases: dict[str, list[float]] = {"build": [], "encode": [], "wait": [], "step": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = model(token, cache=cache)
        following = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
        t1 = time.perf_counter()
        mx.async_eval(following)
        t2 = time.perf_counter()
        if pipelined:
            token.item()
        else:
            mx.synchronize()
        t3 = time.perf_counter()
        token = following
        for name, dt in (("build", t1 - t0), ("encode", t2 - t1), ("wait", t3 - t2)):
            phases[name].append(dt * 1e6)
        phases["step"].append((t3 - t0) * 1e6)
    mx.synchronize()
    return {k: statistics.median(v) for k, v in phases.items()}


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    shape, dtype = synthetic.sized(name, args.scaled)
    model = synthetic.build(shape, layers=args.layers, dtype=dtype)
    prompt = measure.prompt_tokens(model, None, PROMPT, seed=1)
    nodes = {"unpatched": measure.decode_graph_nodes(model, prompt)["nodes"]}
    report = patch(model, patterns=args.chosen)
    plan = report.to_dict()
    nodes["patched"] = measure.decode_graph_nodes(model, prompt)["nodes"]
    rounds: dict[str, list[dict[str, float]]] = {"unpatched": [], "patched": []}
    for r in range(args.rounds + 1):  # round 0 warms the JIT up and is dropped
        order = ["unpatched", "patched"] if r % 2 == 0 else ["patched", "unpatched"]
        for config in order:
            unpatch(model)
            if config == "patched":
                patch(model, plan=plan)
            got = profile_steps(model, args.steps, args.pipelined)
            if r > 0:
                rounds[config].append(got)
    unpatch(model)
    summary = {
        config: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        for config, rs in rounds.items()
    }
    del model
    mx.clear_cache()
    return {
        "model": name,
        "layers": args.layers,
        "dtype": str(dtype).removeprefix("mlx.core."),
        "patched": report.counts(),
        "nodes_per_decode_step": nodes,
        "median_us": summary,
        "rounds_us": rounds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_options(p, "mistral-7b")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=32, help="decode steps per round")
    p.add_argument(
        "--pipelined",
        action="store_true",
        help="generate_step's order: the next step built and encoded before this token is read",
    )
    args = parse_model_args(p)
    rows = [run_model(n, args) for n in args.names]
    payload = {
        **environment(),
        "rounds": args.rounds,
        "steps": args.steps,
        "pipelined": args.pipelined,
        "models": rows,
    }
    path = write_json(result_name("step_profile"), payload, args.out)
    lines = []
    for row in rows:
        for config in ("unpatched", "patched"):
            m = row["median_us"][config]
            lines.append(
                [
                    row["model"],
                    config,
                    str(row["nodes_per_decode_step"][config]),
                    *(f"{m[k]:.0f}" for k in ("build", "encode", "wait", "step")),
                ]
            )
    header = ["model", "config", "nodes", "build us", "encode us", "wait us", "step us"]
    print(f"{payload['device']} ({payload['backend']}), {args.rounds} rounds x {args.steps} steps")
    print(table(lines, header))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
