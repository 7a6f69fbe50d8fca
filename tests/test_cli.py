"""The random-weight model builder, the e2e benchmark and `python -m zmlx_rs`, at CPU size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_rs
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear
from tiny import _COMMON, build
from zmlx_rs import ZmlxError, bench, synthetic
from zmlx_rs.__main__ import main


@pytest.fixture(autouse=True)
def _plan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZMLX_RS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", sorted(synthetic.SHAPES))
def test_synthetic_models_have_the_architecture_and_sane_logits(name):
    shape = synthetic.scaled_down(synthetic.SHAPES[name])
    model = synthetic.build(shape, layers=1, dtype=mx.float32)
    assert model.model_type == shape.config["model_type"]
    assert len(model.layers) == 1
    assert not model.training  # as mlx_lm.load returns it
    logits = model(mx.arange(8)[None])
    assert logits.shape == (1, 8, shape.config["vocab_size"])
    assert bool(mx.all(mx.isfinite(logits))) and 0.1 < float(logits.std()) < 100
    quantized = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert bool(quantized) == (shape.bits is not None)
    if "num_experts" in shape.config or "num_local_experts" in shape.config:
        assert any(isinstance(m, QuantizedSwitchLinear) for _, m in model.named_modules())


@pytest.mark.parametrize("name", ["mistral-7b", "qwen3-30b-a3b"])
def test_a_twin_shares_the_arrays_and_patching_it_leaves_the_model(name):
    shape = synthetic.scaled_down(synthetic.SHAPES[name])
    model = synthetic.build(shape, layers=2, dtype=mx.float32)
    other = synthetic.twin(model, shape)
    assert not other.training and len(other.layers) == 2
    ours, theirs = dict(tree_flatten(model.parameters())), dict(tree_flatten(other.parameters()))
    assert ours.keys() == theirs.keys()
    assert all(theirs[k] is a for k, a in ours.items())  # the same arrays, not copies
    tokens = mx.arange(8)[None]
    before = model(tokens)
    assert mx.array_equal(other(tokens), before).item()
    report = zmlx_rs.patch(other)
    assert report.patched
    assert not any(isinstance(m, zmlx_rs.patterns.Fused) for _, m in model.named_modules())
    assert dict(tree_flatten(model.parameters())).keys() == ours.keys()
    assert mx.array_equal(model(tokens), before).item()
    with pytest.raises(ZmlxError, match="'model' must be an unpatched model"):
        synthetic.twin(other, shape)
    with pytest.raises(ZmlxError, match="'shape' must be one of"):
        synthetic.twin(model, "gpt-5")


def test_full_size_config_is_real():
    c = synthetic.SHAPES["qwen3-30b-a3b"].config
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_experts"]) == (2048, 48, 128)
    assert (c["num_experts_per_tok"], c["moe_intermediate_size"], c["vocab_size"]) == (
        8,
        768,
        151936,
    )
    with pytest.raises(ZmlxError, match="'shape' must be one of"):
        synthetic.build("gpt-5")


def test_e2e_benchmark_writes_json(tmp_path, capsys):
    result = bench.main(
        [
            "--models=qwen3-0.6b",
            "--layers=1",
            "--rounds=2",
            "--tokens=8",
            "--prefill=64",
            "--check-steps=4",
            "--budget=60",
            f"--out={tmp_path}",
        ]
    )
    (written,) = tmp_path.glob("e2e-cpu-*.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(result))
    (row,) = result["rows"]
    assert row["rounds"] == 2 and row["numerics"]["ok"]
    assert row["patched"] == {"add_norm": 1, "qk_norm_rope": 1, "dense_mlp": 1}
    nodes = row["nodes_per_decode_step"]
    assert nodes["unpatched"]["nodes"] > 0 and nodes["patched"]["nodes"] > 0
    assert row["decode"]["unpatched_tps"] > 0 and len(row["decode"]["patched_rounds"]) == 2
    assert "| Qwen3-0.6B, scaled down | 1 | float32 |" in capsys.readouterr().out


def test_e2e_benchmark_records_smart_patch_decisions(tmp_path):
    args = ["--models=qwen3-0.6b", "--layers=1", "--rounds=2", "--tokens=8", "--prefill=64"]
    result = bench.main([*args, "--check-steps=4", "--budget=30", "--smart", f"--out={tmp_path}"])
    (row,) = result["rows"]
    smart = row["smart"]
    assert [d["pattern"] for d in smart["decisions"] if d["kept"]] == row["smart_kept"]
    assert {"verification", "extension", "graphs", "workloads"} <= smart.keys()
    assert row.get("decode_graphs", False) == bool(smart["graphs"] and smart["graphs"]["kept"])


def test_demo_runs_smart_patch_and_generates(capsys):
    main(["demo", "--layers=1", "--budget=3", "--tokens=4"])
    out = capsys.readouterr().out
    assert "smart_patch: kept" in out and "generated 4 tokens" in out


def test_patch_a_checkpoint_folder(tmp_path, capsys):
    model = build("llama")
    mx.save_safetensors(str(tmp_path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (tmp_path / "config.json").write_text(json.dumps({**_COMMON, "model_type": "llama"}))
    main(["patch", str(tmp_path), "--budget=3", "--workloads=decode"])
    out = capsys.readouterr().out
    assert "PatchReport llama" in out and "dense_mlp" in out
    with pytest.raises(SystemExit, match="mlx-lm checkpoint folder"):
        main(["patch", str(tmp_path / "missing")])


def test_e2e_benchmark_takes_a_pattern_set(tmp_path):
    args = ["--models=qwen3-0.6b", "--layers=1", "--rounds=2", "--tokens=4", "--prefill=16"]
    args += ["--check-steps=2", "--budget=60", f"--out={tmp_path}"]
    result = bench.main([*args, "--patterns=add_norm,dense_mlp"])
    assert result["patterns"] == ["add_norm", "dense_mlp"]
    assert result["rows"][0]["patched"] == {"add_norm": 1, "dense_mlp": 1}
    assert result["decode_graphs"] is False
    result = bench.main([*args, "--patterns=add_norm,dense_mlp", "--decode-graphs"])
    assert result["decode_graphs"] is True and result["rows"][0]["numerics"]["ok"]
    assert not zmlx_rs.patterns.decode_graphs_on()  # put back as it was
    with pytest.raises(SystemExit, match="--patterns"):
        bench.main([*args, "--patterns=nope"])


@pytest.mark.parametrize("pipelined", [False, True])
def test_step_profile_benchmark_writes_json(tmp_path, pipelined):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "step_profile.py"
    cmd = [sys.executable, str(script), "--models", "qwen3-0.6b", "--layers", "1"]
    cmd += ["--rounds", "1", "--steps", "2", "--scaled", "--out", str(tmp_path)]
    cmd += ["--pipelined"] if pipelined else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    assert "build us" in out and "unpatched" in out
    (written,) = tmp_path.glob("step_profile-*.json")
    result = json.loads(written.read_text())
    assert result["pipelined"] is pipelined
    row = result["models"][0]
    assert row["model"] == "qwen3-0.6b" and row["patched"]
    for config in ("unpatched", "patched"):
        assert row["nodes_per_decode_step"][config] > 0
        m = row["median_us"][config]
        assert 0 < m["build"] < m["step"] and len(row["rounds_us"][config]) == 1


def test_decode_graphs_benchmark_writes_json(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "decode_graphs.py"
    cmd = [sys.executable, str(script), "--models", "qwen3-0.6b", "--layers", "1"]
    cmd += ["--rounds", "1", "--tokens", "4", "--check-steps", "2", "--scaled"]
    cmd += ["--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    assert "graphs/patched" in out
    (written,) = tmp_path.glob("decode_graphs-*.json")
    row = json.loads(written.read_text())["models"][0]
    assert row["model"] == "qwen3-0.6b" and row["patched"] and row["graphs_bitwise"]
    assert all(len(row["tokens_per_s"][c]) == 1 for c in ("unpatched", "patched", "graphs"))
