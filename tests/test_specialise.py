"""Quantizer nodes with their folded bodies compute the functions' values bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_same_bits, sweep_formats, sweep_inputs
from onnx import helper

from rcompile.formats import DFP, MiniFloat, Pow2
from rcompile.onnx_ops import (
    DOMAIN,
    IR_VERSION,
    OPSET,
    functions_for,
    quantizer_node,
    single_quantizer_model,
)
from rcompile.onnx_ops.specialise import specialise

F32 = np.float32
FORMATS = sweep_formats()


def outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def specialised(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    specialise(copy)
    return copy


def random_bit_patterns() -> np.ndarray:
    bits = np.random.default_rng(3).integers(0, 2**32, size=100_000, dtype=np.uint64)
    return bits.astype(np.uint32).view(F32)


@pytest.fixture(scope="module")
def sweep() -> onnx.ModelProto:
    return specialised(single_quantizer_model(FORMATS))


def test_every_format_matches_the_reference(sweep):
    for x in (sweep_inputs(), random_bit_patterns()):
        for fmt, out in zip(FORMATS, outputs(sweep, x), strict=True):
            assert_same_bits(fmt, x, fmt.quantize(x), out)


def test_no_quantizer_op_function_or_import_is_left(sweep):
    assert {node.domain for node in sweep.graph.node} == {""}
    assert not sweep.functions
    assert {o.domain for o in sweep.opset_import} == {""}
    onnx.checker.check_model(sweep, full_check=True)


def forms_model(forms: list[tuple[DFP, str]]) -> onnx.ModelProto:
    nodes = [
        quantizer_node(fmt, "x", f"y{i}", f"quantize_{i}", form)
        for i, (fmt, form) in enumerate(forms)
    ]
    value = onnx.TensorProto.FLOAT
    return helper.make_model(
        helper.make_graph(
            nodes,
            "forms",
            [helper.make_tensor_value_info("x", value, ["n"])],
            [helper.make_tensor_value_info(f"y{i}", value, ["n"]) for i in range(len(nodes))],
        ),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=functions_for(nodes),
        ir_version=IR_VERSION,
    )


def test_every_dfp_form_matches_its_function():
    """`unclipped` and `late` differ from the reference by design, so the folded bodies are
    compared with the functions themselves."""
    formats = [DFP(8, 5), DFP(6, 3, False), DFP(12, 9), DFP(16, 0, False), DFP(20, 4)]
    forms = [(f, form) for f in formats for form in ("default", "arithmetic", "late", "unclipped")]
    model = forms_model(forms)
    x = np.concatenate([sweep_inputs(), random_bit_patterns()])
    for (fmt, form), expected, actual in zip(
        forms, outputs(model, x), outputs(specialised(model), x), strict=True
    ):
        same = (expected.view(np.uint32) == actual.view(np.uint32)) | np.isnan(x)
        assert same.all(), f"{fmt.name} {form}"


def test_first_node_keeps_the_name_and_shared_constants_appear_once():
    """The search cuts networks at a layer's first node by name; a quantizer may be it."""
    formats = [DFP(8, 5), DFP(8, 5), MiniFloat(4, 3), Pow2(-8, -1)]
    model = specialised(single_quantizer_model(formats))
    names = [node.name for node in model.graph.node]
    assert {f"quantize_{i}" for i in range(len(formats))} <= set(names)
    assert len(names) == len(set(names))
    initializers = [t.name for t in model.graph.initializer]
    assert len(initializers) == len(set(initializers))
    dfp_constants = [name for name in initializers if name.startswith("QuantizeDFP_")]
    assert 0 < len(dfp_constants) <= 2
