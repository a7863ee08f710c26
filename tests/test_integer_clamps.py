"""Clamps between integer layers that clip the codes compute the same values."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_evaluation_form import relu6_planner

from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.onnx_ops.specialise import specialise
from rcompile.passes.integer_clamps import clip_codes
from rcompile.passes.rewrite import EVALUATION_DISABLED_OPTIMIZERS, rewrite
from rcompile.scheme import parse_scheme


@pytest.fixture(scope="module")
def relu6():
    model, _, planner = relu6_planner()
    return model, planner, np.random.default_rng(4).normal(size=(16, 3, 8, 8)).astype(np.float32)


def codes_model(code_type: int, zero_point: int, clamp: str, bounds=()) -> onnx.ModelProto:
    """codes -> DequantizeLinear -> clamp -> QuantizeLinear -> DequantizeLinear -> y, with
    scale 0.25: the values a next layer would read."""
    numpy_type = helper.tensor_dtype_to_np_dtype(code_type)
    constants = [
        numpy_helper.from_array(np.array(0.25, np.float32), "scale"),
        numpy_helper.from_array(np.array(zero_point, numpy_type), "zero"),
        *(numpy_helper.from_array(np.array(b, np.float32), f"b{i}") for i, b in enumerate(bounds)),
    ]
    clamp_inputs = ["v"] + [f"b{i}" for i in range(len(bounds))]
    nodes = [
        helper.make_node("DequantizeLinear", ["codes", "scale", "zero"], ["v"], name="dq"),
        helper.make_node(clamp, clamp_inputs, ["c"], name="clamp"),
        helper.make_node("QuantizeLinear", ["c", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="next"),
    ]
    graph = helper.make_graph(
        nodes,
        "codes",
        [helper.make_tensor_value_info("codes", code_type, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        constants,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def every_code(model: onnx.ModelProto, code_type: int) -> np.ndarray:
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(code_type))
    codes = np.arange(info.min, info.max + 1).astype(info.dtype)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"codes": codes})[0]


@pytest.mark.parametrize(
    ("code_type", "zero_point", "clamp", "bounds"),
    [
        (TensorProto.UINT8, 0, "Clip", (0.0, 6.0)),
        (TensorProto.UINT8, 128, "Clip", (-2.0, 6.0)),
        (TensorProto.UINT8, 128, "Relu", ()),
        (TensorProto.INT8, 0, "Clip", (-1.0, 100.0)),
        (TensorProto.INT8, 3, "Relu", ()),
    ],
)
def test_clipping_codes_gives_every_code_the_same_value(code_type, zero_point, clamp, bounds):
    model = codes_model(code_type, zero_point, clamp, bounds)
    expected = every_code(model, code_type)
    assert clip_codes(model) == 1
    assert [n.op_type for n in model.graph.node] == [
        "Identity",
        "Clip",
        "Identity",
        "DequantizeLinear",
    ]
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(every_code(model, code_type), expected)


def test_bounds_between_codes_are_left_alone():
    model = codes_model(TensorProto.UINT8, 0, "Clip", (0.0, 5.9))
    before = model.SerializeToString()
    assert clip_codes(model) == 0
    assert model.SerializeToString() == before


def test_relu6_network_at_dfp8_clips_codes_and_matches_the_written_model(relu6):
    model, planner, x = relu6
    plan = planner.plan(parse_scheme("dfp8"))
    written = rewrite(model, plan).model
    evaluation = rewrite(model, plan, evaluation=True).model
    specialise(evaluation)
    assert clip_codes(evaluation) == 2
    expected = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(
        evaluation.SerializeToString(),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(EVALUATION_DISABLED_OPTIMIZERS),
    )
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected.run(None, {"x": x})[0])
