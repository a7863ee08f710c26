"""The reference datapath: integer codes, exact sums, one rounding; and `onnx.reference`
running the ai.rcompile quantizers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_same_bits, rounded_formats, sweep_formats, sweep_inputs
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from rcompile.formats import DFP, MiniFloat
from rcompile.onnx_ops import (
    DOMAIN,
    DOMAIN_VERSION,
    IR_VERSION,
    OPSET,
    functions_for,
    quantizer_node,
    single_quantizer_model,
)
from rcompile.plan import Accumulator
from rcompile.reference import QUANTIZERS, Reference, ReferenceError
from rcompile.reference.layer import overflow as overflow_of
from rcompile.reference.requantize import requantize, shift_round

F32 = np.float32
ACTIVATION_FORMATS = [
    DFP(8, 3),
    DFP(8, 4, signed=False),
    DFP(4, -1),
    DFP(16, 10),
    MiniFloat(4, 3, "fn"),
    MiniFloat(3, 2, "ristretto"),
    MiniFloat(5, 2, "ieee"),
]


def test_reference_evaluator_runs_every_quantizer_of_the_sweep_as_its_numpy_reference():
    x = sweep_inputs()
    formats = sweep_formats()
    model = single_quantizer_model(formats)
    outputs = ReferenceEvaluator(model, new_ops=list(QUANTIZERS)).run(None, {"x": x})
    for fmt, got in zip(formats, outputs, strict=True):
        assert_same_bits(fmt, x, fmt.quantize(x), got)


def test_shift_round_breaks_every_tie_to_even():
    values = np.arange(-64, 65)
    for shift in range(1, 5):
        expected = np.rint(values / 2.0**shift).astype(np.int64)
        assert np.array_equal(shift_round(values, -shift), expected)


def test_shift_round_shifts_left_exactly_and_saturates_past_int64():
    assert shift_round(np.array([3, -5]), 4).tolist() == [48, -80]
    assert shift_round(np.array([2**40]), 30).tolist() == [2**62]


@pytest.mark.parametrize("fmt", ACTIVATION_FORMATS + rounded_formats(), ids=str)
def test_requantize_is_the_format_where_float32_holds_the_sum(fmt):
    random = np.random.default_rng(0).integers(-(2**23), 2**23, 20000)
    accumulator = np.concatenate([random, np.arange(-300, 300)])  # every tie of small shifts
    for exponent in (-12, -4, -1, 0, 3):
        expected = fmt.quantize(np.ldexp(accumulator.astype(F32), exponent))
        got = requantize(accumulator, np.int64(exponent), fmt)
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
        if isinstance(fmt, MiniFloat):  # the path for sums past 2**53, on the same values
            wide = requantize(accumulator.astype(object), np.int64(exponent), fmt)
            assert np.array_equal(wide.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize(
    "fmt", [f for f in ACTIVATION_FORMATS + rounded_formats() if isinstance(f, MiniFloat)], ids=str
)
def test_requantize_of_int64_sums_past_float64_is_the_python_integer_path(fmt):
    """Sums between 2**53 and 2**62 are rounded on int64 arrays; every bit length, both signs,
    powers of two and their neighbours (where float64 rounds the bit length up) and exact
    ties of the dropped bits must give the per-integer path's bits."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 63, 4000)
    random = rng.integers(0, 2**62, 4000) >> (62 - lengths)
    powers = np.int64(1) << np.arange(0, 62)
    ties = (np.int64(1) << np.arange(54, 62)) + (np.int64(1) << np.arange(54 - 5, 62 - 5))
    magnitudes = np.concatenate([random, powers, powers - 1, powers[1:] + 1, ties, [0, 2**53]])
    accumulator = np.concatenate([magnitudes, -magnitudes])
    for exponent in (-70, -60, -40, -20, 0):
        got = requantize(accumulator, np.int64(exponent), fmt)
        expected = requantize(accumulator.astype(object), np.int64(exponent), fmt)
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), exponent


def test_requantize_rounds_a_wide_sum_once():
    # 1.125 + 2**-25 lies just above the tie between 1.0 and 1.25 of fp6e3m2r; float32
    # would round it to the tie itself, which goes to even (1.0).
    fmt = MiniFloat(3, 2, "ristretto")
    accumulator = np.array([2**25 + 2**22 + 1])
    assert requantize(accumulator, np.int64(-25), fmt).tolist() == [1.25]
    assert fmt.quantize(np.ldexp(accumulator.astype(F32), -25)).tolist() == [1.0]


def conv_model(bias: bool = True) -> onnx.ModelProto:
    """x -> QuantizeDFP -> Conv (weights, bias) -> QuantizeDFP, with a plan in its metadata."""
    rng = np.random.default_rng(3)
    weights = (rng.integers(-127, 128, (4, 3, 3, 3)) * 2.0**-7).astype(F32)
    inputs = ["xq", "w", "b"] if bias else ["xq", "w"]
    nodes = [
        quantizer_node(DFP(8, 4), "x", "xq", "quantize_x", "arithmetic"),
        helper.make_node("Conv", inputs, ["acc"], "conv", pads=[1, 1, 1, 1]),
        quantizer_node(DFP(8, 2), "acc", "y", "quantize_y", "arithmetic"),
    ]
    initializers = [numpy_helper.from_array(weights, "w")]
    if bias:
        initializers.append(numpy_helper.from_array(F32([0.5, -0.25, 2**-11, 3.0]), "b"))
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])],
        initializers,
    )
    imports = [helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    model = helper.make_model(graph, opset_imports=imports, ir_version=IR_VERSION)
    model.functions.extend(functions_for(nodes))
    plan = {
        "layers": [
            {
                "node": "conv",
                "op_type": "Conv",
                "inputs": ["dfp8f4"],
                "output": "dfp8f2",
                "weights": ["dfp8f7"],
                "bias": ["dfp32f11"] if bias else [],
                "weight_axis": 0,
            }
        ]
    }
    model.metadata_props.add(key="rcompile.plan", value=json.dumps(plan))
    return model


def exact_conv(x_codes, w_codes, b_codes):
    """The padded 3x3 convolution in Python integers."""
    n, _, h, w = x_codes.shape
    padded = np.pad(x_codes, [(0, 0), (0, 0), (1, 1), (1, 1)]).astype(object)
    out = np.zeros((n, w_codes.shape[0], h, w), dtype=object)
    for o in range(w_codes.shape[0]):
        for i in range(h):
            for j in range(w):
                patch = padded[:, :, i : i + 3, j : j + 3]
                out[:, o, i, j] = (patch * w_codes[o].astype(object)).sum(axis=(1, 2, 3))
        out[:, o] += b_codes[o]
    return out


def test_a_layer_sums_codes_exactly_and_rounds_once_half_to_even():
    x = (np.random.default_rng(4).standard_normal((2, 3, 5, 5)) * 3).astype(F32)
    model = conv_model()
    got = Reference(model).run({"x": x})[0]
    x_codes = np.clip(np.rint(x * 16), -128, 127).astype(np.int64)
    w_codes = (numpy_helper.to_array(model.graph.initializer[0]) * 128).astype(np.int64)
    b_codes = (numpy_helper.to_array(model.graph.initializer[1]) * 2**11).astype(np.int64)
    # products on 2**-11 (fl 4 + 7), output on 2**-2: drop 9 bits, half to even
    total = exact_conv(x_codes, w_codes, b_codes)
    expected = np.clip([round(v / 2**9) for v in total.ravel()], -128, 127) / 4
    assert np.array_equal(got.ravel(), np.array(expected, F32))


def test_onnxruntime_runs_the_same_model_to_the_same_bits():
    x = (np.random.default_rng(5).standard_normal((2, 3, 5, 5)) * 3).astype(F32)
    model = conv_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"x": x})[0], Reference(model).run({"x": x})[0])


def test_a_model_without_a_plan_is_refused_with_one_line():
    model = conv_model()
    del model.metadata_props[:]
    with pytest.raises(ReferenceError, match="no rcompile plan"):
        Reference(model)


def test_a_planned_bias_missing_from_the_model_is_refused():
    model = conv_model(bias=False)
    entry = model.metadata_props[0]
    entry.value = entry.value.replace('"bias": []', '"bias": ["dfp32f11"]')
    with pytest.raises(ReferenceError, match="planned bias is not in the model"):
        Reference(model)


@pytest.mark.parametrize(
    ("overflow", "expected"),
    [
        ("wrap", [-44, 127, -128, 127, -128, -56, -1, 0, -24]),
        ("saturate", [-128, -128, -128, 127, 127, 127, 127, 127, 127]),
    ],
)
def test_an_accumulator_wraps_or_saturates_its_exact_sum(overflow, expected):
    sums = np.array([-300, -129, -128, 127, 128, 200, 255, 256, 1000])
    assert overflow_of(sums, Accumulator(8, overflow)).tolist() == expected


def test_a_64_bit_accumulator_wraps_sums_past_int64():
    sums = np.array([2**63 + 5, -(2**63) - 1], dtype=object)
    assert overflow_of(sums, Accumulator(64, "wrap")).tolist() == [-(2**63) + 5, 2**63 - 1]
