"""`rcompile vectors`: golden vectors a testbench can diff against, re-derived here from
their own codes with plain integer arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import rcompile_run
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import rcompile
from rcompile.exporter import write_model
from rcompile.formats import parse_format

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "mnist_calib.npz"
TEST = ROOT / "models" / "mnist_test.npz"
SAMPLES = 3


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("vectors")
    result = rcompile.compile(LENET, "dfp8", CALIB, calib_count=100)
    model = write_model(result.model, folder / "lenet5_dfp8.onnx")
    run = rcompile_run("vectors", model, "--data", TEST, "--count", SAMPLES, "-o", folder / "out")
    assert run.returncode == 0, run.stderr
    out = folder / "out"
    return {
        "model": model,
        "folder": out,
        "manifest": json.loads((out / "manifest.json").read_text()),
        "arrays": dict(np.load(out / "vectors.npz")),
    }


def exact_conv(x: np.ndarray, w: np.ndarray, attributes: dict) -> np.ndarray:
    """The convolution of integer codes by onnx.reference in float64 (exact at these sizes)."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attributes)
    values = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in "xwy"]
    model = helper.make_model(helper.make_graph([node], "conv", values[:2], values[2:]))
    feeds = {"x": x[None].astype(np.float64), "w": w.astype(np.float64)}
    return ReferenceEvaluator(model).run(None, feeds)[0][0].astype(np.int64)


def rederived_accumulator(layer: dict, sample: dict, arrays: dict) -> np.ndarray:
    tensors = layer["tensors"]
    x = arrays[sample["tensors"]["input0"]["npz"]]
    w = arrays[tensors["weights"]["npz"]]
    if layer["op_type"] == "Conv":
        attributes = {k: v for k, v in layer["attributes"].items() if k != "kernel_shape"}
        total, shape = exact_conv(x, w, attributes), (-1, 1, 1)
    else:
        total, shape = x @ (w.T if layer["attributes"].get("transB") else w), (-1,)
    product = sample["tensors"]["input0"]["exponents"][0] + np.array(
        tensors["weights"]["exponents"]
    )
    grid = np.array(sample["tensors"]["accumulator"]["exponents"])
    total = total * (2 ** np.broadcast_to(product - grid, grid.shape)).reshape(shape)
    return total + arrays[tensors["bias"]["npz"]].reshape(shape)


def test_every_accumulator_is_the_exact_sum_of_its_codes_plus_bias(vectors):
    for layer in vectors["manifest"]["layers"]:
        assert len(layer["samples"]) == SAMPLES
        for sample in layer["samples"]:
            expected = rederived_accumulator(layer, sample, vectors["arrays"])
            assert np.array_equal(
                vectors["arrays"][sample["tensors"]["accumulator"]["npz"]], expected
            )


def test_every_output_is_its_accumulator_rounded_once_to_the_output_format(vectors):
    arrays = vectors["arrays"]
    for layer in vectors["manifest"]["layers"]:
        fmt = parse_format(layer["formats"]["output"])
        for sample in layer["samples"]:
            accumulator = sample["tensors"]["accumulator"]
            grid = np.array(accumulator["exponents"]).reshape(
                (-1, 1, 1) if layer["op_type"] == "Conv" else -1
            )
            value = np.ldexp(arrays[accumulator["npz"]].astype(np.float32), grid)  # exact
            output = sample["tensors"]["output"]
            assert np.array_equal(
                arrays[output["npz"]] * 2.0 ** output["exponents"][0], fmt.quantize(value)
            )


def test_the_last_layers_output_codes_are_the_models_logits(vectors):
    data = np.load(TEST)
    session = ort.InferenceSession(str(vectors["model"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": data["input"][:SAMPLES]})[0]
    last = vectors["manifest"]["layers"][-1]
    for sample in last["samples"]:
        output = sample["tensors"]["output"]
        codes = vectors["arrays"][output["npz"]]
        assert np.array_equal(codes * 2.0 ** output["exponents"][0], logits[sample["sample"]])


def test_hex_files_hold_the_same_codes_in_twos_complement(vectors):
    for layer in vectors["manifest"]["layers"]:
        entries = list(layer["tensors"].values())
        entries += [t for sample in layer["samples"] for t in sample["tensors"].values()]
        for entry in entries:
            lines = (vectors["folder"] / entry["hex"]).read_text().split()
            codes = np.array([int(line, 16) for line in lines], dtype=object)
            if entry["signed"]:
                codes = np.where(
                    codes >= 2 ** (entry["bits"] - 1), codes - 2 ** entry["bits"], codes
                )
            expected = vectors["arrays"][entry["npz"]].ravel()
            assert len(lines) == np.prod(entry["shape"]) and np.array_equal(
                codes.astype(np.int64), expected
            )
            assert all(len(line) == -(-entry["bits"] // 4) for line in lines)


def test_a_folder_with_files_in_it_is_refused_and_left_alone(vectors, tmp_path):
    kept = tmp_path / "mine.txt"
    kept.write_text("keep me")
    run = rcompile_run("vectors", vectors["model"], "--data", TEST, "-o", tmp_path)
    assert run.returncode == 1 and "not an empty folder" in run.stderr
    assert run.stderr.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "mine.txt"
    ]
    assert kept.read_text() == "keep me"


def test_a_model_without_a_plan_is_refused(tmp_path):
    run = rcompile_run("vectors", LENET, "--data", TEST, "-o", tmp_path / "out")
    assert run.returncode == 1 and "no rcompile plan" in run.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_a_plan_that_names_layers_the_model_lacks_is_refused(tmp_path):
    model = onnx.load(LENET)
    model.metadata_props.add(key="rcompile.plan", value=json.dumps({"layers": [{"node": "nope"}]}))
    path = tmp_path / "fake.onnx"
    onnx.save(model, path)
    run = rcompile_run("vectors", path, "--data", TEST, "-o", tmp_path / "out")
    assert run.returncode == 1 and "planned layer 'nope' is not in the model" in run.stderr
    assert not (tmp_path / "out").exists()
