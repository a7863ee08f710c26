"""Constants as exporters give them and as a lowering leaves them: Constant nodes become
initializers (so a Paddle export's weights and BatchNormalization statistics are found,
quantized and folded), equal initializers are stored once, a BatchNormalization vector of
one repeated value is made by a ConstantOfShape node, and the written model keeps only the
value shapes its input declared."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from test_blocked_rounding import run
from test_corpus import LEVELS

import rcompile
from rcompile.graph import values_read
from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.passes.constants_as_initializers import constants_as_initializers
from rcompile.passes.repeated_constants import MIN_VALUES, repeated_constants
from rcompile.passes.share_constants import share_constants


def constant(name: str, values) -> onnx.NodeProto:
    array = np.asarray(values, np.float32)
    return helper.make_node(
        "Constant", [], [name], name=f"{name}_node", value=numpy_helper.from_array(array)
    )


def paddle_like() -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Relu, every parameter a Constant node, as Paddle
    exports them; and one Constant (value_floats) no node reads."""
    rng = np.random.default_rng(3)
    nodes = [
        constant("w", rng.normal(size=(4, 3, 3, 3))),
        constant("scale", rng.uniform(0.5, 2, size=4)),
        constant("shift", rng.normal(size=4)),
        constant("mean", rng.normal(size=4)),
        constant("var", rng.uniform(0.5, 2, size=4)),
        helper.make_node("Constant", [], ["unread"], name="unread", value_floats=[1.0, 2.0]),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["b"], name="bn"
        ),
        helper.make_node("Relu", ["b"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def test_constant_nodes_become_initializers_of_the_same_name_and_values():
    model = paddle_like()
    result = constants_as_initializers(model)
    assert result.modified
    assert [node.op_type for node in result.model.graph.node] == [
        "Conv",
        "BatchNormalization",
        "Relu",
    ]
    names = {tensor.name for tensor in result.model.graph.initializer}
    assert names == {"w", "scale", "shift", "mean", "var", "unread"}
    x = np.random.default_rng(4).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(result.model, x), run(model, x))


def test_a_paddle_like_model_compiles_to_quantized_weights_with_nothing_left_unread(tmp_path):
    """The Constant weights are quantized and the FP32 ones gone, the BatchNormalization
    folded: no FP32 copy of a parameter and nothing unread stays in the written model."""
    model = paddle_like()
    x = np.random.default_rng(5).normal(size=(16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    written = rcompile.compile(model, "dfp8", tmp_path / "calib.npz").model
    graph = written.graph
    read = {name for node in graph.node for name in values_read(node)}
    read |= {value.name for value in graph.output}
    assert all(tensor.name in read for tensor in graph.initializer)
    assert all(any(out in read for out in node.output) for node in graph.node)
    floats = [t for t in graph.initializer if t.data_type == TensorProto.FLOAT]
    assert all(np.prod(t.dims) <= 4 for t in floats)
    assert not any(node.op_type == "Constant" and node.output[0] == "w" for node in graph.node)
    assert np.corrcoef(run(written, x).ravel(), run(model, x).ravel())[0, 1] > 0.99


def test_equal_initializers_are_stored_once_and_their_readers_share_it():
    ones = np.ones(4, np.float32)
    nodes = [
        helper.make_node("Add", ["x", "a"], ["s"], name="add"),
        helper.make_node("Mul", ["s", "b"], ["m"], name="mul"),
        helper.make_node("Sub", ["m", "c"], ["y"], name="sub"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [
            numpy_helper.from_array(ones, "a"),
            numpy_helper.from_array(ones, "b"),
            numpy_helper.from_array(2 * ones, "c"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    result = share_constants(model)
    assert result.modified
    assert [t.name for t in result.model.graph.initializer] == ["a", "c"]
    assert [list(node.input) for node in result.model.graph.node] == [
        ["x", "a"],
        ["s", "a"],
        ["m", "c"],
    ]
    assert not share_constants(result.model).modified


def batch_norm_of_repeated_values(channels: int) -> onnx.ModelProto:
    """x -> BatchNormalization(scale 2, bias 0.5, mean 0, variance 1) -> Add(0.5 again): the
    Add reads the bias vector too."""
    full = {
        name: np.full(channels, value, np.float32)
        for name, value in (
            ("scale", 2.0),
            ("bias", 0.5),
            ("mean", 0.0),
            ("var", 1.0),
            ("also", 0.5),
        )
    }
    full["also"][-1] = 0.25
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["x", "scale", "bias", "mean", "var"],
            ["b"],
            name="bn",
            epsilon=0.0,
        ),
        helper.make_node("Add", ["b", "bias"], ["s"], name="add"),
        helper.make_node("Mul", ["s", "also"], ["y"], name="mul"),
    ]
    shape = ["N", channels, channels]  # the Add broadcasts its vector on the last axis
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(value, name) for name, value in full.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def test_a_batchnorm_vector_of_one_value_is_made_by_constant_of_shape_at_every_level():
    model = batch_norm_of_repeated_values(MIN_VALUES)
    result = repeated_constants(model)
    assert result.modified
    graph = result.model.graph
    fills = [node for node in graph.node if node.op_type == "ConstantOfShape"]
    # scale, mean and variance; the bias is read by the Add too, `also` is not one value.
    assert sorted(node.output[0] for node in fills) == ["mean", "scale", "var"]
    assert graph.node[: len(fills)] == fills
    assert {t.name for t in graph.initializer} == {"bias", "also", "scale_shape"}
    assert result.model.ByteSize() < model.ByteSize()
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(6).normal(size=(2, MIN_VALUES, MIN_VALUES)).astype(np.float32)
    expected = run(model, x)
    for level in LEVELS:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(
            result.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)


def test_short_vectors_stay_initializers():
    assert not repeated_constants(batch_norm_of_repeated_values(MIN_VALUES - 1)).modified


def test_the_written_model_keeps_only_the_shapes_its_input_declared(tmp_path):
    """Import infers a shape for every value; the file written keeps the input's own."""
    model = paddle_like()
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    x = np.random.default_rng(7).normal(size=(16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    written = rcompile.compile(model, "dfp8", tmp_path / "calib.npz").model
    assert [value.name for value in written.graph.value_info] == ["c"]
