"""`zmlx_rs.checkpoint.inspect` on multi-shard checkpoints of real model layouts, against
opening them with `mx.load`. The checkpoints are written here as sparse files (headers real,
data holes), so they take no disk space:

- mistral-7b-8bit: Mistral-7B quantized by mlx-lm to 8 bits (group 64), ~7.7 GB, 4 shards.
- qwen3-30b-a3b-bf16: Qwen3-30B-A3B in Hugging Face layout (per-expert tensors), ~61 GB,
  16 shards, ~18.9k tensors.

Writes benchmarks/results/inspect_checkpoint.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import struct
import tempfile
import time
from pathlib import Path

import mlx.core as mx
from zmlx_rs.checkpoint import inspect

ROOT = Path(__file__).resolve().parents[1]
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "U32": 4}


def mistral_7b_8bit() -> tuple[list[tuple[str, str, list[int]]], dict]:
    hidden, ffn, layers, vocab, kv = 4096, 14336, 32, 32000, 1024
    bits, group = 8, 64

    def quantized(name: str, out_dim: int, in_dim: int) -> list[tuple[str, str, list[int]]]:
        return [
            (f"{name}.weight", "U32", [out_dim, in_dim * bits // 32]),
            (f"{name}.scales", "F16", [out_dim, in_dim // group]),
            (f"{name}.biases", "F16", [out_dim, in_dim // group]),
        ]

    tensors = quantized("model.embed_tokens", vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj, o, n in [("q", hidden, hidden), ("k", kv, hidden), ("v", kv, hidden)]:
            tensors += quantized(f"{p}.self_attn.{proj}_proj", o, n)
        tensors += quantized(f"{p}.self_attn.o_proj", hidden, hidden)
        tensors += quantized(f"{p}.mlp.gate_proj", ffn, hidden)
        tensors += quantized(f"{p}.mlp.up_proj", ffn, hidden)
        tensors += quantized(f"{p}.mlp.down_proj", hidden, ffn)
        tensors += [(f"{p}.input_layernorm.weight", "F16", [hidden])]
        tensors += [(f"{p}.post_attention_layernorm.weight", "F16", [hidden])]
    tensors += [("model.norm.weight", "F16", [hidden])]
    tensors += quantized("lm_head", vocab, hidden)
    config = {
        "model_type": "mistral",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "quantization": {"group_size": group, "bits": bits},
    }
    return tensors, config


def qwen3_30b_a3b_bf16() -> tuple[list[tuple[str, str, list[int]]], dict]:
    hidden, layers, heads, kv_heads, head_dim = 2048, 48, 32, 4, 128
    experts, expert_ffn, vocab = 128, 768, 151936
    tensors = [("model.embed_tokens.weight", "BF16", [vocab, hidden])]
    for i in range(layers):
        p = f"model.layers.{i}"
        tensors += [
            (f"{p}.self_attn.q_proj.weight", "BF16", [heads * head_dim, hidden]),
            (f"{p}.self_attn.k_proj.weight", "BF16", [kv_heads * head_dim, hidden]),
            (f"{p}.self_attn.v_proj.weight", "BF16", [kv_heads * head_dim, hidden]),
            (f"{p}.self_attn.o_proj.weight", "BF16", [hidden, heads * head_dim]),
            (f"{p}.self_attn.q_norm.weight", "BF16", [head_dim]),
            (f"{p}.self_attn.k_norm.weight", "BF16", [head_dim]),
            (f"{p}.input_layernorm.weight", "BF16", [hidden]),
            (f"{p}.post_attention_layernorm.weight", "BF16", [hidden]),
            (f"{p}.mlp.gate.weight", "BF16", [experts, hidden]),
        ]
        for e in range(experts):
            q = f"{p}.mlp.experts.{e}"
            tensors += [
                (f"{q}.gate_proj.weight", "BF16", [expert_ffn, hidden]),
                (f"{q}.up_proj.weight", "BF16", [expert_ffn, hidden]),
                (f"{q}.down_proj.weight", "BF16", [hidden, expert_ffn]),
            ]
    tensors += [
        ("model.norm.weight", "BF16", [hidden]),
        ("lm_head.weight", "BF16", [vocab, hidden]),
    ]
    config = {
        "model_type": "qwen3_moe",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_experts": experts,
    }
    return tensors, config


def nbytes(dtype: str, shape: list[int]) -> int:
    n = ITEMSIZE[dtype]
    for d in shape:
        n *= d
    return n


def write_sparse_checkpoint(folder: Path, tensors, config: dict, shards: int) -> int:
    """Writes `shards` safetensors files (sparse data) plus index and config; returns bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(nbytes(d, s) for _, d, s in tensors)
    per_shard = total / shards
    groups: list[list] = [[]]
    size = 0
    for t in tensors:
        if size >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(t)
        size += nbytes(t[1], t[2])
    weight_map = {}
    for i, group in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "mlx"}}
        offset = 0
        for name, dtype, shape in group:
            end = offset + nbytes(dtype, shape)
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
            offset = end
            weight_map[name] = shard
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / shard, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(config))
    return total


def mx_load_all(folder: Path) -> dict[str, mx.array]:
    """What a Python inspector would start from: every shard opened with mx.load (lazy)."""
    weights: dict[str, mx.array] = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        weights.update(mx.load(str(shard)))
    return weights


def mx_load_describe(folder: Path) -> str:
    """mx.load plus the listing and fingerprint inspect() returns, in Python."""
    weights = mx_load_all(folder)
    h = hashlib.sha256()
    for name in sorted(weights):
        w = weights[name]
        h.update(f"{name}\t{w.dtype}\t{','.join(map(str, w.shape))}\t{w.nbytes}\n".encode())
    return h.hexdigest()


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/inspect_checkpoint.json"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--eval-limit-gb",
        type=float,
        default=10.0,
        help="also time mx.load + mx.eval (reading every byte) for checkpoints up to this size",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, layout, shards in [
            ("mistral-7b-8bit", mistral_7b_8bit, 4),
            ("qwen3-30b-a3b-bf16", qwen3_30b_a3b_bf16, 16),
        ]:
            folder = Path(tmp) / name
            tensors, config = layout()
            total = write_sparse_checkpoint(folder, tensors, config, shards)
            info = inspect(folder)
            assert len(info.tensors) == len(tensors) and info.nbytes == total
            row = {
                "checkpoint": name,
                "gb": round(total / 1e9, 2),
                "shards": shards,
                "tensors": len(tensors),
                "n_params": info.n_params,
                "quantization": None
                if info.quantization is None
                else [info.quantization.bits, info.quantization.group_size, info.quantization.mode],
                "n_experts": info.n_experts,
                "inspect_ms": round(best_ms(lambda f=folder: inspect(f), args.repeats), 3),
                "mx_load_lazy_ms": round(best_ms(lambda f=folder: mx_load_all(f), args.repeats), 3),
                "mx_load_describe_ms": round(
                    best_ms(lambda f=folder: mx_load_describe(f), args.repeats), 3
                ),
            }
            if total / 1e9 <= args.eval_limit_gb:
                row["mx_load_eval_ms"] = round(
                    best_ms(lambda f=folder: mx.eval(list(mx_load_all(f).values())), 1), 1
                )
            rows.append(row)
            print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=1))
    print()
    print(
        f"{'checkpoint':20} {'GB':>6} {'shards':>6} {'tensors':>7} {'inspect ms':>10} "
        f"{'mx.load ms':>10} {'+describe':>10} {'+eval ms':>9}"
    )
    for r in rows:
        print(
            f"{r['checkpoint']:20} {r['gb']:6.1f} {r['shards']:6} {r['tensors']:7} "
            f"{r['inspect_ms']:10.2f} {r['mx_load_lazy_ms']:10.2f} "
            f"{r['mx_load_describe_ms']:10.2f} {r.get('mx_load_eval_ms', float('nan')):9.0f}"
        )


if __name__ == "__main__":
    main()
