"""The report of LeNet-5 in dfp8: per-layer MACs, parameters, memory and multiplier widths,
totals against FP32, accuracy, the FP32 ops, JSON round trip and the Markdown rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rcompile
from rcompile.report_markdown import render_markdown

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
MNIST_CALIB = ROOT / "models" / "mnist_calib.npz"
MNIST_TEST = ROOT / "models" / "mnist_test.npz"
NODES = ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm", "/fc3/Gemm"]
MACS = [117600, 240000, 48000, 10080, 840]
PARAMETERS = [156, 2416, 48120, 10164, 850]
BIASES = [6, 16, 120, 84, 10]
FP32_TOP1 = 0.979


@pytest.fixture(scope="module")
def report() -> dict:
    result = rcompile.compile(LENET, "dfp8", MNIST_CALIB, val=MNIST_TEST)
    return result.report.as_dict()


def test_schema_version_is_1(report):
    assert report["schema_version"] == 1


def test_there_is_one_row_per_quantized_layer(report):
    assert [row["node"] for row in report["layers"]] == NODES


def test_layer_macs_per_sample(report):
    assert [row["macs"] for row in report["layers"]] == MACS


def test_layer_parameter_counts(report):
    assert [row["parameters"] for row in report["layers"]] == PARAMETERS


def test_parameter_memory_is_8_bits_per_weight_and_32_per_bias(report):
    expected = [(p - b) * 8 + b * 32 for p, b in zip(PARAMETERS, BIASES, strict=True)]
    assert [row["parameter_memory_bits"] for row in report["layers"]] == expected


def test_totals_sum_the_layers(report):
    totals = report["totals"]
    assert totals["layers"] == 5
    assert totals["macs"] == sum(MACS)
    assert totals["parameters"] == sum(PARAMETERS)
    assert totals["fp32_parameter_memory_bits"] == 32 * sum(PARAMETERS)
    memory = sum(row["parameter_memory_bits"] for row in report["layers"])
    assert totals["parameter_memory_bits"] == memory


def test_parameters_compress_more_than_3_5_times(report):
    assert report["totals"]["parameter_compression"] > 3.5


def test_every_multiplier_is_8_by_8(report):
    multipliers = [row["multiplier"] for row in report["layers"]]
    assert all(
        (m["weight_bits"], m["activation_bits"], m["kind"]) == (8, 8, "multiply")
        for m in multipliers
    )


def test_layer_formats_are_described(report):
    formats = report["layers"][0]["formats"]
    assert formats["inputs"][0]["family"] == "dfp"
    assert formats["weights"]["per_channel"] is True
    assert formats["bias"]["bits"] == 32
    assert formats["output"]["signed"] is False  # a Relu follows conv1


def test_accuracy_has_fp32_and_quantized_scores(report):
    accuracy = report["accuracy"]
    assert accuracy["samples"] == 1000
    assert accuracy["fp32"]["top1"] == pytest.approx(FP32_TOP1)
    assert set(accuracy["quantized"]) >= {"top1", "top5", "agreement"}


def test_quantized_top1_is_within_0_3_points_of_fp32(report):
    assert abs(report["accuracy"]["quantized"]["top1"] - FP32_TOP1) <= 0.003


def test_calibration_names_its_source_and_samples(report):
    assert report["calibration"] == {"source": str(MNIST_CALIB), "samples": 500}


def test_unquantized_ops_are_counted(report):
    assert report["unquantized_ops"] == {"Flatten": 1, "MaxPool": 2, "Relu": 4}


def test_software_versions_are_listed(report):
    assert report["software"]["rcompile"] == rcompile.__version__
    assert {"numpy", "onnx"} <= set(report["software"])


def test_report_round_trips_through_json(report):
    assert json.loads(json.dumps(report)) == report


def test_markdown_has_the_layer_table(report):
    text = render_markdown(report)
    assert "| layer | op | MACs | params | input | weights | bias | output |" in text
    assert "| `/conv1/Conv` | Conv | 117,600 | 156 |" in text
    assert all(f"`{node}`" in text for node in NODES)


def test_markdown_has_the_accuracy_table(report):
    text = render_markdown(report)
    assert "| model | top-1 | top-5 | top-1 agreement with FP32 |" in text
    assert "| fp32 | 97.90 % |" in text
    assert "| quantized |" in text


def test_markdown_lists_the_fp32_ops(report):
    assert "Flatten x1, MaxPool x2, Relu x4" in render_markdown(report)


def test_a_scaled_mini_float_layer_reports_each_channels_exponent_bias_and_range():
    """fp8e4m3 gives every weight channel its own exponent bias; the report names the span
    of biases and the effective exponents (smallest normal to largest value), and the bias
    sits in the 32-bit accumulator on the products' grid."""
    result = rcompile.compile(LENET, "fp8e4m3", MNIST_CALIB)
    formats = result.report.as_dict()["layers"][2]["formats"]  # fc1: 120 channels
    weights = formats["weights"]
    low, high = min(weights["exponent_bias"]), max(weights["exponent_bias"])
    assert weights["name"] == f"fp8e4m3fnb{low}..{high}" and low > 7
    assert weights["exponent_range"][1] < 8  # below the standard format's 2**8
    activation = formats["inputs"][0]
    assert activation["exponent_range"] == [
        1 - activation["exponent_bias"],
        8 + 7 - activation["exponent_bias"],
    ]
    assert formats["bias"]["family"] == "dfp" and formats["bias"]["bits"] == 32
