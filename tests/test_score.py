"""Scoring: top-1 and top-5 against labels, top-1 agreement with a reference, and the class
scores of a model streamed in the batches it accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rcompile.data import Dataset
from rcompile.errors import CalibrationError
from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.score import Scores, predictions, score

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
MNIST_TEST = ROOT / "models" / "mnist_test.npz"

# Four samples, six classes; each row's classes in descending score order are noted.
SCORES = np.array(
    [
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # 1, then 0, then 2..5
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # 0 1 2 3 4 5
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # 5 4 3 2 1 0
        [0.2, 0.2, 0.9, 0.2, 0.2, 0.2],  # 2, then ties in index order 0 1 3 4 5
    ],
    dtype=np.float32,
)


def test_top1_is_the_share_of_samples_whose_best_class_is_the_label():
    assert score(SCORES, np.array([1, 0, 0, 2])).top1 == 0.75


def test_top5_is_the_share_whose_label_is_among_the_five_best():
    assert score(SCORES, np.array([0, 4, 0, 5])).top5 == 0.5


def test_ties_rank_the_lower_class_index_first():
    result = score(SCORES, np.array([1, 1, 1, 0]))
    assert result.top1 == 0.25  # only the first sample; row 4's best is class 2
    assert score(SCORES[3:], np.array([5])).top5 == 0.0  # 2 0 1 3 4 come before 5


def test_agreement_is_the_share_of_samples_with_the_reference_best_class():
    reference = np.eye(6, dtype=np.float32)[[1, 0, 0, 2]]
    assert score(SCORES, None, reference).agreement == 0.75


def test_without_labels_only_agreement_is_scored():
    assert score(SCORES, None, SCORES) == Scores(samples=4, agreement=1.0)


def test_without_reference_there_is_no_agreement():
    assert score(SCORES, np.array([1, 0, 5, 2])).agreement is None


def test_labels_beyond_the_scored_samples_are_ignored():
    assert score(SCORES[:2], np.array([1, 0, 3, 3, 3])) == Scores(2, top1=1.0, top5=1.0)


def test_scores_convert_to_a_dict():
    assert Scores(3, top1=0.5).as_dict() == {
        "samples": 3,
        "top1": 0.5,
        "top5": None,
        "agreement": None,
    }


def mnist(count: int) -> Dataset:
    with np.load(MNIST_TEST) as data:
        values, labels = data["input"][:count], data["labels"][:count]
    return Dataset("mnist", count, lambda start, stop: {"input": values[start:stop]}, labels)


def lenet_with_batch(size: int | None) -> onnx.ModelProto:
    model = onnx.load(LENET)
    if size is not None:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = size
    return model


def test_predictions_give_one_row_of_class_scores_per_sample():
    assert predictions(lenet_with_batch(None), mnist(10), batch_size=4).shape == (10, 10)


def test_model_with_fixed_batch_1_is_scored_one_sample_at_a_time():
    dynamic = predictions(lenet_with_batch(None), mnist(10), batch_size=32)
    fixed = predictions(lenet_with_batch(1), mnist(10), batch_size=32)
    np.testing.assert_allclose(fixed, dynamic, rtol=1e-5, atol=1e-5)


def test_model_with_fixed_batch_4_is_scored_on_whole_batches_only():
    assert predictions(lenet_with_batch(4), mnist(10), batch_size=32).shape == (8, 10)


def test_output_that_is_not_samples_by_classes_raises():
    node = helper.make_node("Identity", ["input"], ["y"], name="identity")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 28, 28])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    with pytest.raises(CalibrationError, match="scoring needs"):
        predictions(model, mnist(2), batch_size=2)
