"""The blocked DFP rounding of the evaluation form: the reference quantizer bit for bit in
onnxruntime, alone and after convolutions it fuses into, in plain and blocked layouts."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.formats import DFP
from rcompile.graph import Names
from rcompile.lowering.blocked_rounding import BlockedRounding, fits, from_zero
from rcompile.onnx_ops import IR_VERSION, OPSET

FORMATS = [DFP(8, 4), DFP(8, 3, False), DFP(4, 0), DFP(16, 12), DFP(6, -3, False), DFP(2, 1)]


def model_of(channels: int, step: float, low: float, high: float, convolution: bool):
    """x -> [identity 1x1 convolution ->] blocked rounding -> y, with static shapes so that
    onnxruntime runs the convolution blocked when `channels` is a multiple of its block."""
    graph = helper.make_graph(
        [],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, channels, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, channels, 5, 7])],
    )
    names = Names(graph)
    source = "x"
    if convolution:
        weights = np.eye(channels).reshape(channels, channels, 1, 1)
        graph.initializer.append(numpy_helper.from_array(weights.astype(np.float32), "w"))
        graph.node.append(helper.make_node("Conv", ["x", "w"], ["c"], name="conv"))
        source = "c"
    rounding = BlockedRounding(graph, names)
    graph.node.extend(rounding.nodes(step, low, high, source, "y", "q", (channels, 2), convolution))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def hard_cases(fmt: DFP, shape: tuple[int, ...]) -> np.ndarray:
    """Values around every code: ties, just off ties, zeros of both signs, far outside."""
    rng = np.random.default_rng(fmt.bw * 100 + fmt.fl)
    codes = rng.integers(fmt.code_min - 3, fmt.code_max + 4, size=shape).astype(np.float64)
    offsets = rng.choice([0.0, 0.5, -0.5, 0.49999, 0.50001, 0.25, -1e-9], size=shape)
    values = ((codes + offsets) * fmt.step).astype(np.float32)
    values.flat[:4] = [0.0, -0.0, 1e30, -1e30]
    return values


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("channels", [3, 16])
def test_blocked_rounding_is_the_reference_quantizer(fmt, channels):
    model = model_of(channels, fmt.step, fmt.min, fmt.max, convolution=False)
    x = hard_cases(fmt, (2, channels, 5, 7))
    result = run(model, x)
    np.testing.assert_array_equal(result, fmt.quantize(x))
    assert not np.signbit(result[result == 0]).any()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("channels", [3, 16, 32])
@pytest.mark.parametrize("clamp", [None, 2, 3], ids=["format-range", "even-clamp", "odd-clamp"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "alone"])
def test_after_a_convolution_blocked_rounding_is_the_reference_quantizer(
    fmt, channels, clamp, fused
):
    """Both forms after a convolution: the one-pass form (a HardSigmoid, then a
    1x1 depthwise convolution with a Relu) for outputs clamped at 0 and at an even code, the general
    one otherwise; onnxruntime fuses the first node into the convolution unless the
    convolution's output is also read elsewhere (here: a graph output). A clamp to codes in
    the range is the reference quantizer followed by the clamp."""
    low, high = fmt.min, fmt.max
    if clamp is not None:
        low, high = max(low, 0.0), min(high, fmt.step * (fmt.code_max // 4 * 2 + clamp - 2))
    model = model_of(channels, fmt.step, low, high, convolution=True)
    if not fused:
        model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    x = hard_cases(fmt, (2, channels, 5, 7))
    result = run(model, x)
    np.testing.assert_array_equal(result, np.clip(fmt.quantize(x), low, high))
    assert not np.signbit(result[result == 0]).any()
    kinds = {node.op_type for node in model.graph.node}
    assert ("HardSigmoid" in kinds) == from_zero(fmt.step, low, high)


def test_formats_whose_constants_leave_float32_take_other_forms():
    assert fits(DFP(16, 0)) and fits(DFP(8, 126)) and fits(DFP(8, -100))
    assert not fits(DFP(24, 0))
    assert not fits(DFP(8, -104))
