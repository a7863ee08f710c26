"""A small builder for ONNX function bodies written from standard ops.

`FunctionBody` names intermediate values itself, so a body reads as a sequence of
expressions. Constants that depend on the node's attributes are built from `Constant` nodes
with attribute references; onnxruntime folds them once it has inlined the function.

Given the attributes' values (`bound`), the same code builds the body of one node with
those constants already folded (NumPy computes them as the ops would), for callers that
inline the quantizers themselves.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "ai.rcompile"
DOMAIN_VERSION = 1
OPSET = 21
# The IR version of OPSET; model-local function overloads need at least 10.
IR_VERSION = 10

# The powers of two 2**-149 .. 2**127, then +inf for 2**128, indexed by exponent + 149.
# A Gather from this table is exact on every backend (no backend promises that of Pow).
POW2_OFFSET = 149
POW2_TABLE = np.array(
    [math.ldexp(1.0, k) for k in range(-POW2_OFFSET, 128)] + [math.inf], dtype=np.float32
)
INV_LN2 = 1.0 / math.log(2.0)


class FunctionBody:
    """Accumulates the nodes of one function body, with generated value names. With
    `bound` (attribute values), ops whose inputs are all constants are computed instead."""

    def __init__(self, bound: dict[str, int | bytes] | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self._table: str | None = None
        self._bound = bound
        self._known: dict[str, np.ndarray] = {}
        self._emitted: set[str] = set()

    def op(self, op_type: str, *inputs: str, **attributes: object) -> str:
        """Append a node with one output and return that output's name."""
        self._count += 1
        output = f"t{self._count}_{op_type.lower()}"
        if (
            self._bound is not None
            and op_type in _FOLDING
            and all(i in self._known for i in inputs)
        ):
            values = [self._known[i] for i in inputs]
            self._known[output] = np.asarray(_FOLDING[op_type](*values, **attributes))
            return output
        for name in inputs:
            if name in self._known and name not in self._emitted:
                tensor = numpy_helper.from_array(self._known[name])
                self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
                self._emitted.add(name)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, value: float | int | str | np.ndarray) -> str:
        """A constant: a Python float is float32, an int is int64, a str is a string."""
        if self._bound is not None:
            self._count += 1
            output = f"t{self._count}_constant"
            self._known[output] = _array(value)
            return output
        if isinstance(value, np.ndarray):
            return self.op("Constant", value=numpy_helper.from_array(value))
        if isinstance(value, int):
            return self.op("Constant", value_int=int(value))
        if isinstance(value, float):
            return self.op("Constant", value_float=value)
        return self.op("Constant", value_string=value)

    def attribute(self, name: str, kind: str) -> str:
        """A scalar constant taken from the node attribute `name` (kind 'int' or 'string')."""
        if self._bound is not None:
            value = self._bound[name]
            return self.const(value.decode() if isinstance(value, bytes) else value)
        self._count += 1
        output = f"t{self._count}_{name}"
        node = helper.make_node("Constant", [], [output])
        reference = onnx.AttributeProto()
        reference.name = f"value_{kind}"
        reference.ref_attr_name = name
        reference.type = onnx.AttributeProto.INT if kind == "int" else onnx.AttributeProto.STRING
        node.attribute.append(reference)
        self.nodes.append(node)
        return output

    def pow2(self, exponent: str) -> str:
        """2**exponent (int64 scalar or tensor) as float32, from the exact table."""
        if self._table is None:
            self._table = self.const(POW2_TABLE)
        index = self.op("Add", exponent, self.const(POW2_OFFSET))
        return self.op("Gather", self._table, index)

    def to_int(self, value: str) -> str:
        return self.op("Cast", value, to=TensorProto.INT64)

    def to_float(self, value: str) -> str:
        return self.op("Cast", value, to=TensorProto.FLOAT)

    def floor_log2(self, value: str, low: str, high: str) -> str:
        """floor(log2(value)) as int64, exact for value in [2**low, 2**(high+1)).

        Log gives an estimate that can be one off near a power of two; the estimate is
        clipped into [low, high] (which also tames NaN) and corrected by comparing value with
        the powers of two themselves.
        """
        estimate = self.op("Floor", self.op("Mul", self.op("Log", value), self.const(INV_LN2)))
        estimate = self.op("Clip", self.to_int(estimate), low, high)
        too_high = self.to_int(self.op("Greater", self.pow2(estimate), value))
        estimate = self.op("Sub", estimate, too_high)
        next_power = self.pow2(self.op("Add", estimate, self.const(1)))
        too_low = self.to_int(self.op("LessOrEqual", next_power, value))
        return self.op("Add", estimate, too_low)

    def round(self, value: str, mode: str, dtype=np.float32) -> str:
        """`value` rounded to integers by `mode`, as `rcompile.formats.rounding` does:
        Round (half to even), Floor, or for `up` and `away` the floor plus whether the
        fraction reaches one half, with the sign of the value put back (of zeros too)."""
        if mode == "even":
            return self.op("Round", value)
        if mode == "floor":
            return self.op("Floor", value)
        source = self.op("Abs", value) if mode == "away" else value
        down = self.op("Floor", source)
        half = self.const(np.array(0.5, dtype))
        reaches = self.op("GreaterOrEqual", self.op("Sub", source, down), half)
        rounded = self.op("Add", down, self.op("Cast", reaches, to=_TENSOR_TYPE[np.dtype(dtype)]))
        return self.op("Mul", self.op("Abs", rounded), self.sign_with_zeros(value, dtype))

    def sign_with_zeros(self, value: str, dtype=np.float32) -> str:
        """-1 where value has its sign bit set (-0 included, which 1/value tells), else +1."""
        zero = self.const(np.array(0.0, dtype))
        negative = self.op(
            "Or",
            self.op("Less", value, zero),
            self.op("Less", self.op("Reciprocal", value), zero),
        )
        twice = self.op(
            "Mul",
            self.op("Cast", negative, to=_TENSOR_TYPE[np.dtype(dtype)]),
            self.const(np.array(2.0, dtype)),
        )
        return self.op("Sub", self.const(np.array(1.0, dtype)), twice)

    def sign_of(self, value: str) -> str:
        """-1.0 where value < 0, else +1.0 (so -0 counts as positive).

        Signs are applied as products, which keep zeros signed; `Where` cannot be trusted to
        (onnxruntime's CPU Where turns a selected -0 into +0).
        """
        negative = self.to_float(self.op("Less", value, self.const(0.0)))
        return self.op("Sub", self.const(1.0), self.op("Mul", negative, self.const(2.0)))

    def function(
        self, name: str, attributes: list[str], output: str, overload: str = ""
    ) -> onnx.FunctionProto:
        """Close the body: the function's input is `X`, its output the value `output`."""
        if self.nodes[-1].output[0] == output:
            self.nodes[-1].output[0] = "Y"
        else:
            self.nodes.append(helper.make_node("Identity", [output], ["Y"]))
        return helper.make_function(
            DOMAIN,
            name,
            ["X"],
            ["Y"],
            self.nodes,
            [helper.make_opsetid("", OPSET)],
            attributes=attributes,
            overload=overload,
        )


_TENSOR_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def _array(value: float | int | str | np.ndarray) -> np.ndarray:
    """A constant as `const` types it."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, int):
        return np.array(value, np.int64)
    if isinstance(value, float):
        return np.array(value, np.float32)
    return np.array(value, object)


def _cast(value: np.ndarray, to: int) -> np.ndarray:
    return value.astype(helper.tensor_dtype_to_np_dtype(to))


# NumPy's result for each op a bound body folds: the same values and types as the op's.
_FOLDING = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Neg": np.negative,
    "Min": np.minimum,
    "Equal": lambda a, b: a == b,
    "Where": np.where,
    "Gather": np.take,
    "Cast": _cast,
    "Not": np.logical_not,
    "And": np.logical_and,
}
