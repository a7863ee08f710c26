"""The search on LeNet-5 fanned out: local worker processes and a local Ray instance make
the same evaluations and the same choice as one process, and a held-out share of the
validation data is kept from every decision and reported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rcompile.data import parse_preprocessing
from rcompile.errors import UserError
from rcompile.search import SearchResult, search

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "mnist_calib.npz"
TEST = ROOT / "models" / "mnist_test.npz"
UNIT = parse_preprocessing("unit")


def run(**options) -> SearchResult:
    return search(LENET, CALIB, TEST, 1.0, preprocessing=UNIT, **options)


def section(found: SearchResult) -> dict:
    return found.result.report.as_dict()["search"]


def history(found: SearchResult) -> list[tuple]:
    return [(row["label"], row["score"], row["drop_bound"]) for row in section(found)["table"]]


@pytest.fixture(scope="module")
def serial() -> SearchResult:
    return run()


def test_two_local_workers_make_the_same_evaluations_and_choice(serial) -> None:
    parallel = run(jobs=2)
    assert section(parallel)["workers"] == 2
    assert history(parallel) == history(serial)
    assert section(parallel)["chosen"] == section(serial)["chosen"]
    assert parallel.result.model.SerializeToString() == serial.result.model.SerializeToString()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_a_local_ray_instance_makes_the_same_evaluations_and_choice(serial) -> None:
    on_ray = run(jobs=2, ray="local")
    assert section(on_ray)["workers"] == 2 and section(on_ray)["ray"] == "local"
    assert history(on_ray) == history(serial)
    assert on_ray.result.model.SerializeToString() == serial.result.model.SerializeToString()


def test_without_ray_installed_the_scale_out_is_refused_in_one_line(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError, match=r'pip install -e "\.\[ray\]"'):
        run(ray="local", budget=5)


def test_a_holdout_is_kept_from_the_search_and_scored_at_the_end(serial) -> None:
    found = run(holdout=0.3)
    details = section(found)
    kept = details["holdout"]
    assert details["samples"] == 700 and kept["samples"] == 300
    assert section(serial)["holdout"] is None and section(serial)["samples"] == 1000
    # the held-out numbers are FP32's and the written model's on the other 300 samples
    held = np.sort(np.random.default_rng(0).permutation(1000)[:300])
    with np.load(TEST) as arrays:
        inputs, labels = arrays["input"][held], arrays["labels"][held]
    for model, key in ((onnx.load(LENET), "fp32_score"), (found.result.model, "chosen_score")):
        assert kept[key] == pytest.approx(100 * np.mean(top1_classes(model, inputs) == labels))
    assert kept["drop"] == pytest.approx(kept["fp32_score"] - kept["chosen_score"])


def top1_classes(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs})[0].argmax(1)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"holdout": 1.0}, "held-out share"),
        ({"holdout": -0.1}, "held-out share"),
        ({"holdout": 0.0001}, "holds out 0"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.2}, "confidence"),
    ],
)
def test_bad_holdout_and_confidence_are_user_errors(options, named) -> None:
    with pytest.raises(UserError, match=named):
        run(budget=5, **options)


def test_a_model_that_is_no_classifier_is_searched_on_output_fidelity(tmp_path) -> None:
    """Without labels and without a (samples, classes) output, the margin is on fidelity:
    a margin of 1 point is noise of 1 % of the output's energy."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "dense",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 8, 8])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "dense.onnx")
    np.savez(tmp_path / "x.npz", x=rng.normal(size=(64, 3, 8, 8)).astype(np.float32))
    found = search(tmp_path / "dense.onnx", tmp_path / "x.npz", tmp_path / "x.npz", 1.0)
    details = section(found)
    assert details["metric"] == "fidelity" and details["fp32_score"] == 100.0
    assert 0 <= details["chosen_drop_bound"] <= 1.0
    # the written model's noise is within 1 % of the signal's energy on every sample
    session = ort.InferenceSession(found.result.model.SerializeToString())
    with np.load(tmp_path / "x.npz") as arrays:
        inputs = arrays["x"]
    reference = ort.InferenceSession(model.SerializeToString()).run(None, {"x": inputs})[0]
    quantized = session.run(None, {"x": inputs})[0]
    noise = np.sum((quantized - reference) ** 2) / np.sum(reference**2)
    assert 0 < noise <= 0.01
