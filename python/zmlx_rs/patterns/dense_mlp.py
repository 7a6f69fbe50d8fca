"""Dense gated MLPs: `down(act(gate(x)) * up(x))` becomes `down(act_packed(gate_up(x)))`.

Which modules qualify is read from their `__call__` source, not from a list of class names:
the body is evaluated symbolically and must compute exactly a SwiGLU / GeGLU of two
projections of the input (any attribute spelling: gate_proj/up_proj, w1/w3, c_fc_0/c_fc_1,
...) or of the two halves of one already-fused projection (phi3, glm4, plamo). Gate and up
are concatenated once along the output axis (quantized weight, scales, biases and bias
alike): three matmul nodes plus the activation become two plus one.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import activations

from zmlx_rs import _backend, kernels
from zmlx_rs.patterns._base import (
    DENSE_LINEARS,
    OK,
    Fused,
    Pattern,
    decode_graph,
    decode_graphs_on,
    fuse_outputs,
    linear_mismatch,
    unfuse_outputs,
)
from zmlx_rs.patterns.qmv import GRAPH_LINEARS

__all__ = ["DenseMLP", "FusedGatedMLP"]

# The activation helpers mlx-lm models call on the gate, by the name the kernels use.
_GLU_HELPERS = {activations.swiglu: "silu"}
_GATE_ACTIVATIONS = {nn.silu: "silu", nn.gelu: "gelu", nn.gelu_approx: "gelu_approx"}


class _Unsupported(Exception):
    pass


def _resolve(node: ast.expr, scope: dict[str, Any]) -> Any:
    """The object a `name` or `module.attr` callee refers to in the model file's globals."""
    if isinstance(node, ast.Name) and node.id in scope:
        return scope[node.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return getattr(scope.get(node.value.id), node.attr, None)
    return None


class _GluForm:
    """Symbolic evaluation of a `__call__(self, x)` body into nested tuples:
    ("x",), ("proj", attr, arg), ("half", i, arg), ("glu", activation, gate, up)."""

    def __init__(self, fn: Any) -> None:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        func = tree.body[0]
        if not isinstance(func, ast.FunctionDef) or len(func.args.args) != 2:
            raise _Unsupported("forward is not __call__(self, x)")
        self.self_name = func.args.args[0].arg
        self.env: dict[str, Any] = {func.args.args[1].arg: ("x",)}
        self.scope = fn.__globals__
        self.result: Any = None
        for stmt in func.body:
            self.statement(stmt)
        if self.result is None:
            raise _Unsupported("forward returns nothing recognisable")

    def statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return  # docstring
        if isinstance(stmt, ast.Return) and stmt.value is not None and self.result is None:
            self.result = self.expr(stmt.value)
            return
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and self.result is None:
            target, value = stmt.targets[0], self.expr(stmt.value)
            if isinstance(target, ast.Name):
                self.env[target.id] = value
                return
            if isinstance(target, ast.Tuple) and all(isinstance(t, ast.Name) for t in target.elts):
                if not isinstance(value, list) or len(value) != len(target.elts):
                    raise _Unsupported("tuple assignment from something other than a split")
                for t, v in zip(target.elts, value, strict=True):
                    self.env[t.id] = v  # type: ignore[attr-defined]
                return
        raise _Unsupported(f"statement `{ast.unparse(stmt)}` is not part of a gated MLP")

    def expr(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Name) and node.id in self.env:
            return self.env[node.id]
        if (isinstance(node, ast.Call) and not node.keywords) or _is_split(node):
            return self.call(node)  # type: ignore[arg-type]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left = node.left
            if isinstance(left, ast.Call) and len(left.args) == 1 and not left.keywords:
                act = _GATE_ACTIVATIONS.get(_resolve(left.func, self.scope))
                if act is not None:
                    return ("glu", act, self.expr(left.args[0]), self.expr(node.right))
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
        ):
            value = self.expr(node.value)
            if isinstance(value, list):
                return value[node.slice.value]
        raise _Unsupported(f"expression `{ast.unparse(node)}` is not part of a gated MLP")

    def call(self, node: ast.Call) -> Any:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == self.self_name
            and len(node.args) == 1
        ):
            return ("proj", func.attr, self.expr(node.args[0]))
        if _is_split(node):
            whole = self.expr(node.args[0])
            return [("half", 0, whole), ("half", 1, whole)]
        helper = _GLU_HELPERS.get(_resolve(func, self.scope))
        if helper is not None and len(node.args) == 2:
            return ("glu", helper, self.expr(node.args[0]), self.expr(node.args[1]))
        raise _Unsupported(f"call `{ast.unparse(node)}` is not part of a gated MLP")


def _is_split(node: ast.expr) -> bool:
    """`mx.split(h, 2, axis=-1)`: the two halves of the last axis."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "split"
        and len(node.args) == 2
    ):
        return False
    halves = node.args[1]
    axis = [k.value for k in node.keywords if k.arg == "axis"]
    return (
        isinstance(halves, ast.Constant)
        and halves.value == 2
        and len(axis) == 1
        and ast.unparse(axis[0]) == "-1"
    )


@functools.cache
def _gated_form(cls: type) -> tuple[str, tuple[str, ...], str] | str:
    """(activation, projection attrs feeding the activation, down attr), or why not.

    One attr means one fused gate|up projection, two mean separate gate and up."""
    try:
        result = _GluForm(cls.__call__).result
    except (_Unsupported, AttributeError, OSError, TypeError, SyntaxError) as e:
        return str(e) or "forward source unavailable"
    match result:
        case ("proj", down, ("glu", act, ("proj", gate, ("x",)), ("proj", up, ("x",)))) if (
            gate != up
        ):
            return act, (gate, up), down
        case (
            "proj",
            down,
            ("glu", act, ("half", 0, ("proj", gate_up, ("x",))), ("half", 1, ("proj", gu, ("x",)))),
        ) if gate_up == gu:
            return act, (gate_up,), down
    return "forward is not down(act(gate(x)) * up(x))"


class FusedGatedMLP(Fused):
    """`down(act_packed(gate_up(x)))`, one kernel for the activation."""

    pattern = "dense_mlp"

    def __init__(
        self,
        original: nn.Module,
        gate_up_proj: nn.Module,
        down_proj: nn.Module,
        activation: str,
        source: tuple[tuple[str, ...], tuple[int, ...], str],
    ) -> None:
        super().__init__(original)
        self.gate_up_proj = gate_up_proj
        if len(source[0]) == 2:
            self.holds_stack("gate_up_proj")
        self.down_proj = down_proj
        self.activation = activation
        # (projection attrs, widths, down attr) on the original, to put everything back.
        object.__setattr__(self, "source", source)
        self.note = f"{activation}, {'+'.join(source[0])} -> gate_up_proj"

    def __call__(self, x: mx.array) -> mx.array:
        graph = decode_graph(self, "forward", self.graph_modules(x))
        return self.forward(x) if graph is None else graph(x)

    def graph_modules(self, x: mx.array) -> tuple[nn.Module, ...] | None:
        """The modules a decode graph of `forward` reads for input `x`: with decode graphs
        on, one token per row in eval mode on MLX-CUDA, plain or quantized projections (a
        LoRA or sharded layer holds elementwise ops or collectives); else None."""
        if (
            not decode_graphs_on(self)
            or self.training
            or x.ndim < 2
            or x.shape[-2] != 1
            or not _backend.on_cuda()
        ):
            return None
        gate_up, down = self["gate_up_proj"], self["down_proj"]
        if type(gate_up) in GRAPH_LINEARS and type(down) in GRAPH_LINEARS:
            return (gate_up, down)
        return None

    def forward(self, x: mx.array) -> mx.array:
        """The MLP op by op."""
        h = self["gate_up_proj"](x)
        if self.activation == "silu":
            a = kernels.swiglu_packed(h, rounding="mlx", differentiable=self.training)
        else:
            a = kernels.geglu_packed(
                h,
                approximate=self.activation == "gelu_approx",
                differentiable=self.training,
            )
        return self["down_proj"](a)


class DenseMLP(Pattern):
    name = "dense_mlp"
    description = "gated MLP: gate|up in one projection + fused SwiGLU/GeGLU"

    def matches(self, module: nn.Module, path: str) -> str | None:
        if isinstance(module, Fused) or not _looks_like_mlp(module, path):
            return None
        form = _gated_form(type(module))
        if isinstance(form, str):
            return form
        _, projections, down = form
        missing = [a for a in (*projections, down) if not isinstance(module.get(a), nn.Module)]
        if missing:
            return f"missing submodules {missing}"
        layers = [module[a] for a in projections]
        why = linear_mismatch(layers, DENSE_LINEARS)
        if why is not None:
            return why
        if len(projections) == 1 and layers[0]["weight"].shape[0] % 2:
            return "fused gate|up projection has an odd width"
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        form = _gated_form(type(module))
        assert not isinstance(form, str)
        act, projections, down = form
        layers = [module[a] for a in projections]
        if len(layers) == 1:
            gate_up, widths = layers[0], [layers[0]["weight"].shape[0]]
        else:
            gate_up, widths = fuse_outputs(layers)
        return FusedGatedMLP(module, gate_up, module[down], act, (projections, tuple(widths), down))

    def revert(self, fused: Fused) -> nn.Module:
        assert isinstance(fused, FusedGatedMLP)
        projections, widths, down = fused.source
        original = fused.original
        if len(projections) == 2:
            unfuse_outputs(fused.gate_up_proj, [original[a] for a in projections], widths)
        else:
            setattr(original, projections[0], fused.gate_up_proj)
        setattr(original, down, fused.down_proj)
        return original


def _looks_like_mlp(module: nn.Module, path: str) -> bool:
    """Candidates whose rejection is worth reporting: MLP-ish modules with linear children."""
    name = type(module).__name__.lower()
    last = path.rsplit(".", 1)[-1].lower()
    mlpish = any(s in name for s in ("mlp", "feedforward", "ffn")) or last in (
        "mlp",
        "feed_forward",
        "ffn",
        "shared_expert",
        "shared_experts",
    )
    if mlpish:
        return any(isinstance(v, nn.Module) for v in module.values())
    return not isinstance(_gated_form(type(module)), str)
