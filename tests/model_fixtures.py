"""Real local mlx-lm checkpoint folders for tiny models: config.json, safetensors written by
`mx.save_safetensors` (one file or an index and shards), and a trained tokenizer. The offline
stand-in for a downloaded model: `mlx_lm.load(folder)` reads them like any other."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes
from tokenizer_fixtures import write_tokenizer
from tokenizers import Tokenizer

_COMMON = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}

CONFIGS = {
    "llama": {"model_type": "llama", **_COMMON},
    "qwen3": {"model_type": "qwen3", **_COMMON, "tie_word_embeddings": True},
    "qwen3_moe": {
        "model_type": "qwen3_moe",
        **_COMMON,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
    },
}

# Which trained tokenizer each model family ships with.
TOKENIZER_OF = {
    "llama": "sentencepiece_bpe",
    "qwen3": "byte_level_bpe",
    "qwen3_moe": "byte_level_bpe",
}


def write_model(
    model_type: str,
    folder: Path,
    *,
    shards: int = 1,
    quantize: dict | None = None,
    tokenizer: str | None = None,
    seed: int = 0,
) -> Path:
    """Writes a tiny random fp32 `model_type` checkpoint into `folder` and returns it.

    `shards > 1` writes `model-0000i-of-0000n.safetensors` and the index json;
    `quantize={"bits": 4, "group_size": 32}` quantizes it the way mlx-lm's convert does.
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(tokenizer or TOKENIZER_OF[model_type], folder)
    # Exactly the tokenizer's size: mlx-lm's SPM detokenizer has no entry past it.
    vocab_size = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(True)
    config = {**CONFIGS[model_type], "vocab_size": vocab_size}
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    if quantize is not None:
        nn.quantize(model, **quantize)
        config["quantization"] = dict(quantize)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    _save(folder, weights, shards)
    return folder


def _save(folder: Path, weights: dict[str, mx.array], shards: int) -> None:
    if shards == 1:
        mx.save_safetensors(str(folder / "model.safetensors"), weights, {"format": "mlx"})
        return
    names = sorted(weights)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n] for n in names[i::shards]}
        mx.save_safetensors(str(folder / shard), part, {"format": "mlx"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {
        "metadata": {"total_size": sum(w.nbytes for w in weights.values())},
        "weight_map": weight_map,
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
