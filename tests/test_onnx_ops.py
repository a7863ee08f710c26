"""The ONNX functions run by stock onnxruntime agree bit for bit with the NumPy reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_same_bits, rounded_formats, sweep_formats, sweep_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rcompile.formats import DFP, Format, MiniFloat, Pow2
from rcompile.onnx_ops import (
    DOMAIN,
    dfp,
    format_of,
    minifloat,
    quantizer_node,
    single_quantizer_model,
)

F32 = np.float32
FORMATS = sweep_formats()
FEW = [
    DFP(8, 5),
    DFP(5, -2, False),
    DFP(24, 10),
    MiniFloat(4, 3),
    MiniFloat(4, 3, "fn"),
    MiniFloat(5, 2, "ieee"),
    MiniFloat(8, 7, "ieee"),
    Pow2(-8, -1),
    Pow2(-8, -1, zero=False),
]


def session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run(formats: list[Format], x: np.ndarray, optimize: bool = True) -> list[np.ndarray]:
    return session(single_quantizer_model(formats), optimize).run(None, {"x": x})


@pytest.fixture(scope="module")
def sweep_outputs() -> dict[str, np.ndarray]:
    outputs = run(FORMATS, sweep_inputs())
    return {fmt.name: out for fmt, out in zip(FORMATS, outputs, strict=True)}


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.name)
def test_function_matches_reference_on_every_float16_pattern(fmt, sweep_outputs):
    x = sweep_inputs()
    assert_same_bits(fmt, x, fmt.quantize(x), sweep_outputs[fmt.name])


@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "unoptimized"])
def test_every_rounding_mode_matches_the_reference_on_every_tie(optimize):
    x = sweep_inputs()
    formats = rounded_formats()
    for fmt, out in zip(formats, run(formats, x, optimize), strict=True):
        assert_same_bits(fmt, x, fmt.quantize(x), out)


def test_a_rounding_mode_is_named_in_the_node_and_read_back():
    model = single_quantizer_model(rounded_formats())
    assert [format_of(node) for node in model.graph.node] == rounded_formats()


def test_functions_match_without_graph_optimizations():
    x = sweep_inputs()
    for fmt, out in zip(FEW, run(FEW, x, optimize=False), strict=True):
        assert_same_bits(fmt, x, fmt.quantize(x), out)


@settings(max_examples=60, deadline=None)
@given(arrays(F32, st.integers(1, 256), elements=st.floats(width=32)))
def test_functions_match_reference_on_any_float32(x):
    for fmt, out in zip(FEW, run(FEW, x), strict=True):
        assert_same_bits(fmt, x, fmt.quantize(x), out)


def test_random_float32_bit_patterns_agree():
    bits = np.random.default_rng(1).integers(0, 2**32, size=300_000, dtype=np.uint64)
    x = bits.astype(np.uint32).view(F32)
    for fmt, out in zip(FEW, run(FEW, x), strict=True):
        assert_same_bits(fmt, x, fmt.quantize(x), out)


def test_model_passes_the_full_checker():
    onnx.checker.check_model(single_quantizer_model(FEW), full_check=True)


def test_function_bodies_use_standard_ops_only():
    for function in single_quantizer_model(FEW).functions:
        assert function.domain == DOMAIN
        assert {node.domain for node in function.node} == {""}


def test_each_function_is_defined_once():
    keys = [(f.name, f.overload) for f in single_quantizer_model(FORMATS).functions]
    assert len(keys) == len(set(keys))
    assert ("QuantizeDFP", "uint8") in keys and ("QuantizeDFP", "float") in keys


def edited(model: onnx.ModelProto, **values: int | str) -> onnx.ModelProto:
    node = model.graph.node[0]
    for attribute in node.attribute:
        if attribute.name in values:
            value = values[attribute.name]
            if isinstance(value, str):
                attribute.s = value.encode()
            else:
                attribute.i = value
    return model


@pytest.mark.parametrize(
    ("before", "edits", "after"),
    [
        (DFP(8, 5), {"fl": 2}, DFP(8, 2)),
        (DFP(6, 5), {"bw": 4, "signed": 0}, DFP(4, 5, signed=False)),
        (DFP(8, 5), {"signed": 0}, DFP(8, 5, signed=False)),
        (MiniFloat(4, 3), {"variant": "ieee", "mant_bits": 2}, MiniFloat(4, 2, "ieee")),
        (Pow2(-8, -1), {"exp_min": -3, "zero": 0}, Pow2(-3, -1, zero=False)),
    ],
)
def test_editing_node_attributes_changes_the_format(before, edits, after):
    x = sweep_inputs()
    model = edited(single_quantizer_model([before]), **edits)
    assert_same_bits(after, x, after.quantize(x), session(model).run(None, {"x": x})[0])


@pytest.mark.parametrize(
    "fmt",
    [DFP(bw, fl, signed) for bw in (2, 5, 7, 12) for fl in (-3, 4) for signed in (True, False)],
    ids=lambda f: f.name,
)
def test_late_clipped_overload_matches_the_reference(fmt):
    model = single_quantizer_model([fmt])
    node = model.graph.node[0]
    node.overload = dfp.overload(fmt, "late")
    del model.functions[:]
    model.functions.append(dfp.build(node.overload))
    assert node.overload.endswith("_clipped_late")
    x = sweep_inputs()
    assert_same_bits(fmt, x, fmt.quantize(x), session(model).run(None, {"x": x})[0])


def with_overload(fmt: DFP, overload: str) -> onnx.ModelProto:
    model = single_quantizer_model([fmt])
    model.graph.node[0].overload = overload
    del model.functions[:]
    model.functions.append(dfp.build(overload))
    return model


@pytest.mark.parametrize("fmt", [DFP(5, 2), DFP(6, 3, False), DFP(12, 6)], ids=lambda f: f.name)
def test_arithmetic_form_matches_the_reference(fmt):
    x = sweep_inputs()
    model = with_overload(fmt, dfp.overload(fmt, "arithmetic"))
    assert_same_bits(fmt, x, fmt.quantize(x), session(model).run(None, {"x": x})[0])


@pytest.mark.parametrize("fmt", [DFP(5, 2), DFP(6, 3, False), DFP(12, 6)], ids=lambda f: f.name)
def test_unclipped_form_matches_the_reference_only_within_the_range(fmt):
    model = with_overload(fmt, dfp.overload(fmt, "unclipped"))
    assert model.graph.node[0].overload in ("uint8", "uint16")
    x = sweep_inputs()
    x = x[np.isfinite(x)]
    inside = np.clip(x, fmt.min, fmt.max).astype(np.float32)
    assert_same_bits(fmt, inside, fmt.quantize(inside), session(model).run(None, {"x": inside})[0])
    beyond = np.float32([fmt.max * 2])
    assert session(model).run(None, {"x": beyond})[0][0] > fmt.max


def test_unknown_quantizer_form_raises():
    with pytest.raises(ValueError, match="form"):
        dfp.overload(DFP(8, 0), "fast")


def test_overloads_follow_the_code_width():
    overloads = [quantizer_node(DFP(bw, 0), "x", "y", "q").overload for bw in (4, 8, 12, 16, 17)]
    assert overloads == ["uint8_clipped", "uint8", "uint16_clipped", "uint16", "float"]


def test_dfp8_inlines_to_a_quantize_dequantize_pair(tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    model = single_quantizer_model([DFP(8, 5)])
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert not {"Gather", "Round", "Mul"} & set(ops)


NATIVE_FORMATS = [
    MiniFloat(4, 3, "fn"),
    MiniFloat(5, 2, "ieee"),
    MiniFloat(5, 10, "ieee"),
    MiniFloat(8, 7, "ieee"),
]


def test_standard_mini_floats_use_native_cast_overloads():
    overloads = [quantizer_node(fmt, "x", "y", "q").overload for fmt in NATIVE_FORMATS]
    assert overloads == ["float8e4m3fn", "float8e5m2", "float16", "bfloat16"]
    assert quantizer_node(MiniFloat(4, 3), "x", "y", "q").overload == ""


@pytest.mark.parametrize("fmt", NATIVE_FORMATS, ids=lambda fmt: fmt.name)
def test_generic_body_matches_the_reference_for_standard_formats_too(fmt):
    model = single_quantizer_model([fmt])
    model.graph.node[0].overload = ""
    del model.functions[:]
    model.functions.append(minifloat.build(""))
    x = sweep_inputs()
    assert_same_bits(fmt, x, fmt.quantize(x), session(model).run(None, {"x": x})[0])
