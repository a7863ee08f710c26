"""The Python API end to end: rcompile.compile on the real LeNet-5 for every scheme family,
scored against its FP32 accuracy, and on EfficientNet-Lite0 with real ImageNet images."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import rcompile
from rcompile.api import load_source
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.errors import CalibrationError
from rcompile.lowering import lower
from rcompile.score import predictions, score

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
MNIST_CALIB = ROOT / "models" / "mnist_calib.npz"
MNIST_TEST = ROOT / "models" / "mnist_test.npz"
SHARED = ROOT.parent / "shared"
EFFICIENTNET = SHARED / "models" / "efficientnet_lite0.onnx"
IMAGENET = SHARED / "data" / "imagenet-sample-dev"

FP32_TOP1 = 0.979
# Largest allowed drop in top-1 from FP32 on the 1,000 test images. Measured (onnxruntime
# 1.31.1 CPU): dfp8 0.0, dfp16 0.0, fp8e4m3 0.1, dfp:w4a8 0.5, pow2 1.4 points.
MAX_DROP = {"dfp8": 0.003, "dfp16": 0.002, "fp8e4m3": 0.005, "dfp:w4a8": 0.015, "pow2": 0.025}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def top1(model: onnx.ModelProto) -> float:
    with np.load(MNIST_TEST) as data:
        images, labels = data["input"], data["labels"]
    logits = session(model).run(None, {"input": images})[0]
    return float(np.mean(logits.argmax(axis=1) == labels))


@pytest.fixture(scope="module")
def compiled() -> dict[str, rcompile.CompileResult]:
    return {scheme: rcompile.compile(LENET, scheme, MNIST_CALIB) for scheme in MAX_DROP}


def test_fp32_lenet_scores_97_9_percent():
    assert top1(onnx.load(LENET)) == pytest.approx(FP32_TOP1)


@pytest.mark.parametrize("scheme", MAX_DROP)
def test_quantized_lenet_scores_close_to_fp32(compiled, scheme):
    assert top1(compiled[scheme].model) >= FP32_TOP1 - MAX_DROP[scheme]


@pytest.mark.parametrize("scheme", MAX_DROP)
def test_result_report_names_the_scheme_and_all_five_layers(compiled, scheme):
    report = compiled[scheme].report
    assert report.scheme == scheme
    assert len(report.layers) == 5


def test_dfp_without_calibration_data_raises():
    with pytest.raises(CalibrationError, match="give some with --calib"):
        rcompile.compile(LENET, "dfp8")


def test_unscaled_fp16_needs_no_calibration_data_and_scaled_says_so():
    with pytest.raises(CalibrationError, match=r"exponent biases .* or use fp16:unscaled$"):
        rcompile.compile(LENET, "fp16")
    result = rcompile.compile(LENET, "fp16:unscaled")
    assert result.report.calibration == {"source": None, "samples": 0}
    assert top1(result.model) >= FP32_TOP1 - 0.002


def test_model_given_as_a_proto_compiles():
    result = rcompile.compile(onnx.load(LENET), "dfp8", MNIST_CALIB)
    assert result.report.layers[0].node == "/conv1/Conv"
    assert top1(result.model) >= FP32_TOP1 - MAX_DROP["dfp8"]


def test_model_given_as_a_proto_gives_the_same_bytes_as_its_file_but_its_source_record():
    """A file compiles to what its proto does, plus the record of where it came from (the
    fine-tuning teacher); a proto in memory has no file to record."""
    from_proto = rcompile.compile(onnx.load(LENET), "dfp8", MNIST_CALIB, calib_count=64)
    from_file = rcompile.compile(LENET, "dfp8", MNIST_CALIB, calib_count=64)
    record = next(p for p in from_file.model.metadata_props if p.key == "rcompile.source")
    assert json.loads(record.value)["file"] == "lenet5.onnx"
    assert all(p.key != "rcompile.source" for p in from_proto.model.metadata_props)
    without = onnx.ModelProto()
    without.CopyFrom(from_file.model)
    kept = [p for p in without.metadata_props if p.key != "rcompile.source"]
    del without.metadata_props[:]
    without.metadata_props.extend(kept)
    assert from_proto.model.SerializeToString(deterministic=True) == (
        without.SerializeToString(deterministic=True)
    )


def test_calib_count_limits_the_calibration_samples():
    result = rcompile.compile(LENET, "dfp8", MNIST_CALIB, calib_count=100)
    assert result.report.calibration["samples"] == 100


def test_calibration_metadata_records_the_sample_count():
    result = rcompile.compile(LENET, "dfp8", MNIST_CALIB, calib_count=100)
    metadata = {entry.key: entry.value for entry in result.model.metadata_props}
    assert '"samples": 100' in metadata["rcompile.calibration"]


def linked_images(folder: Path, files: list[Path]) -> Path:
    folder.mkdir()
    for file in files:
        (folder / file.name).symlink_to(file)
    return folder


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory) -> dict:
    """EfficientNet-Lite0 compiled to dfp8 on the first 32 images; the next 64 to score on."""
    if not EFFICIENTNET.is_file() or not IMAGENET.is_dir():
        pytest.skip(f"shared EfficientNet-Lite0 or ImageNet sample not found under {SHARED}")
    files = sorted(IMAGENET.glob("*.jpg"))
    root = tmp_path_factory.mktemp("imagenet")
    calib = linked_images(root / "calib", files[:32])
    val = linked_images(root / "val", files[32:96])
    preprocessing = parse_preprocessing("inception")
    result = rcompile.compile(EFFICIENTNET, "dfp8", calib, preprocessing=preprocessing)
    return {"result": result, "val": val, "preprocessing": preprocessing, "root": root}


def test_efficientnet_dfp8_agrees_with_fp32_on_90_percent_of_images(efficientnet):
    fp32 = onnx.load(EFFICIENTNET)
    data = open_data(efficientnet["val"], input_specs(fp32), efficientnet["preprocessing"])
    reference = predictions(fp32, data, batch_size=32)
    quantized = predictions(efficientnet["result"].model, data, batch_size=32)
    assert score(quantized, data.labels, reference).agreement >= 0.90


def optimized_ops(model: onnx.ModelProto, folder: Path) -> Counter:
    """The op types of `model` as onnxruntime's default (fully optimised) session runs it."""
    optimized = folder / "optimized.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(optimized).graph.node)


def test_efficientnet_dfp8_qdq_fuses_into_at_least_45_integer_convolutions(efficientnet):
    qdq = lower(load_source(EFFICIENTNET).model, efficientnet["result"].plan, "qdq").model
    ops = optimized_ops(qdq, efficientnet["root"])
    assert ops["QLinearConv"] >= 45, f"optimized graph ops: {dict(ops)}"


def test_efficientnet_dfp8_sim_leaves_onnxruntime_no_integer_kernel(efficientnet):
    ops = optimized_ops(efficientnet["result"].model, efficientnet["root"])
    integer = {op for op in ops if op.startswith("QLinear") or op.endswith("Integer")}
    assert ops["Conv"] >= 49 and not integer, f"optimized graph ops: {dict(ops)}"


def test_the_written_model_keeps_the_inputs_metadata_and_documentation(tmp_path):
    """Everything of the input model but its weights survives compilation: metadata entries,
    doc strings, and the calibration data is named without the user's folders."""
    model = onnx.load(LENET)
    model.metadata_props.add(key="character", value="0123456789")
    model.doc_string, model.graph.doc_string = "LeNet-5 for digits", "the graph"
    calib = tmp_path / "deep" / "folder" / "calib.npz"
    calib.parent.mkdir(parents=True)
    shutil.copy(MNIST_CALIB, calib)
    result = rcompile.compile(model, "dfp8", calib, calib_count=32)
    entries = {entry.key: entry.value for entry in result.model.metadata_props}
    assert entries["character"] == "0123456789"
    assert (result.model.doc_string, result.model.graph.doc_string) == (
        "LeNet-5 for digits",
        "the graph",
    )
    assert json.loads(entries["rcompile.calibration"])["source"] == "calib.npz"
    assert str(tmp_path) not in result.model.SerializeToString().decode("latin-1")
