"""Type stubs for the Rust extension module `zmlx_rs._native`."""

from typing import final

__all__ = [
    "BackendError",
    "DTypeError",
    "KernelSpec",
    "Launch",
    "ShapeError",
    "ZmlxError",
    "__version__",
    "check_dropout_p",
    "kernel_names",
    "kernel_spec",
    "plan_dropout",
    "plan_gather_add",
    "plan_gather_qmv_combine",
    "plan_gather_qmv_swiglu",
    "plan_glu",
    "plan_glu_backward",
    "plan_glu_packed",
    "plan_glu_packed_backward",
    "plan_moe_gating",
]

__version__: str

class ZmlxError(ValueError): ...
class ShapeError(ZmlxError): ...
class DTypeError(ZmlxError): ...
class BackendError(ZmlxError): ...

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
) -> Launch: ...
def plan_gather_add(
    y_shape: list[int], y_dtype: str, scores_shape: list[int], scores_dtype: str
) -> Launch: ...
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
