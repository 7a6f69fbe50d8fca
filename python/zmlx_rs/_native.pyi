"""Type stubs for the Rust extension module `zmlx_rs._native`."""

import os
from os import PathLike
from pathlib import Path
from typing import final

__all__ = [
    "MIN_ROUNDS",
    "BackendError",
    "CheckpointError",
    "CheckpointInfo",
    "Comparison",
    "CompiledKernel",
    "DTypeError",
    "KernelCompiler",
    "KernelSpec",
    "Launch",
    "Quantization",
    "ShapeError",
    "Specialisation",
    "StreamingDetokenizer",
    "TensorInfo",
    "ZmlxError",
    "__version__",
    "bootstrap_median_ci",
    "check_dropout_p",
    "compare_rounds",
    "device_arch",
    "inspect_checkpoint",
    "keep",
    "kernel_names",
    "kernel_spec",
    "locate_toolchain",
    "median",
    "plan_add_rms_norm",
    "plan_dropout",
    "plan_gather_add",
    "plan_gather_qmv_combine",
    "plan_gather_qmv_swiglu",
    "plan_glu",
    "plan_glu_backward",
    "plan_glu_packed",
    "plan_glu_packed_backward",
    "plan_moe_gating",
    "plan_qk_norm_rope",
    "plan_qk_rms_norm",
    "plan_qkv_rope",
    "plan_qmv",
    "settled",
    "specialisation",
    "specialisations",
]

__version__: str
MIN_ROUNDS: int

class ZmlxError(ValueError): ...
class ShapeError(ZmlxError): ...
class DTypeError(ZmlxError): ...
class BackendError(ZmlxError): ...
class CheckpointError(ZmlxError): ...

@final
class KernelSpec:
    """One catalog kernel, as `mx.fast.cuda_kernel` takes it."""

    @property
    def name(self) -> str: ...
    @property
    def input_names(self) -> list[str]: ...
    @property
    def output_names(self) -> list[str]: ...
    @property
    def header(self) -> str: ...
    @property
    def source(self) -> str: ...

@final
class Launch:
    """How to call one kernel on arrays of one signature; dtypes are mlx dtype names."""

    @property
    def kernel(self) -> str: ...
    @property
    def template(self) -> list[tuple[str, int | bool | str]]: ...
    @property
    def grid(self) -> tuple[int, int, int]: ...
    @property
    def threadgroup(self) -> tuple[int, int, int]: ...
    @property
    def output_shapes(self) -> list[list[int]]: ...
    @property
    def output_dtypes(self) -> list[str]: ...

def kernel_spec(name: str) -> KernelSpec: ...
def kernel_names() -> list[str]: ...
def plan_glu(
    activation: str, gate_shape: list[int], gate_dtype: str, up_shape: list[int], up_dtype: str
) -> Launch: ...
def plan_glu_packed(activation: str, h_shape: list[int], h_dtype: str) -> Launch: ...
def plan_glu_backward(
    activation: str,
    gate_shape: list[int],
    gate_dtype: str,
    cotan_shape: list[int],
    cotan_dtype: str,
) -> Launch: ...
def plan_glu_packed_backward(
    activation: str, h_shape: list[int], h_dtype: str, cotan_shape: list[int], cotan_dtype: str
) -> Launch: ...
def check_dropout_p(p: float) -> bool: ...
def plan_dropout(
    x_shape: list[int], x_dtype: str, p: float, key_shape: list[int], key_dtype: str
) -> Launch: ...
def plan_moe_gating(
    logits_shape: list[int],
    logits_dtype: str,
    k: int,
    mode: str,
    norm_topk: bool,
    bias_shape: list[int] | None,
    bias_dtype: str | None,
    scale: float,
    ties: str,
    mlx_rounding: bool = False,
) -> Launch: ...
def plan_gather_add(
    y_shape: list[int],
    y_dtype: str,
    scores_shape: list[int],
    scores_dtype: str,
    mlx_rounding: bool = False,
) -> Launch: ...

@final
class StreamingDetokenizer:
    """mlx-lm's streaming detokenizer interface in Rust; `kind` is "naive", "spm" or "bpe"."""

    def __new__(
        cls,
        tokenizer_json: str,
        kind: str,
        *,
        trim_space: bool = True,
        trim_trailing_space: bool = False,
        clean_up_spaces: bool = False,
    ) -> StreamingDetokenizer: ...
    @property
    def kind(self) -> str: ...
    def reset(self) -> None: ...
    def add_token(self, token: int) -> None: ...
    def finalize(self) -> None: ...
    @property
    def text(self) -> str: ...
    @property
    def last_segment(self) -> str: ...
    @property
    def tokens(self) -> list[int]: ...
    @property
    def offset(self) -> int: ...
    @offset.setter
    def offset(self, offset: int) -> None: ...
    def __copy__(self) -> StreamingDetokenizer: ...

@final
class TensorInfo:
    """One tensor of a checkpoint; `dtype` is the safetensors name (F32, BF16, U32...)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def shard(self) -> str: ...

@final
class Quantization:
    """mlx-lm quantization settings of a checkpoint."""

    @property
    def bits(self) -> int: ...
    @property
    def group_size(self) -> int: ...
    @property
    def mode(self) -> str: ...

@final
class CheckpointInfo:
    """What a checkpoint holds, read from its safetensors headers only."""

    @property
    def tensors(self) -> list[TensorInfo]: ...
    @property
    def n_params(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def quantization(self) -> Quantization | None: ...
    @property
    def n_experts(self) -> int | None: ...
    @property
    def fingerprint(self) -> str: ...

def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo: ...

@final
class Comparison:
    """Paired A/B rounds of one candidate against the baseline, judged by the decision rule."""

    @property
    def rounds(self) -> int: ...
    @property
    def median_ratio(self) -> float: ...
    @property
    def ci_low(self) -> float: ...
    @property
    def ci_high(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def verdict(self) -> str: ...

def median(values: list[float]) -> float: ...
def bootstrap_median_ci(
    values: list[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]: ...
def compare_rounds(
    candidate: list[float],
    baseline: list[float],
    *,
    min_gain: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison: ...
def keep(comparisons: list[Comparison]) -> bool: ...
def settled(comparisons: list[Comparison]) -> bool: ...

@final
class Specialisation:
    """One compiled variant of a catalog kernel: template values and argument dtypes."""

    @property
    def kernel(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def mlx_source(self) -> str: ...
    @property
    def input_dtypes(self) -> list[str]: ...

@final
class CompiledKernel:
    """A cubin ready for `mx.fast.precompiled_cuda_kernel`, and how the cache served it."""

    @property
    def symbol(self) -> str: ...
    @property
    def cubin(self) -> bytes: ...
    @property
    def cache(self) -> str: ...

@final
class KernelCompiler:
    """NVRTC loaded from `library`, targeting `arch`, caching cubins under `cache_dir`."""

    def __new__(
        cls,
        library: str | PathLike[str],
        include_dirs: list[str | PathLike[str]],
        arch: str,
        cache_dir: str | PathLike[str] | None,
    ) -> KernelCompiler: ...
    @property
    def arch(self) -> str: ...
    @property
    def nvrtc_version(self) -> tuple[int, int]: ...
    @property
    def library(self) -> Path: ...
    @property
    def cache_dir(self) -> Path | None: ...
    def compile(self, spec: Specialisation) -> CompiledKernel: ...
    def compile_unit(self, symbol: str, source: str) -> CompiledKernel: ...
    def compile_source(
        self, source: str, file_name: str, headers: list[tuple[str, str]] = ...
    ) -> bytes: ...

def specialisation(launch: Launch, input_dtypes: list[str]) -> Specialisation: ...
def specialisations() -> list[Specialisation]: ...
def locate_toolchain(
    nvidia_dirs: list[str | PathLike[str]],
    cuda_home: str | PathLike[str] | None,
    extra_include_dirs: list[str | PathLike[str]],
) -> tuple[Path, list[Path]]: ...
def device_arch(major: int, minor: int) -> str: ...
def plan_gather_qmv_swiglu(
    x: tuple[list[int], str],
    indices: tuple[list[int], str],
    w: tuple[list[int], str],
    scales: tuple[list[int], str],
    biases: tuple[list[int], str],
    bits: int,
    group_size: int,
) -> Launch: ...
def plan_gather_qmv_combine(
    act: tuple[list[int], str],
    indices: tuple[list[int], str],
    scores: tuple[list[int], str],
    w: tuple[list[int], str],
    scales: tuple[list[int], str],
    biases: tuple[list[int], str],
    bits: int,
    group_size: int,
) -> Launch: ...
def plan_qmv(
    x: tuple[list[int], str],
    w: tuple[list[int], str],
    scales: tuple[list[int], str],
    biases: tuple[list[int], str],
    bits: int,
    group_size: int,
) -> Launch: ...
def plan_add_rms_norm(
    x: tuple[list[int], str], r: tuple[list[int], str], w: tuple[list[int], str], eps: float
) -> Launch: ...
def plan_qk_rms_norm(
    qkv: tuple[list[int], str],
    q_weight: tuple[list[int], str],
    k_weight: tuple[list[int], str],
    eps: tuple[float, float],
    n_heads: int,
    n_kv_heads: int,
) -> Launch: ...
def plan_qk_norm_rope(
    qkv: tuple[list[int], str],
    q_weight: tuple[list[int], str],
    k_weight: tuple[list[int], str],
    offset: tuple[list[int], str],
    eps: tuple[float, float],
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    base: float,
    scale: float,
    traditional: bool,
) -> Launch: ...
def plan_qkv_rope(
    qkv: tuple[list[int], str],
    offset: tuple[list[int], str],
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    base: float,
    scale: float,
    traditional: bool,
) -> Launch: ...
