"""Tiny random mlx-lm models of each family, fp32, built offline from a config dict."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import _get_classes
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

# One superset of every family's fields; ModelArgs.from_dict keeps the ones it knows.
# Dimensions divide by 64 so every linear layer quantizes at group 32 and 64.
_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "vocab_size": 96,
    "rope_theta": 10000.0,
    "rope_traditional": False,
    "max_position_embeddings": 512,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    # MoE
    "num_experts": 8,
    "num_local_experts": 8,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "norm_topk_prob": True,
    "n_group": 1,
    "topk_group": 1,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "use_qk_norm": False,
    "attention_bias": False,
    "partial_rotary_factor": 0.5,
    # deepseek MLA
    "kv_lora_rank": 32,
    "q_lora_rank": None,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    # qwen3_next linear attention
    "linear_num_value_heads": 4,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
    "full_attention_interval": 2,
    # gemma2
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "query_pre_attn_scalar": 16.0,
    # gpt_oss
    "sliding_window": 64,
    "layer_types": ["sliding_attention", "full_attention"],
    "swiglu_limit": 7.0,
    "intermediate_size_gpt_oss": 64,
}

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "qwen2": {"attention_bias": True},
    "qwen3": {},
    "qwen3_moe": {"mlp_only_layers": [0]},
    "qwen2_moe": {"norm_topk_prob": False},
    "qwen3_next": {},
    "mixtral": {},
    "glm4_moe": {},
    "deepseek_v3": {},
    "gemma": {},
    "gemma2": {},
    "phi3": {},
    "internlm2": {"bias": False},
    "gpt_oss": {"intermediate_size": 64},
}


def build(
    family: str, *, seed: int = 0, bits: int | None = None, group_size: int = 64, **overrides: Any
) -> nn.Module:
    """A random fp32 model of `family` (quantized when `bits` is given), evaluated."""
    config = {**_COMMON, **FAMILIES[family], **overrides, "model_type": family}
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    # Some families start routers and correction biases at zero: ties would make routing
    # arbitrary. Give every array random values of a sane scale.
    model.update(
        tree_map(
            lambda a: mx.random.normal(a.shape) * 0.2 if a.dtype == mx.float32 else a,
            model.parameters(),
        )
    )
    if bits is not None:
        nn.quantize(
            model,
            group_size=group_size,
            bits=bits,
            class_predicate=lambda _, m: (
                hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0
            ),
        )
    mx.eval(model.parameters())
    # Inference mode, as mlx_lm.load leaves a model (patched modules then take the kernels'
    # one-node inference entry points; LoRA training switches to train()).
    return model.eval()


def tokenizer() -> TokenizerWrapper:
    """A word-level tokenizer over the tiny vocabulary ("t0" .. "t95"), without EOS, so
    generation always runs to max_tokens."""
    vocab = {f"t{i}": i for i in range(_COMMON["vocab_size"])}
    tok = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    return TokenizerWrapper(PreTrainedTokenizerFast(tokenizer_object=tok))


def snapshot(model: nn.Module) -> dict[str, mx.array]:
    """Every array of the model by path, for bitwise comparisons."""
    return dict(tree_flatten(model.parameters()))
