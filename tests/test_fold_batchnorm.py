"""BatchNormalization folding: which patterns fold, that the numbers stay the same, and what is
left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.passes.fold_batchnorm import fold_batchnorm

F32 = np.float32
OPSET = 21
IR_VERSION = 10  # what opset 21 needs; onnx's default may be newer than onnxruntime reads
CHANNELS = 4


def constant(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=F32), name)


def bn_parameters(rng: np.random.Generator, channels: int = CHANNELS) -> list[onnx.TensorProto]:
    """Gamma, beta, mean and variance far enough from 1 and 0 that a wrong fold shows."""
    return [
        constant("gamma", rng.uniform(0.5, 2.0, channels)),
        constant("beta", rng.normal(size=channels)),
        constant("mean", rng.normal(size=channels)),
        constant("var", rng.uniform(0.2, 3.0, channels)),
    ]


def batchnorm(source: str, output: str = "y") -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization", [source, "gamma", "beta", "mean", "var"], [output], epsilon=1e-3
    )


def make_model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def image_input(channels: int = 3) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 6, 6])


def any_output(name: str = "y", rank: int = 4) -> onnx.ValueInfoProto:
    """An output of known rank whose dimensions shape inference fills in."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)


def conv_bn_model(seed: int = 0, group: int = 1) -> onnx.ModelProto:
    """Conv (3x3, pad 1, with bias) then BatchNormalization."""
    rng = np.random.default_rng(seed)
    in_channels = CHANNELS if group > 1 else 3
    weight = rng.normal(size=(CHANNELS, in_channels // group, 3, 3))
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], group=group
    )
    return make_model(
        [conv, batchnorm("c")],
        [image_input(in_channels)],
        [any_output()],
        [constant("w", weight), constant("b", rng.normal(size=CHANNELS)), *bn_parameters(rng)],
    )


def gemm_bn_model(
    trans_b: int, alpha: float = 1.0, beta: float = 1.0, bias_shape=(CHANNELS,), seed: int = 0
) -> onnx.ModelProto:
    """Gemm (5 features to CHANNELS, bias of `bias_shape` or none) then BatchNormalization."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(CHANNELS, 5) if trans_b else (5, CHANNELS))
    constants = [constant("w", weight), *bn_parameters(rng)]
    inputs = ["x", "w"]
    if bias_shape is not None:
        constants.append(constant("b", rng.normal(size=bias_shape)))
        inputs.append("b")
    gemm = helper.make_node(
        "Gemm", inputs, ["c"], name="gemm", transB=trans_b, alpha=alpha, beta=beta
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])
    return make_model([gemm, batchnorm("c")], [x], [any_output(rank=2)], constants)


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """All outputs, with onnxruntime's own fusions off so the reference really runs the BN."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})


def sample(model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [3] + [dim.dim_value for dim in dims[1:]]
    return np.random.default_rng(seed).normal(size=shape).astype(F32)


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_same_outputs(original: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    x = sample(original)
    for want, got in zip(run(original, x), run(folded, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


GEMMS = {
    "transB=1": dict(trans_b=1),
    "transB=0": dict(trans_b=0),
    "transB=1 alpha beta": dict(trans_b=1, alpha=0.5, beta=2.0),
    "transB=0 alpha beta": dict(trans_b=0, alpha=-1.5, beta=0.25),
    "no bias": dict(trans_b=1, alpha=0.5, bias_shape=None),
    "bias (1, N)": dict(trans_b=0, beta=3.0, bias_shape=(1, CHANNELS)),
}


# --- what folds -----------------------------------------------------------------------------


def test_conv_batchnorm_is_folded_into_the_conv():
    result = fold_batchnorm(conv_bn_model())
    assert result.modified
    assert op_types(result.model) == ["Conv"]


@pytest.mark.parametrize("group", [1, CHANNELS], ids=["dense", "depthwise"])
def test_folded_conv_computes_what_conv_and_batchnorm_computed(group):
    model = conv_bn_model(group=group)
    assert_same_outputs(model, fold_batchnorm(model).model)


@pytest.mark.parametrize("options", GEMMS.values(), ids=GEMMS.keys())
def test_gemm_batchnorm_is_folded_into_the_gemm(options):
    result = fold_batchnorm(gemm_bn_model(**options))
    assert result.modified
    assert op_types(result.model) == ["Gemm"]


@pytest.mark.parametrize("options", GEMMS.values(), ids=GEMMS.keys())
def test_folded_gemm_computes_what_gemm_and_batchnorm_computed(options):
    model = gemm_bn_model(**options)
    assert_same_outputs(model, fold_batchnorm(model).model)


def test_gemm_bias_given_as_a_row_folds_to_a_per_channel_bias():
    folded = fold_batchnorm(gemm_bn_model(trans_b=0, bias_shape=(1, CHANNELS))).model
    bias = next(t for t in folded.graph.initializer if t.name == folded.graph.node[0].input[2])
    assert list(bias.dims) == [CHANNELS]


def test_folded_layer_writes_the_batchnorm_output():
    folded = fold_batchnorm(conv_bn_model()).model
    assert list(folded.graph.node[0].output) == ["y"]
    assert [value.name for value in folded.graph.output] == ["y"]


def test_folded_model_passes_the_full_checker():
    for model in (conv_bn_model(), gemm_bn_model(trans_b=0, alpha=0.5, beta=2.0)):
        onnx.checker.check_model(fold_batchnorm(model).model, full_check=True)


def test_folding_leaves_no_unused_initializers():
    folded = fold_batchnorm(conv_bn_model()).model
    read = {name for node in folded.graph.node for name in node.input}
    assert {tensor.name for tensor in folded.graph.initializer} <= read


def test_folding_keeps_a_weight_another_layer_shares():
    """Two Convs read the same weight; only the first is followed by a BatchNormalization."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        batchnorm("c"),
        helper.make_node("Conv", ["x", "w", "b"], ["z"], name="other", pads=[1, 1, 1, 1]),
    ]
    constants = [
        constant("w", rng.normal(size=(CHANNELS, 3, 3, 3))),
        constant("b", rng.normal(size=CHANNELS)),
        *bn_parameters(rng),
    ]
    model = make_model(nodes, [image_input()], [any_output("y"), any_output("z")], constants)
    result = fold_batchnorm(model)
    assert result.modified
    assert op_types(result.model) == ["Conv", "Conv"]
    assert_same_outputs(model, result.model)


def test_two_batchnorms_in_one_model_are_both_folded():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        batchnorm("c1", "n1"),
        helper.make_node("Relu", ["n1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        batchnorm("c2", "y"),
    ]
    constants = [
        constant("w1", rng.normal(size=(CHANNELS, 3, 3, 3))),
        constant("w2", rng.normal(size=(CHANNELS, CHANNELS, 3, 3))),
        *bn_parameters(rng),
    ]
    model = make_model(nodes, [image_input()], [any_output()], constants)
    result = fold_batchnorm(model)
    assert op_types(result.model) == ["Conv", "Relu", "Conv"]
    assert_same_outputs(model, result.model)


# --- what is left alone ---------------------------------------------------------------------


def test_batchnorm_whose_input_feeds_two_nodes_is_left_alone():
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        batchnorm("c"),
        helper.make_node("Relu", ["c"], ["z"], name="relu"),
    ]
    constants = [constant("w", rng.normal(size=(CHANNELS, 3, 3, 3))), *bn_parameters(rng)]
    model = make_model(nodes, [image_input()], [any_output("y"), any_output("z")], constants)
    result = fold_batchnorm(model)
    assert not result.modified
    assert result.model.SerializeToString() == model.SerializeToString()


def test_batchnorm_whose_input_is_a_graph_output_is_left_alone():
    model = conv_bn_model()
    model.graph.output.append(any_output("c"))
    result = fold_batchnorm(model)
    assert not result.modified
    assert "BatchNormalization" in op_types(result.model)


@pytest.mark.parametrize("producer", ["Relu", "MatMul"])
def test_batchnorm_after_a_layer_other_than_conv_or_gemm_is_left_alone(producer):
    rng = np.random.default_rng(6)
    if producer == "Relu":
        first = helper.make_node("Relu", ["x"], ["c"], name="relu")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CHANNELS])
        constants = bn_parameters(rng)
    else:
        first = helper.make_node("MatMul", ["x", "w"], ["c"], name="matmul")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])
        constants = [constant("w", rng.normal(size=(5, CHANNELS))), *bn_parameters(rng)]
    model = make_model([first, batchnorm("c")], [x], [any_output(rank=2)], constants)
    result = fold_batchnorm(model)
    assert not result.modified
    assert op_types(result.model) == [producer, "BatchNormalization"]


def test_batchnorm_with_parameters_from_graph_inputs_is_left_alone():
    model = conv_bn_model()
    gamma = next(t for t in model.graph.initializer if t.name == "gamma")
    model.graph.initializer.remove(gamma)
    model.graph.input.append(helper.make_tensor_value_info("gamma", TensorProto.FLOAT, [CHANNELS]))
    result = fold_batchnorm(model)
    assert not result.modified
    assert op_types(result.model) == ["Conv", "BatchNormalization"]


def test_model_without_batchnorm_is_not_modified():
    model = fold_batchnorm(conv_bn_model()).model
    result = fold_batchnorm(model)
    assert not result.modified
    assert result.model.SerializeToString() == model.SerializeToString()


# --- the input model ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [conv_bn_model(), gemm_bn_model(trans_b=0, alpha=0.5, beta=2.0)],
    ids=["conv", "gemm"],
)
def test_input_model_is_not_mutated(model):
    before = model.SerializeToString()
    fold_batchnorm(model)
    assert model.SerializeToString() == before
