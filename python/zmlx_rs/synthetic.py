"""Random-weight mlx-lm models of real architectures, built offline in seconds.

For benchmarks and the demo: speed depends on shapes, dtypes and quantization, not on
weight values. Quantized layers get random packed uint32 weights with scales and biases
directly (no float weights are made and quantized), one layer at a time, so a 48-layer
Qwen3-30B-A3B 4-bit model (~16 GB) is built without ever holding more than one layer of
temporaries. On CPU (`scaled_down`) the same architectures shrink to test size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import _get_classes

from zmlx_rs.errors import ZmlxError

__all__ = ["SHAPES", "Shape", "build", "scaled_down", "sized", "twin"]


@dataclass(frozen=True)
class Shape:
    """A real model's config (the fields mlx-lm reads) and how the benchmark stores it."""

    name: str
    config: dict[str, Any]
    bits: int | None = 4
    group_size: int = 64
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_MISTRAL_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1e6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}

SHAPES: dict[str, Shape] = {
    "qwen3-30b-a3b": Shape(
        "qwen3-30b-a3b",
        {
            "model_type": "qwen3_moe",
            "hidden_size": 2048,
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "intermediate_size": 6144,
            "moe_intermediate_size": 768,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "vocab_size": 151936,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1e6,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": False,
        },
        notes="Qwen3-30B-A3B",
    ),
    "mixtral-8x7b": Shape(
        "mixtral-8x7b",
        {
            **_MISTRAL_7B,
            "model_type": "mixtral",
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
        },
        notes="Mixtral-8x7B",
    ),
    "mistral-7b": Shape("mistral-7b", {**_MISTRAL_7B, "model_type": "mistral"}, notes="Mistral-7B"),
    "qwen3-0.6b": Shape(
        "qwen3-0.6b",
        {
            "model_type": "qwen3",
            "hidden_size": 1024,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 3072,
            "vocab_size": 151936,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1e6,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": True,
        },
        bits=None,
        notes="Qwen3-0.6B",
    ),
}


def _round64(x: float) -> int:
    return max(64, 64 * round(x / 64))


def scaled_down(shape: Shape) -> Shape:
    """The same architecture at CPU-test size: widths / 8 (multiples of 64, so 4-bit groups
    still fit), at most 16 experts (top-k at most 4), 4 layers and an 8192-token vocab."""
    c = dict(shape.config)
    heads = max(2, c["num_attention_heads"] // 8)
    kv = max(1, min(heads, c["num_key_value_heads"] // 2))
    c.update(
        hidden_size=_round64(c["hidden_size"] / 8),
        intermediate_size=_round64(c["intermediate_size"] / 8),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=64,
        num_hidden_layers=min(4, c["num_hidden_layers"]),
        vocab_size=min(8192, c["vocab_size"]),
    )
    for key in ("num_experts", "num_local_experts"):
        if key in c:
            c[key] = min(16, c[key])
    if "num_experts_per_tok" in c:
        c["num_experts_per_tok"] = min(4, c["num_experts_per_tok"])
    if "moe_intermediate_size" in c:
        c["moe_intermediate_size"] = _round64(c["moe_intermediate_size"] / 8)
    return Shape(shape.name, c, shape.bits, shape.group_size, f"{shape.notes}, scaled down")


def sized(name: str, scaled: bool) -> tuple[Shape, mx.Dtype]:
    """`SHAPES[name]` as the benchmarks run it: full size in bfloat16, or (`scaled`, for CPU
    runs) `scaled_down` in float32; with the dtype to build it in."""
    if name not in SHAPES:
        raise ZmlxError(f"sized(): 'name' must be one of {sorted(SHAPES)}, got {name!r}")
    if scaled:
        return scaled_down(SHAPES[name]), mx.float32
    return SHAPES[name], mx.bfloat16


def build(
    shape: Shape | str,
    *,
    layers: int | None = None,
    dtype: mx.Dtype = mx.bfloat16,
    seed: int = 0,
) -> nn.Module:
    """A random-weight, evaluated model of `shape` (a `SHAPES` key or a Shape), in eval mode;
    `layers` overrides the layer count (fewer layers: same per-layer graph, less memory and
    time)."""
    shape = _shape("build", shape)
    if layers is not None and layers < 1:
        raise ZmlxError(f"build(): 'layers' must be >= 1, got {layers}")
    model = _skeleton(shape, layers)
    inner = getattr(model, "model", model)
    blocks = list(getattr(inner, "layers", []))
    for i, block in enumerate(blocks):
        _randomize(block, mx.random.key(seed * 100_003 + i), dtype)
        mx.eval(block.parameters())
    # Everything outside the blocks: embeddings, final norm, head.
    rest = nn.Module()
    rest.inner_ = [m for name, m in inner.children().items() if name != "layers"]
    if inner is not model:
        rest.outer_ = [m for m in model.children().values() if m is not inner]
    _randomize(rest, mx.random.key(seed * 100_003 + len(blocks)), dtype)
    mx.eval(model.parameters())
    # Inference mode, as mlx_lm.load returns a model: patched modules then take their
    # inference paths (one-node kernels, the decode MoE kernels) as they do for users.
    return model.eval()


def _shape(op: str, shape: Shape | str) -> Shape:
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ZmlxError(f"{op}(): 'shape' must be one of {sorted(SHAPES)}, got {shape!r}")
        return SHAPES[shape]
    return shape


def _skeleton(shape: Shape, layers: int | None) -> nn.Module:
    """The model object of `shape` (with `layers` layers if given), quantized as `shape` says.
    Construction makes lazy float weights that are replaced before anything evaluates them."""
    config = dict(shape.config)
    if layers is not None:
        config["num_hidden_layers"] = layers
    if shape.bits is not None:
        config["quantization"] = {"group_size": shape.group_size, "bits": shape.bits}
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if shape.bits is not None:
        nn.quantize(model, group_size=shape.group_size, bits=shape.bits)
    return model


def twin(model: nn.Module, shape: Shape | str) -> nn.Module:
    """A second model object of `model`'s structure holding the very arrays of `model` (no
    copies), in eval mode: patching the twin (which swaps its modules and stacks its own
    weights) leaves `model` as it was, so one process can time both without re-patching
    between rounds. `shape` is the Shape (or `SHAPES` key) `model` was built from. A patched
    twin holds its stacked weights beside `model`'s originals (for a MoE model up to ~1.7x
    the weights' memory in all)."""
    shape = _shape("twin", shape)
    other = _skeleton(shape, model.args.num_hidden_layers)
    try:
        other.update(model.parameters(), strict=True)
    except ValueError as e:
        raise ZmlxError(
            f"twin(): 'model' must be an unpatched model built from {shape.name!r}: {e}"
        ) from e
    return other.eval()


def _is_quantized(m: nn.Module) -> bool:
    return isinstance(m.get("scales"), mx.array) and isinstance(m.get("weight"), mx.array)


def _randomize(module: nn.Module, key: mx.array, dtype: mx.Dtype) -> None:
    """Random values of a sane scale for every array in `module`'s leaves, in `dtype`:
    outputs of every layer keep roughly unit variance, so activations stay finite."""
    modules = [m for _, m in module.named_modules()]
    keys = mx.random.split(key, max(2, len(modules)))
    for leaf, k in zip(modules, keys, strict=False):
        if _is_quantized(leaf):
            _random_quantized(leaf, k, dtype)
            continue
        # Only the module's own arrays: its children get their turn in this loop.
        for name, a in list(leaf.items()):
            if not isinstance(a, mx.array) or not mx.issubdtype(a.dtype, mx.floating):
                continue
            if name == "weight" and a.ndim == 1:  # norms
                leaf[name] = mx.ones(a.shape, dtype=dtype)
            elif name == "weight":
                std = 1 / math.sqrt(a.shape[-1]) if not isinstance(leaf, nn.Embedding) else 1.0
                leaf[name] = (mx.random.normal(a.shape, key=k) * std).astype(dtype)
            else:
                leaf[name] = mx.zeros(a.shape, dtype=dtype)


def _random_quantized(leaf: nn.Module, key: mx.array, dtype: mx.Dtype) -> None:
    bits = leaf.bits
    packed = leaf["weight"]
    inputs = packed.shape[-1] * 32 // bits
    # Codes are uniform in [0, 2^bits - 1]; centre them and scale so that a row's dot
    # product with a unit-variance input has unit variance (embeddings: unit values).
    levels = 2**bits - 1
    code_std = math.sqrt((levels + 1) ** 2 - 1) / math.sqrt(12)
    target = 1.0 if isinstance(leaf, nn.QuantizedEmbedding) else 1 / math.sqrt(inputs)
    k1, k2, k3 = mx.random.split(key, 3)
    # randint draws through float32, exact for 16-bit halves: two make a random word.
    high = mx.random.randint(0, 1 << 16, packed.shape, dtype=mx.uint32, key=k1)
    low = mx.random.randint(0, 1 << 16, packed.shape, dtype=mx.uint32, key=k3)
    leaf["weight"] = (high << 16) | low
    wobble = mx.random.uniform(0.75, 1.25, leaf["scales"].shape, key=k2)
    scales = (wobble * (target / code_std)).astype(dtype)
    leaf["scales"] = scales
    if isinstance(leaf.get("biases"), mx.array):
        leaf["biases"] = (-(levels / 2) * scales).astype(dtype)
    if isinstance(leaf.get("bias"), mx.array):
        leaf["bias"] = mx.zeros(leaf["bias"].shape, dtype=dtype)
