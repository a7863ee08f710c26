"""Bias correction: after it, a layer with quantized weights has the FP32 layer's mean output
in every channel on the calibration data (Conv, grouped and depthwise Conv, Gemm with either
weight layout); layers it cannot correct are left alone; the CLI switch records itself in
the model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import lenet_runs
from onnx import TensorProto, helper, numpy_helper

from rcompile.formats import DFP
from rcompile.graph import initializers
from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.passes.bias_correction import BiasCorrector, mean_axes, with_biases
from rcompile.passes.layers import find_layers
from rcompile.passes.store_weights import quantize_values

COARSE = DFP(3, 2)  # codes -4..3 in steps of 1/4: a large, biased rounding error


def single_layer(op_type: str, **attributes) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> layer(w, b) -> y with weights of uneven magnitude, and inputs of per-channel
    means far from zero."""
    rng = np.random.default_rng(len(op_type) + len(attributes))
    channels, outputs = 4, 8
    if op_type == "Conv":
        group = attributes.get("group", 1)
        w = rng.uniform(-0.6, 0.6, size=(outputs, channels // group, 3, 3))
        # Constant over positions: every window sees the channel's mean, so the correction,
        # exact in expectation, is exact here.
        samples = rng.normal(loc=np.arange(1, channels + 1), size=(32, channels))
        x = np.broadcast_to(samples[:, :, None, None], (32, channels, 5, 5))
        b_shape, x_shape, y_shape = (outputs,), ["N", channels, 5, 5], ["N", outputs, 3, 3]
    else:
        w = rng.uniform(
            -0.6, 0.6, size=(outputs, channels) if attributes.get("transB") else (channels, outputs)
        )
        x = rng.normal(loc=np.arange(1, channels + 1), size=(32, channels))
        b_shape, x_shape, y_shape = (outputs,), ["N", channels], ["N", outputs]
    parameters = [
        numpy_helper.from_array(w.astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=b_shape).astype(np.float32), "b"),
    ]
    nodes = [helper.make_node(op_type, ["x", "w", "b"], ["y"], name="layer", **attributes)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        parameters,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model, x.astype(np.float32)


def output_means(model: onnx.ModelProto, x: np.ndarray, axis: int) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0].astype(np.float64)
    return np.moveaxis(y, axis, 0).reshape(y.shape[axis], -1).mean(axis=1)


def with_quantized_weights(model: onnx.ModelProto, formats, axis) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    weights = initializers(result.graph)["w"]
    for tensor in result.graph.initializer:
        if tensor.name == "w":
            tensor.CopyFrom(numpy_helper.from_array(quantize_values(weights, formats, axis), "w"))
    return result


@pytest.mark.parametrize(
    ("op_type", "attributes"),
    [
        ("Conv", {}),
        ("Conv", {"group": 2}),
        ("Conv", {"group": 4}),  # depthwise in its input channels
        ("Gemm", {}),
        ("Gemm", {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ],
)
def test_corrected_quantized_layers_keep_the_fp32_channel_means(op_type, attributes):
    model, x = single_layer(op_type, **attributes)
    layers = find_layers(model)
    axis = 1
    (layer,) = layers
    channel_means = np.moveaxis(x, mean_axes(model, layers)["x"], 0).reshape(x.shape[1], -1)
    means = {"x": channel_means.mean(axis=1, dtype=np.float64)}
    formats = (COARSE,) * initializers(model.graph)["w"].shape[layer.weight_axis]
    bias = BiasCorrector(model, means)(layer, formats)
    assert bias is not None and bias.dtype == np.float32
    fp32 = output_means(model, x, axis)
    plain = output_means(with_quantized_weights(model, formats, layer.weight_axis), x, axis)
    corrected = with_biases(model, {"b": bias})
    corrected = output_means(with_quantized_weights(corrected, formats, layer.weight_axis), x, axis)
    assert np.abs(plain - fp32).max() > 0.05
    np.testing.assert_allclose(corrected, fp32, atol=1e-4)


def test_a_layer_without_a_bias_or_sharing_it_is_left_alone():
    model, _ = single_layer("Conv")
    shared = onnx.ModelProto()
    shared.CopyFrom(model)
    shared.graph.node.append(helper.make_node("Identity", ["b"], ["b_copy"], name="reader"))
    shared.graph.output.append(helper.make_tensor_value_info("b_copy", TensorProto.FLOAT, [8]))
    layers = find_layers(shared)
    assert mean_axes(shared, layers) == {}
    means = {"x": np.ones(4)}
    assert BiasCorrector(shared, means)(layers[0], (COARSE,)) is None
    assert BiasCorrector(model, means)(find_layers(model)[0], ()) is None


def test_the_cli_switch_corrects_lenets_biases_and_records_itself(tmp_path):
    """`--bias-correction` changes the quantized biases and says so in the model's options;
    it lifts LeNet-5 with power-of-two weights (96.5 % to 96.9 % top-1, FP32 97.9 %), and
    the FP32 score it is measured against is the uncorrected model's."""
    runs = lenet_runs(tmp_path, ("--no-bias-correction", "--bias-correction"), "--scheme", "pow2")
    on, off = runs["--bias-correction"], runs["--no-bias-correction"]
    assert on.fp32_top1 == off.fp32_top1
    assert on.top1 > off.top1
    assert on.options["bias_correction"] is True
    assert off.options["bias_correction"] is False
    written = {flag: run.model for flag, run in runs.items()}
    biases = [
        {k: v for k, v in initializers(model.graph).items() if "bias" in k}
        for model in written.values()
    ]
    assert any(not np.array_equal(biases[0][k], biases[1].get(k)) for k in biases[0])
