"""Compact weight storage: integer codes of the narrowest type with a DequantizeLinear, float16
with a Cast for mini floats, float32 otherwise; onnxruntime gives back the quantized values."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.formats import DFP, MiniFloat, Pow2
from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.passes.store_weights import (
    StoredTensor,
    parameter_types,
    quantize_values,
    store,
)

F32 = np.float32


def run_stored(stored: StoredTensor, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor of `shape` that a StoredTensor produces, computed by onnxruntime."""
    identity = helper.make_node("Identity", [stored.output], ["out"], name="out")
    graph = helper.make_graph(
        [*stored.nodes, identity],
        "stored",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(shape))],
        list(stored.initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {})[0]


def assert_same_bits(expected: np.ndarray, actual: np.ndarray) -> None:
    assert expected.shape == actual.shape
    np.testing.assert_array_equal(expected.view(np.uint32), actual.astype(F32).view(np.uint32))


def initializer(stored: StoredTensor, suffix: str) -> onnx.TensorProto:
    return next(t for t in stored.initializers if t.name.endswith(suffix))


def per_channel_weights(seed: int = 0) -> tuple[np.ndarray, tuple[DFP, ...]]:
    """(3, 2, 3, 3) weights whose channels need fl 5, 3 and 7."""
    scales = np.array([2.0, 8.0, 0.5]).reshape(3, 1, 1, 1)
    values = (np.random.default_rng(seed).uniform(-1, 1, (3, 2, 3, 3)) * scales).astype(F32)
    return values, (DFP(8, 5), DFP(8, 3), DFP(8, 7))


def test_per_channel_dfp_codes_are_stored_as_int8():
    values, formats = per_channel_weights()
    stored = store("w", quantize_values(values, formats, 0), formats, 0)
    assert initializer(stored, "_codes").data_type == TensorProto.INT8


def test_per_channel_dfp_dequantizes_along_the_channel_axis_with_power_of_two_scales():
    values, formats = per_channel_weights()
    stored = store("w", quantize_values(values, formats, 0), formats, 0)
    (node,) = stored.nodes
    assert node.op_type == "DequantizeLinear"
    assert helper.get_attribute_value(node.attribute[0]) == 0
    scale = numpy_helper.to_array(initializer(stored, "_scale"))
    np.testing.assert_array_equal(scale, F32([2**-5, 2**-3, 2**-7]))


def test_per_channel_dfp_round_trips_bit_for_bit_in_onnxruntime():
    values, formats = per_channel_weights()
    quantized = quantize_values(values, formats, 0)
    assert_same_bits(quantized, run_stored(store("w", quantized, formats, 0), quantized.shape))


def test_per_channel_dfp_along_the_last_axis_round_trips():
    values, formats = per_channel_weights()
    values = np.ascontiguousarray(values.reshape(3, -1).T)  # (18, 3): channels on axis 1
    quantized = quantize_values(values, formats, 1)
    assert_same_bits(quantized, run_stored(store("w", quantized, formats, 1), quantized.shape))


def test_quantize_values_quantizes_each_slice_with_its_format():
    values, formats = per_channel_weights()
    quantized = quantize_values(values, formats, 0)
    for fmt, channel, result in zip(formats, values, quantized, strict=True):
        assert_same_bits(fmt.quantize(channel), result)


def test_one_format_gives_a_scalar_scale_and_no_axis():
    values, _ = per_channel_weights()
    quantized = DFP(8, 3).quantize(values)
    stored = store("w", quantized, (DFP(8, 3),), 0)
    assert numpy_helper.to_array(initializer(stored, "_scale")).shape == ()
    assert not stored.nodes[0].attribute
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


@pytest.mark.parametrize("fmt", [DFP(4, 2), DFP(3, 1), DFP(2, 0)])
def test_formats_of_at_most_4_bits_use_int4(fmt):
    values = np.random.default_rng(1).uniform(-4, 4, (4, 6)).astype(F32)
    quantized = fmt.quantize(values)
    stored = store("w", quantized, (fmt,), None)
    assert initializer(stored, "_codes").data_type == TensorProto.INT4
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


def test_per_channel_int4_round_trips():
    formats = (DFP(4, 1), DFP(4, 3))
    values = np.random.default_rng(2).uniform(-3, 3, (2, 5)).astype(F32)
    quantized = quantize_values(values, formats, 0)
    stored = store("w", quantized, formats, 0)
    assert initializer(stored, "_codes").data_type == TensorProto.INT4
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


def test_16_bit_codes_use_int16():
    fmt = DFP(16, 8)
    quantized = fmt.quantize(np.random.default_rng(3).uniform(-100, 100, 50).astype(F32))
    stored = store("w", quantized, (fmt,), None)
    assert initializer(stored, "_codes").data_type == TensorProto.INT16
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


def test_pow2_codes_are_integers_with_scale_2_to_the_exp_min():
    fmt = Pow2(-6, -1)
    values = np.random.default_rng(4).uniform(-0.6, 0.6, (4, 8)).astype(F32)
    quantized = fmt.quantize(values)
    stored = store("w", quantized, (fmt,), None)
    codes = numpy_helper.to_array(initializer(stored, "_codes"))
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(codes, quantized * 2**6)
    assert numpy_helper.to_array(initializer(stored, "_scale")) == F32(2**-6)


def test_pow2_values_round_trip_in_onnxruntime():
    """Equal values; a negative zero (tiny negative weight) comes back as +0, since integer
    codes have no sign of zero, which changes no sum the layer computes."""
    fmt = Pow2(-6, -1)
    values = np.random.default_rng(4).uniform(-0.6, 0.6, 29).astype(F32)
    quantized = fmt.quantize(np.append(values, F32([-0.001, 0.0, 0.001])))
    stored = store("w", quantized, (fmt,), None)
    np.testing.assert_array_equal(run_stored(stored, quantized.shape), quantized)


def test_minifloat_values_are_stored_as_float16_with_a_cast():
    fmt = MiniFloat(4, 3, "fn")
    quantized = fmt.quantize(np.random.default_rng(5).normal(scale=50, size=(3, 7)).astype(F32))
    stored = store("w", quantized, (fmt,), None)
    assert [t.data_type for t in stored.initializers] == [TensorProto.FLOAT16]
    assert [n.op_type for n in stored.nodes] == ["Cast"]
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


def test_minifloat_values_float16_cannot_hold_are_stored_as_bfloat16():
    fmt = MiniFloat(8, 7, "ieee")  # bfloat16: 1e-30 and 1e30 are far outside float16
    quantized = fmt.quantize(F32([1e-30, 1e30, 1.5, -3.0]))
    stored = store("w", quantized, (fmt,), None)
    assert [t.data_type for t in stored.initializers] == [TensorProto.BFLOAT16]
    assert [n.op_type for n in stored.nodes] == ["Cast"]
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


def test_minifloat_values_no_16_bit_float_holds_stay_float32():
    fmt = MiniFloat(8, 10, "ieee")  # bfloat16's range with float16's mantissa
    quantized = fmt.quantize(F32([1e-30 * 1.0009765625, 1e30, 1.0009765625, -3.0]))
    stored = store("w", quantized, (fmt,), None)
    assert [t.data_type for t in stored.initializers] == [TensorProto.FLOAT]
    assert stored.nodes == ()
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


@pytest.mark.parametrize("fmt", [DFP(24, 0), DFP(32, 0), DFP(20, -3)])
def test_codes_no_weight_integer_type_holds_stay_float32(fmt):
    quantized = fmt.quantize(F32([2**18, -(2**19), 12345 * 8, 0]))
    stored = store("w", quantized, (fmt,), None)
    assert [t.data_type for t in stored.initializers] == [TensorProto.FLOAT]
    assert_same_bits(quantized, run_stored(stored, quantized.shape))


@pytest.mark.parametrize(
    "formats",
    [(DFP(32, 0),), (DFP(24, 5),), (DFP(8, 3),), (DFP(4, 0),), (Pow2(-8, -1),), (DFP(17, 2),)],
)
def test_int32_is_never_a_weight_type(formats):
    assert TensorProto.INT32 not in parameter_types(formats)


def test_int32_only_when_asked_for_on_a_bias_grid():
    bias = F32([1.5, -2.25, 1000.0])
    steps = F32([2**-10, 2**-12, 2**-9])
    stored = store("b", bias, (DFP(32, 0),) * 3, 0, steps, (TensorProto.INT32,))
    assert initializer(stored, "_codes").data_type == TensorProto.INT32
    assert_same_bits(bias, run_stored(stored, bias.shape))


def test_values_off_the_integer_grid_stay_float32():
    quantized = F32([0.5, 0.25, 0.125])  # not multiples of 2**-1 (the format's step)
    stored = store("w", quantized, (DFP(8, 1),), None)
    assert [t.data_type for t in stored.initializers] == [TensorProto.FLOAT]
    assert_same_bits(quantized, run_stored(stored, quantized.shape))
