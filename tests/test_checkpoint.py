"""Checkpoint inspection from safetensors headers: what it reports, and that every kind of
broken checkpoint is a CheckpointError naming the file (never a crash or a hang)."""

from __future__ import annotations

import json
import struct

import mlx.core as mx
import pytest
import zmlx_rs
from zmlx_rs.checkpoint import inspect


def save(folder, weights, name="model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / name), weights)
    return folder / name


def test_reports_tensors_params_and_shards(tmp_path):
    save(tmp_path, {"b.weight": mx.zeros((3, 4)), "a.bias": mx.zeros((5,), dtype=mx.bfloat16)})
    info = inspect(tmp_path)
    assert [(t.name, t.dtype, t.shape, t.nbytes, t.shard) for t in info.tensors] == [
        ("a.bias", "BF16", [5], 10, "model.safetensors"),
        ("b.weight", "F32", [3, 4], 48, "model.safetensors"),
    ]
    assert info.n_params == 17
    assert info.nbytes == 58
    assert info.quantization is None and info.n_experts is None
    assert inspect(tmp_path / "model.safetensors").fingerprint == info.fingerprint


@pytest.mark.parametrize(
    "change",
    [
        {"w": mx.zeros((3, 4)), "extra": mx.zeros((1,))},
        {"w2": mx.zeros((3, 4))},
        {"w": mx.zeros((4, 3))},
        {"w": mx.zeros((3, 4), dtype=mx.float16)},
    ],
)
def test_fingerprint_changes_with_any_name_dtype_or_shape(tmp_path, change):
    save(tmp_path / "a", {"w": mx.zeros((3, 4))})
    save(tmp_path / "b", {"w": mx.ones((3, 4))})
    save(tmp_path / "c", change)
    a, b, c = (inspect(tmp_path / x).fingerprint for x in "abc")
    assert a == b  # values are not part of it
    assert a != c


def test_index_and_shards(tmp_path):
    save(tmp_path, {"a": mx.zeros((2,))}, "model-00001-of-00002.safetensors")
    save(tmp_path, {"b": mx.zeros((3,))}, "model-00002-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    info = inspect(tmp_path)
    assert [t.shard for t in info.tensors] == sorted(set(index["weight_map"].values()))
    assert info.n_params == 5


def test_experts_from_config_or_names(tmp_path):
    save(tmp_path / "n", {f"layers.0.mlp.experts.{i}.w": mx.zeros((2,)) for i in range(6)})
    assert inspect(tmp_path / "n").n_experts == 6
    save(tmp_path / "c", {"w": mx.zeros((2,))})
    (tmp_path / "c" / "config.json").write_text(json.dumps({"num_local_experts": 8}))
    assert inspect(tmp_path / "c").n_experts == 8


def header_bytes(header: dict, data: int) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


GOOD = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
BROKEN = {
    "empty": b"",
    "short": b"\x01\x02",
    "header_past_end": struct.pack("<Q", 10_000) + b"{}",
    "huge_header_length": struct.pack("<Q", 2**63) + b"{}",
    "not_json": struct.pack("<Q", 5) + b"{abc}",
    "not_utf8": struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",
    "truncated_data": header_bytes(GOOD, 8),
    "padded_data": header_bytes(GOOD, 32),
    "bad_offsets": header_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [4, 20]}}, 20),
    "wrong_size": header_bytes({"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, 16),
    "bad_dtype": header_bytes({"w": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}, 16),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_are_checkpoint_errors_naming_the_file(tmp_path, case):
    (tmp_path / "model.safetensors").write_bytes(BROKEN[case])
    with pytest.raises(zmlx_rs.CheckpointError, match=r"model\.safetensors"):
        inspect(tmp_path)


def test_missing_shard_and_missing_tensor_are_named(tmp_path):
    save(tmp_path, {"a": mx.zeros((2,))}, "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(zmlx_rs.CheckpointError, match=r"model-00002-of-00002\.safetensors"):
        inspect(tmp_path)
    index["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(zmlx_rs.CheckpointError, match="no tensor 'b'"):
        inspect(tmp_path)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(zmlx_rs.CheckpointError, match="nowhere"):
        inspect(tmp_path / "nowhere")
    with pytest.raises(zmlx_rs.CheckpointError, match=r"no \.safetensors"):
        inspect(tmp_path)
    assert issubclass(zmlx_rs.CheckpointError, zmlx_rs.ZmlxError)
    assert zmlx_rs.errors.CheckpointError is zmlx_rs.CheckpointError
