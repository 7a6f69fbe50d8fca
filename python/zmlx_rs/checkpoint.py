"""Checkpoint inspection from safetensors headers: no tensor data is read.

`inspect(path)` takes a model folder (`model.safetensors`, or `model.safetensors.index.json`
and its shards) or one `.safetensors` file, and returns a `CheckpointInfo`: its tensors (name,
dtype, shape, nbytes, shard), `n_params`, `quantization` (bits, group size, mode, or None),
`n_experts` (or None) and a `fingerprint` that changes when any tensor's name, dtype, shape
or size does. A missing, truncated or malformed file raises `CheckpointError` naming it.
"""

from __future__ import annotations

import os

from zmlx_rs._native import CheckpointInfo, Quantization, TensorInfo, inspect_checkpoint

__all__ = ["CheckpointInfo", "Quantization", "TensorInfo", "inspect"]


def inspect(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describes the checkpoint at `path` from its safetensors headers."""
    return inspect_checkpoint(os.fspath(path))
