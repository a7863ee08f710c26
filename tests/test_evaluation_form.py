"""The evaluation form the search scores (`rewrite(..., evaluation=True)` in a session without
WeightBiasQuantization) computes what the written model computes, on the real LeNet-5: bit for
bit wherever the layers have quantized inputs, and float arithmetic on the same quantized
parameters where they do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rcompile.api import collect_statistics, load_source
from rcompile.passes.layers import find_layers
from rcompile.passes.rewrite import EVALUATION_DISABLED_OPTIMIZERS, rewrite
from rcompile.plan import Override, Planner
from rcompile.scheme import parse_rule, parse_scheme

ROOT = Path(__file__).resolve().parents[1] / "models"
FP32_WEIGHTS = (Override("*", weights=parse_rule("fp32")),)
FP32_ACTIVATIONS = (Override("*", input=parse_rule("fp32"), output=parse_rule("fp32")),)


@pytest.fixture(scope="module")
def lenet():
    source, _ = load_source(ROOT / "lenet5.onnx")
    layers = find_layers(source)
    statistics, _ = collect_statistics(
        source, layers, parse_scheme("dfp8"), ROOT / "mnist_calib.npz", None, None, 64, False
    )
    images = np.load(ROOT / "mnist_test.npz")["input"][:200]
    return source, Planner(layers, statistics), images


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


def both_forms(lenet, scheme: str, overrides=()):
    source, planner, images = lenet
    plan = planner.plan(parse_scheme(scheme), overrides)
    written = rewrite(source, plan).model
    evaluation = rewrite(source, plan, evaluation=True).model
    return (
        written,
        evaluation,
        outputs(written, images),
        outputs(evaluation, images, EVALUATION_DISABLED_OPTIMIZERS),
    )


@pytest.mark.parametrize(
    ("scheme", "overrides"),
    [("dfp8", ()), ("dfp4", ()), ("dfp:w16a8", ()), ("dfp:w6a12", ()), ("dfp8", FP32_WEIGHTS)],
    ids=["dfp8", "dfp4", "w16a8", "w6a12", "fp32-weights"],
)
def test_evaluation_form_scores_the_written_model_bit_for_bit(lenet, scheme, overrides):
    _, _, written, evaluation = both_forms(lenet, scheme, overrides)
    np.testing.assert_array_equal(evaluation, written)


def test_fp32_weight_layers_get_plain_quantize_linear_input_quantizers(lenet):
    written, evaluation, _, _ = both_forms(lenet, "dfp8", FP32_WEIGHTS)
    assert {n.overload for n in written.graph.node if n.op_type == "QuantizeDFP"} >= {"float"}
    assert "float" not in {n.overload for n in evaluation.graph.node if n.op_type == "QuantizeDFP"}


def test_layers_with_fp32_inputs_get_float_constant_parameters(lenet):
    written, evaluation, written_out, evaluation_out = both_forms(lenet, "dfp4", FP32_ACTIVATIONS)
    assert any(n.op_type == "DequantizeLinear" for n in written.graph.node)
    assert not any(n.op_type == "DequantizeLinear" for n in evaluation.graph.node)
    np.testing.assert_allclose(evaluation_out, written_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(evaluation_out.argmax(1), written_out.argmax(1))


def dequantized_codes(model: onnx.ModelProto) -> set[str]:
    """The names of the layers whose weights are integer codes behind a DequantizeLinear."""
    return {
        n.output[0].removesuffix("_weight")
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.output[0].endswith("_weight")
    }


def test_wide_weights_that_float32_sums_exactly_become_float_constants(lenet):
    written, evaluation, written_out, evaluation_out = both_forms(lenet, "dfp:w10a6")
    assert dequantized_codes(written) and not dequantized_codes(evaluation)
    np.testing.assert_array_equal(evaluation_out, written_out)


def test_wide_weights_whose_sums_could_round_stay_codes(lenet):
    """16-bit weights times 8-bit inputs over a 5x5x6 window can pass 2**24 steps."""
    _, evaluation, _, _ = both_forms(lenet, "dfp:w16a8")
    assert dequantized_codes(evaluation)


def test_int8_weights_stay_codes_to_fuse_into_integer_kernels(lenet):
    written, evaluation, _, _ = both_forms(lenet, "dfp8")
    assert dequantized_codes(evaluation) == dequantized_codes(written) != set()
