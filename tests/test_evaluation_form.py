"""The evaluation form the search scores (`rcompile.search.evaluation_form` in a session
without WeightBiasQuantization) computes what the reference datapath and the written (sim)
model compute, on the real LeNet-5
and on small EfficientNet-like networks: bit for bit wherever the layers have quantized inputs
and float32 sums their products exactly, and float arithmetic on the same quantized
parameters, perhaps summed in another order, where not. It fuses nothing into onnxruntime's
integer kernels, whose results depend on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.api import collect_statistics, load_source
from rcompile.exporter import finish_model
from rcompile.lowering import lower
from rcompile.lowering.rewrite import rewrite
from rcompile.onnx_ops import DOMAIN, IR_VERSION, OPSET
from rcompile.passes.calibrate import (
    Statistics,
    activation_ranges,
    activation_tensors,
    weight_ranges,
)
from rcompile.passes.layers import find_layers
from rcompile.plan import Override, Planner
from rcompile.reference import Reference
from rcompile.scheme import parse_rule, parse_scheme
from rcompile.search.evaluation_form import DISABLED_OPTIMIZERS, EVALUATION

ROOT = Path(__file__).resolve().parents[1] / "models"
FP32_WEIGHTS = (Override("*", weights=parse_rule("fp32")),)
FP32_ACTIVATIONS = (Override("*", input=parse_rule("fp32"), output=parse_rule("fp32")),)


def lenet_planner():
    """LeNet-5, its layers and a planner calibrated on the committed MNIST images."""
    source = load_source(ROOT / "lenet5.onnx").model
    layers = find_layers(source)
    statistics, _ = collect_statistics(
        source, layers, parse_scheme("dfp8"), ROOT / "mnist_calib.npz", None, None, 64, False
    )
    return source, layers, Planner(layers, statistics)


@pytest.fixture(scope="module")
def lenet():
    source, _, planner = lenet_planner()
    return source, planner, np.load(ROOT / "mnist_test.npz")["input"][:200]


def outputs(model: onnx.ModelProto, images: np.ndarray, disabled=()) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled),
    )
    return session.run(None, {"input": images})[0]


def with_plan(model: onnx.ModelProto, plan) -> onnx.ModelProto:
    """The lowered model with the plan recorded, as rcompile writes it (for the reference)."""
    return finish_model(model, {"rcompile.plan": plan.as_dict()})


def both_forms(lenet, scheme: str, overrides=()):
    source, planner, images = lenet
    plan = planner.plan(parse_scheme(scheme), overrides)
    written = with_plan(lower(source, plan).model, plan)
    evaluation = rewrite(source, plan, EVALUATION).model
    return (
        written,
        evaluation,
        outputs(written, images),
        outputs(evaluation, images, DISABLED_OPTIMIZERS),
    )


@pytest.mark.parametrize(
    ("scheme", "overrides"),
    [("dfp8", ()), ("dfp4", ()), ("dfp:w10a6", ()), ("dfp:w6a12", ()), ("dfp8", FP32_WEIGHTS)],
    ids=["dfp8", "dfp4", "w10a6", "w6a12", "fp32-weights"],
)
def test_evaluation_form_scores_the_reference_bit_for_bit(lenet, scheme, overrides):
    model, _, written, evaluation = both_forms(lenet, scheme, overrides)
    np.testing.assert_array_equal(evaluation, Reference(model).run({"input": lenet[2]})[0])
    np.testing.assert_array_equal(evaluation, written)


def test_fp32_weight_layers_get_plain_quantize_linear_input_quantizers(lenet):
    written, evaluation, _, _ = both_forms(lenet, "dfp8", FP32_WEIGHTS)
    assert {n.overload for n in written.graph.node if n.op_type == "QuantizeDFP"} >= {"float"}
    assert "float" not in {n.overload for n in evaluation.graph.node if n.op_type == "QuantizeDFP"}


def test_layers_with_fp32_inputs_get_float_constant_parameters(lenet):
    written, evaluation, written_out, evaluation_out = both_forms(lenet, "dfp4", FP32_ACTIVATIONS)
    assert dequantized_codes(written) and not dequantized_codes(evaluation)
    assert not any(n.op_type == "DequantizeLinear" for n in evaluation.graph.node)
    np.testing.assert_allclose(evaluation_out, written_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(evaluation_out.argmax(1), written_out.argmax(1))


def dequantized_codes(model: onnx.ModelProto) -> set[str]:
    """The names of the layers whose weights are integer codes, behind a DequantizeLinear or
    (sim) a Cast and a Mul by their step."""
    return {
        n.output[0].removesuffix("_weight")
        for n in model.graph.node
        if n.op_type in ("DequantizeLinear", "Mul") and n.output[0].endswith("_weight")
    }


def test_wide_weights_that_float32_sums_exactly_become_float_constants(lenet):
    written, evaluation, written_out, evaluation_out = both_forms(lenet, "dfp:w10a6")
    assert dequantized_codes(written) and not dequantized_codes(evaluation)
    np.testing.assert_array_equal(evaluation_out, written_out)


def test_wide_weights_whose_sums_could_round_become_float_constants_too(lenet):
    """16-bit weights times 8-bit inputs over a 5x5x6 window can pass 2**24 steps: the sim
    model then sums in float64, the evaluation form in float32, and a rounded sum can move
    an output by a step: rarely, and never the top class here."""
    written, evaluation, written_out, evaluation_out = both_forms(lenet, "dfp:w16a8")
    assert dequantized_codes(written) and not dequantized_codes(evaluation)
    assert np.mean(evaluation_out != written_out) < 0.01
    np.testing.assert_array_equal(evaluation_out.argmax(1), written_out.argmax(1))


def test_int8_weights_become_float_constants_fusing_nothing(lenet):
    written, evaluation, _, _ = both_forms(lenet, "dfp8")
    assert dequantized_codes(written) and not dequantized_codes(evaluation)


def relu6_network() -> onnx.ModelProto:
    """x -> Conv -> Clip(0, 6) -> Pad -> depthwise Conv -> Clip(0, 6) -> Conv -> y, the
    pattern of EfficientNet-Lite, where the evaluation form drops clips and quantizers that
    change nothing. Each convolution has a channel of near-zero weights, whose fine grid
    makes its bias a huge number of accumulator steps."""
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray:
        values = rng.normal(size=shape)
        values[0] *= 1e-4
        return values

    initializers = {
        "w1": weights(8, 3, 3, 3),
        "b1": rng.normal(size=8),
        "w2": weights(8, 1, 3, 3),
        "b2": rng.normal(size=8),
        "w3": weights(4, 8, 1, 1),
        "b3": rng.normal(size=4),
        "low": np.array(0.0),
        "high": np.array(6.0),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "low", "high"], ["r1"], name="relu6_1"),
        helper.make_node("Pad", ["r1", "pads"], ["p1"], name="pad"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="depthwise", group=8),
        helper.make_node("Clip", ["c2", "low", "high"], ["r2"], name="relu6_2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="project"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [
            numpy_helper.from_array(v.astype(np.int64 if k == "pads" else np.float32), k)
            for k, v in initializers.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def calibrated(model: onnx.ModelProto):
    """The network's layers and a planner calibrated on three random batches of 3x8x8 x."""
    layers = find_layers(model)
    feeds = [
        {"x": np.random.default_rng(seed).normal(size=(4, 3, 8, 8)).astype(np.float32)}
        for seed in range(3)
    ]
    observed = activation_ranges(model, activation_tensors(layers), feeds)
    ranges, samples = observed.ranges, observed.samples
    return layers, Planner(layers, Statistics(ranges, weight_ranges(model, layers), samples))


def relu6_planner():
    """The network, its layers and a calibrated planner."""
    model = relu6_network()
    return model, *calibrated(model)


@pytest.fixture(scope="module")
def relu6():
    model, _, planner = relu6_planner()
    images = np.random.default_rng(9).normal(size=(16, 3, 8, 8)).astype(np.float32)
    return model, planner, images


def relu6_forms(relu6, scheme: str, overrides=()):
    model, planner, x = relu6
    plan = planner.plan(parse_scheme(scheme), overrides)
    written = with_plan(lower(model, plan).model, plan)
    evaluation = rewrite(model, plan, EVALUATION).model
    run = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    fast = ort.InferenceSession(
        evaluation.SerializeToString(),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )
    return written, evaluation, run.run(None, {"x": x})[0], fast.run(None, {"x": x})[0]


# Formats that a clamp's result does not already fit: a consumer's input narrower than its
# producer's output, and a clamped output whose range ends below the clamp's 6.
NARROWER_INPUTS = (
    Override("depthwise", input=parse_rule("dfp4")),
    Override("project", input=parse_rule("udfp3f0")),
)
SHORT_RANGE = (Override("conv1", output=parse_rule("udfp5f3")),)


@pytest.mark.parametrize(
    ("scheme", "overrides"),
    [
        ("dfp8", ()),
        ("dfp:w6a5", ()),
        ("dfp:w12a6", ()),
        ("dfp:w10a8", ()),
        ("dfp8", NARROWER_INPUTS),
        ("dfp:w12a6", NARROWER_INPUTS),
        ("dfp:w6a5", SHORT_RANGE),
        ("dfp:w12a8", SHORT_RANGE),
    ],
    ids=["dfp8", "w6a5", "w12a6", "w10a8", "narrower", "narrower-wide", "short", "short-wide"],
)
def test_clamped_network_evaluation_form_is_bit_for_bit(relu6, scheme, overrides):
    model, _, written, evaluation = relu6_forms(relu6, scheme, overrides)
    np.testing.assert_array_equal(evaluation, Reference(model).run({"x": relu6[2]})[0])
    np.testing.assert_array_equal(evaluation, written)


def overloads(model: onnx.ModelProto) -> list[str]:
    return [n.overload for n in model.graph.node if n.op_type == "QuantizeDFP"]


def test_every_quantizer_of_convolutions_rounds_in_the_blocked_form(relu6):
    """No layer fuses, so the convolutions' quantizers all round in the blocked form, in the
    sim model as in the evaluation form, with no quantizer node left (the canonical rewrite
    has six), and the next layers' inputs, already on their grid, need none at all."""
    model, planner, _ = relu6
    canonical = rewrite(model, planner.plan(parse_scheme("dfp:w6a5"))).model
    written, evaluation, written_out, evaluation_out = relu6_forms(relu6, "dfp:w6a5")
    assert len(overloads(canonical)) == 6
    assert overloads(written) == overloads(evaluation) == []
    np.testing.assert_array_equal(evaluation_out, written_out)


def test_layers_that_do_not_fuse_skip_input_quantizers_that_change_nothing(relu6):
    model, planner, _ = relu6
    canonical = rewrite(model, planner.plan(parse_scheme("dfp:w12a6"))).model
    written, evaluation, written_out, evaluation_out = relu6_forms(relu6, "dfp:w12a6")
    assert len(overloads(evaluation)) == len(overloads(written)) < len(overloads(canonical))
    np.testing.assert_array_equal(evaluation_out, written_out)


def test_wide_weights_with_huge_bias_codes_still_become_float_constants(relu6):
    written, evaluation, _, _ = relu6_forms(relu6, "dfp:w12a6")
    assert len(dequantized_codes(written)) == 3
    assert not dequantized_codes(evaluation)


def residual_network() -> onnx.ModelProto:
    """x -> Conv -> Relu -> [1x1 expand -> Clip(0, 6) -> depthwise -> Clip(0, 6) -> 1x1
    project] + the Relu's output -> 1x1 Conv -> y, with static shapes and channels that
    onnxruntime runs in its blocked layout, where it fuses the residual Add into the node
    before it."""
    rng = np.random.default_rng(1)
    initializers = {
        "w0": rng.normal(size=(16, 3, 3, 3)),
        "b0": rng.normal(size=16),
        "we": rng.normal(size=(32, 16, 1, 1)) / 4,
        "be": rng.normal(size=32),
        "wd": rng.normal(size=(32, 1, 3, 3)) / 3,
        "bd": rng.normal(size=32),
        "wp": rng.normal(size=(16, 32, 1, 1)) / 6,
        "bp": rng.normal(size=16),
        "wh": rng.normal(size=(16, 16, 1, 1)) / 4,
        "low": np.array(0.0),
        "high": np.array(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
        helper.make_node("Conv", ["r0", "we", "be"], ["ce"], name="expand"),
        helper.make_node("Clip", ["ce", "low", "high"], ["re"], name="relu6_expand"),
        helper.make_node(
            "Conv", ["re", "wd", "bd"], ["cd"], name="depthwise", group=32, pads=[1, 1, 1, 1]
        ),
        helper.make_node("Clip", ["cd", "low", "high"], ["rd"], name="relu6_depthwise"),
        helper.make_node("Conv", ["rd", "wp", "bp"], ["cp"], name="project"),
        helper.make_node("Add", ["r0", "cp"], ["s"], name="residual"),
        helper.make_node("Conv", ["s", "wh"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16, 8, 8])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


@pytest.fixture(scope="module")
def residual():
    model = residual_network()
    _, planner = calibrated(model)
    return model, planner, np.random.default_rng(7).normal(size=(4, 3, 8, 8)).astype(np.float32)


# The residual's other input on a finer grid than the project's output: onnxruntime adding
# it inside the project's blocked rounding would round the sum.
FINER_RESIDUAL = (
    Override("stem", output=parse_rule("dfp16")),
    Override("project", output=parse_rule("dfp4")),
)


BLOCKED = {
    "stem_output_quantizer",
    "expand_output_quantizer",
    "depthwise_output_quantizer",
    "head_input_quantizer",
}


@pytest.mark.parametrize(
    ("scheme", "overrides", "blocked"),
    [
        ("dfp:w10a6", (), BLOCKED | {"project_output_quantizer"}),
        ("dfp:w12a8", (), BLOCKED | {"project_output_quantizer"}),
        ("dfp8", FP32_WEIGHTS, BLOCKED | {"project_output_quantizer"}),
        ("dfp:w10a6", FINER_RESIDUAL, BLOCKED),
        ("dfp8", FINER_RESIDUAL + FP32_WEIGHTS, BLOCKED),
    ],
    ids=["w10a6", "w12a8", "fp32-weights", "finer-residual", "finer-residual-fp32-weights"],
)
def test_blocked_network_evaluation_form_is_bit_for_bit(residual, scheme, overrides, blocked):
    """Bit for bit, with the blocked quantizers where onnxruntime cannot add the residual's
    other input into them inexactly: not the project's output when that input lies on a
    finer grid."""
    _, evaluation, written_out, evaluation_out = relu6_forms(residual, scheme, overrides)
    np.testing.assert_array_equal(evaluation_out, written_out)
    kept = {n.name for n in evaluation.graph.node if n.op_type == "QuantizeDFP"}
    assert kept == {"project_output_quantizer"} - blocked


def test_a_mix_of_8_bit_and_wider_layers_fuses_nothing(residual):
    mixed = (Override("depthwise", weights=parse_rule("dfp8")),)
    for scheme, overrides in (("dfp:w10a6", mixed), ("dfp8", ())):
        written, evaluation, written_out, evaluation_out = relu6_forms(residual, scheme, overrides)
        assert "depthwise" in dequantized_codes(written)
        assert not dequantized_codes(evaluation)
        np.testing.assert_array_equal(evaluation_out, written_out)


def test_pooled_values_already_on_the_grid_are_not_quantized_again(lenet):
    """MaxPool only picks values: the second convolution's input format (that of the first
    layer's output at dfp8) leaves them unchanged, so it reads the pool's output as it is."""
    source, planner, images = lenet
    plan = planner.plan(parse_scheme("dfp8"))
    written = lower(source, plan).model
    evaluation = rewrite(source, plan, EVALUATION).model
    pooled = [n.output[0] for n in evaluation.graph.node if n.op_type == "MaxPool"]
    readers = [n for n in evaluation.graph.node if n.input and n.input[0] == pooled[0]]
    assert [n.op_type for n in readers] == ["Conv"]
    canonical = rewrite(source, plan).model
    assert any(n.input[0] == pooled[0] for n in canonical.graph.node if n.domain == DOMAIN)
    assert not any(n.input[0] == pooled[0] for n in written.graph.node if n.domain == DOMAIN)
    np.testing.assert_array_equal(
        outputs(evaluation, images, DISABLED_OPTIMIZERS), outputs(written, images)
    )


def test_clamps_of_values_within_their_bounds_become_identities(lenet):
    """At dfp8 the fully connected layers' outputs are unsigned codes: the Relus after them
    change nothing, and the evaluation form and the sim model leave them to onnxruntime to
    drop (the convolutions' output quantizers take theirs over)."""
    source, planner, images = lenet
    plan = planner.plan(parse_scheme("dfp8"))
    written = lower(source, plan).model
    evaluation = rewrite(source, plan, EVALUATION).model
    assert sum(n.op_type == "Relu" for n in rewrite(source, plan).model.graph.node) == 4
    assert not any(n.op_type == "Relu" for n in evaluation.graph.node)
    assert not any(n.op_type == "Relu" for n in written.graph.node)
    np.testing.assert_array_equal(
        outputs(evaluation, images, DISABLED_OPTIMIZERS), outputs(written, images)
    )
