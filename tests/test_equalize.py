"""Cross-layer equalisation: which convolution pairs it rescales (through ReLU, clips,
zero padding and pooling; grouped and depthwise second layers), that the FP32 function stays
within float tolerance, that each pair's channel ranges come out equal, and that the CLI
switch records itself and keeps LeNet-5 bit-true."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import lenet_runs, make_model, rcompile_run
from onnx import TensorProto, helper, numpy_helper

from rcompile.graph import initializers
from rcompile.passes.equalize import equalize_layers, pairs

CHANNELS = 6


def chain(*between: tuple[str, dict], group: int = 1, layers: int = 2, seed: int = 0):
    """x -> conv0 -> [between] -> conv1 (-> [between] -> conv2 ...) -> y, with output
    channels of very different ranges, so that equalisation has work to do. `between`:
    (op type, attributes, with `inputs` for its constant inputs: a Clip's bounds, a Pad's
    pads)."""
    rng = np.random.default_rng(seed)
    nodes, parameters, source = [], [], "x"
    for index in range(layers):
        inputs = 3 if index == 0 else CHANNELS
        per_group = inputs if index == 0 else inputs // group
        spread = np.exp(rng.uniform(-3, 3, size=(CHANNELS, 1, 1, 1)))
        weight = rng.normal(size=(CHANNELS, per_group, 3, 3)) * spread
        parameters += [
            numpy_helper.from_array(weight.astype(np.float32), f"w{index}"),
            numpy_helper.from_array(rng.normal(size=CHANNELS).astype(np.float32), f"b{index}"),
        ]
        attributes = {"pads": [1, 1, 1, 1]}
        if index > 0:
            attributes["group"] = group
        output = f"c{index}"
        nodes.append(
            helper.make_node(
                "Conv", [source, f"w{index}", f"b{index}"], [output], f"conv{index}", **attributes
            )
        )
        source = output
        if index == layers - 1:
            break
        for position, (op_type, options) in enumerate(between):
            options = dict(options)
            inputs = [source]
            for input_index, value in enumerate(options.pop("inputs", ())):
                name = f"constant{index}_{position}_{input_index}"
                inputs.append(name)
                parameters.append(numpy_helper.from_array(value, name))
            output = f"a{index}_{position}"
            nodes.append(helper.make_node(op_type, inputs, [output], output, **options))
            source = output
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["n", "c", "h", "w"])],
        parameters,
    )


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def channel_ranges(model: onnx.ModelProto, group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """conv0's output channel ranges and conv1's input channel ranges."""
    values = initializers(model.graph)
    first, second = values["w0"], values["w1"]
    grouped = np.abs(second).reshape(group, CHANNELS // group, second.shape[1], -1)
    return np.abs(first).reshape(CHANNELS, -1).max(axis=1), grouped.max(axis=(1, 3)).reshape(-1)


RELU6 = ("Clip", {"inputs": (np.float32(0), np.float32(6))})
PAD = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
CASES = {
    "direct": ((), 1),
    "relu": ((("Relu", {}),), 1),
    "relu6, zero padding, depthwise": ((RELU6, ("Pad", {"inputs": (PAD,)})), 6),
    "clip both ways, grouped": ((("Clip", {"inputs": (np.float32(-1), np.float32(3))}),), 2),
    "relu, max pool": ((("Relu", {}), ("MaxPool", {"kernel_shape": [2, 2]})), 1),
    "average pool, relu6": ((("AveragePool", {"kernel_shape": [2, 2]}), RELU6), 3),
}


@pytest.mark.parametrize("case", CASES)
def test_an_equalised_pair_keeps_the_fp32_function_and_equal_ranges(case):
    between, group = CASES[case]
    model = chain(*between, group=group)
    assert len(pairs(model.graph)) == 1
    before = channel_ranges(model, group)
    result = equalize_layers(model)
    assert result.modified
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32) * 4
    expected = run(model, x)
    np.testing.assert_allclose(
        run(result.model, x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )
    first, second = channel_ranges(result.model, group)
    np.testing.assert_allclose(first, second, rtol=1e-5)
    np.testing.assert_allclose(first, np.sqrt(before[0] * before[1]), rtol=1e-5)
    assert "Clip" not in [node.op_type for node in result.model.graph.node]


def test_a_clip_becomes_per_channel_bounds_and_its_shared_constants_go():
    result = equalize_layers(chain(RELU6, layers=2)).model
    ops = [node.op_type for node in result.graph.node]
    assert ops == ["Conv", "Relu", "Min", "Conv"]
    values = initializers(result.graph)
    (bounds,) = [v for k, v in values.items() if k.endswith("_bounds")]
    assert bounds.shape == (CHANNELS, 1, 1) and len(np.unique(bounds)) == CHANNELS
    assert not any(name.startswith("constant") for name in values)


def test_a_chain_of_three_settles_with_every_pair_equal():
    model = chain(("Relu", {}), layers=3)
    assert len(pairs(model.graph)) == 2
    result = equalize_layers(model).model
    values = initializers(result.graph)
    for first, second in (("w0", "w1"), ("w1", "w2")):
        out_range = np.abs(values[first]).reshape(CHANNELS, -1).max(axis=1)
        in_range = np.abs(values[second]).max(axis=(0, 2, 3))
        np.testing.assert_allclose(out_range, in_range, rtol=1e-4)
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    expected = run(model, x)
    np.testing.assert_allclose(run(result, x), expected, atol=1e-4 * np.abs(expected).max())


def test_a_dead_channel_keeps_its_scale():
    model = chain(("Relu", {}))
    for tensor in model.graph.initializer:
        if tensor.name == "w0":
            weight = numpy_helper.to_array(tensor).copy()
            weight[2] = 0
            tensor.CopyFrom(numpy_helper.from_array(weight, "w0"))
    before = initializers(model.graph)["w1"]
    after = initializers(equalize_layers(model).model.graph)["w1"]
    np.testing.assert_array_equal(after[:, 2], before[:, 2])
    assert not np.allclose(after[:, 1], before[:, 1])


def read_twice(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.output.append(
        helper.make_tensor_value_info("c0", TensorProto.FLOAT, ["n", "c", "h", "w"])
    )
    return model


def share_weight(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.node.append(helper.make_node("Identity", ["w1"], ["w1_copy"], name="reader"))
    model.graph.output.append(
        helper.make_tensor_value_info("w1_copy", TensorProto.FLOAT, [CHANNELS, CHANNELS, 3, 3])
    )
    return model


@pytest.mark.parametrize(
    "unequalisable",
    [
        lambda: chain(("Sigmoid", {})),
        lambda: chain(("Relu", {}), ("Relu", {})),
        lambda: chain(("Pad", {"inputs": (PAD,), "mode": "reflect"})),
        lambda: chain(("Pad", {"inputs": (PAD, np.float32(1))})),
        lambda: read_twice(chain()),
        lambda: share_weight(chain(("Relu", {}))),
    ],
    ids=[
        "sigmoid",
        "two clamps",
        "reflect padding",
        "padding with ones",
        "output read twice",
        "shared weight",
    ],
)
def test_pairs_that_do_not_commute_with_a_scale_are_left_alone(unequalisable):
    model = unequalisable()
    assert pairs(model.graph) == []
    result = equalize_layers(model)
    assert not result.modified and result.model is model


def test_the_cli_switch_records_itself_and_lenet_stays_bit_true(tmp_path):
    """`--equalize` rescales LeNet-5's two convolutions (through its ReLU and max pool),
    keeps the FP32 score the report compares with, and `rcompile verify` finds the written
    model bit-true."""
    runs = lenet_runs(tmp_path, ("--no-equalize", "--equalize"))
    on, off = runs["--equalize"], runs["--no-equalize"]
    assert on.fp32_top1 == off.fp32_top1
    assert abs(on.top1 - off.top1) < 0.01
    assert on.options["equalization"] is True
    assert off.options["equalization"] is False
    assert not np.array_equal(
        initializers(on.model.graph)["/conv1/Conv_weight_codes"],
        initializers(off.model.graph)["/conv1/Conv_weight_codes"],
    )
    verified = rcompile_run(
        "verify", tmp_path / "equalize.onnx", "--data", "models/mnist_calib.npz", "--count", "64"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "bit-true" in verified.stdout
