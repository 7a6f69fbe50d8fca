"""Local mlx-lm checkpoints of tiny llama, qwen3 and qwen3_moe models, loaded with
`mlx_lm.load(path)`, patched, inspected and run through `stream_generate` end to end."""

from __future__ import annotations

import mlx_lm
import pytest
import zmlx_rs
from mlx.utils import tree_flatten
from mlx_lm.generate import stream_generate
from model_fixtures import write_model
from zmlx_rs.checkpoint import inspect

MODELS = ["llama", "qwen3", "qwen3_moe"]
PROMPT = "Hello 👋 world,\n中文"


def patch_model(model, tokenizer):
    """zmlx_rs.patch where it exists (it lands from another branch), and the detokenizer."""
    if hasattr(zmlx_rs, "patch"):
        zmlx_rs.patch(model)
    assert zmlx_rs.patch_tokenizer(tokenizer)


def generate(model, tokenizer, max_tokens=40):
    responses = list(stream_generate(model, tokenizer, PROMPT, max_tokens=max_tokens))
    tokens = [r.token for r in responses]
    if responses[-1].finish_reason == "stop":
        tokens.pop()  # the end-of-sequence token never reaches the detokenizer
    return [r.text for r in responses], tokens


def mlx_lm_segments(tokenizer, tokens):
    """What mlx-lm's own detokenizer yields for `tokens`, read the way stream_generate reads
    it: a segment after each token but the last, then one after finalize."""
    detokenizer = tokenizer._zmlx_rs_original_detokenizer
    detokenizer.reset()
    segments = []
    for i, token in enumerate(tokens):
        detokenizer.add_token(token)
        if i < len(tokens) - 1:
            segments.append(detokenizer.last_segment)
    detokenizer.finalize()
    segments.append(detokenizer.last_segment)
    return segments


@pytest.mark.parametrize("model_type", MODELS)
def test_load_patch_and_stream_generate(model_type, tmp_path):
    folder = write_model(model_type, tmp_path / model_type)
    model, tokenizer = mlx_lm.load(str(folder))
    patch_model(model, tokenizer)
    texts, tokens = generate(model, tokenizer)
    assert texts == mlx_lm_segments(tokenizer, tokens)
    zmlx_rs.unpatch_tokenizer(tokenizer)


@pytest.mark.parametrize("model_type", MODELS)
def test_inspect_describes_the_checkpoint(model_type, tmp_path):
    folder = write_model(model_type, tmp_path / model_type, shards=3)
    info = inspect(folder)
    model, _ = mlx_lm.load(str(folder))
    flat = dict(tree_flatten(model.parameters()))
    assert {t.name for t in info.tensors} == set(flat)
    assert info.n_params == sum(v.size for v in flat.values())
    assert {t.shard for t in info.tensors} == {
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    }
    assert info.quantization is None
    assert info.n_experts == (4 if model_type == "qwen3_moe" else None)


def test_quantized_checkpoint_loads_streams_and_inspects(tmp_path):
    folder = write_model("qwen3_moe", tmp_path / "q", quantize={"bits": 4, "group_size": 32})
    info = inspect(folder)
    q = info.quantization
    assert (q.bits, q.group_size, q.mode) == (4, 32, "affine")
    assert info.n_experts == 4
    model, tokenizer = mlx_lm.load(str(folder))
    patch_model(model, tokenizer)
    texts, tokens = generate(model, tokenizer, max_tokens=16)
    assert texts == mlx_lm_segments(tokenizer, tokens)


def test_smart_patch_keys_its_cache_by_the_checkpoint_fingerprint(tmp_path):
    from zmlx_rs.smart import _fingerprint

    a = write_model("qwen3", tmp_path / "a")
    b = write_model("qwen3", tmp_path / "b", quantize={"bits": 4, "group_size": 32})
    model, _ = mlx_lm.load(str(a))
    key = _fingerprint(model, a)
    assert key["checkpoint"] == inspect(a).fingerprint
    assert "parameters" not in key
    assert _fingerprint(model, b)["checkpoint"] != key["checkpoint"]
