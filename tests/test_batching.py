"""Batching: models with a fixed batch dimension get batches of exactly that size (a partial
last batch is left out); models with a dynamic one get the batch size asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rcompile.batching import fixed_batch_size, model_batches
from rcompile.data import Dataset
from rcompile.onnx_ops import IR_VERSION, OPSET

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"


def lenet_with_batch(size: int | None) -> onnx.ModelProto:
    """LeNet-5 with its input's batch dimension fixed to `size` (None keeps it dynamic)."""
    model = onnx.load(LENET)
    if size is not None:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = size
    return model


def images(count: int) -> Dataset:
    values = np.arange(count * 28 * 28, dtype=np.float32).reshape(count, 1, 28, 28)
    labels = np.arange(count) % 10
    return Dataset("memory", count, lambda start, stop: {"input": values[start:stop]}, labels)


def batch_sizes(model: onnx.ModelProto, count: int, batch_size: int, limit=None) -> list[int]:
    return [len(b.inputs["input"]) for b in model_batches(model, images(count), batch_size, limit)]


def test_dynamic_batch_dimension_is_not_fixed():
    assert fixed_batch_size(lenet_with_batch(None)) is None


@pytest.mark.parametrize("size", [1, 4])
def test_fixed_batch_dimension_is_read_from_the_input(size):
    assert fixed_batch_size(lenet_with_batch(size)) == size


def test_model_with_fixed_batch_1_gets_batches_of_1():
    assert batch_sizes(lenet_with_batch(1), count=5, batch_size=32) == [1, 1, 1, 1, 1]


def test_model_with_fixed_batch_4_drops_the_partial_last_batch():
    assert batch_sizes(lenet_with_batch(4), count=10, batch_size=32) == [4, 4]


def test_fixed_batch_applies_after_the_sample_limit():
    assert batch_sizes(lenet_with_batch(4), count=10, batch_size=32, limit=6) == [4]


def test_dynamic_model_gets_the_asked_batch_size_and_a_partial_last_batch():
    assert batch_sizes(lenet_with_batch(None), count=10, batch_size=4) == [4, 4, 2]


def test_dynamic_model_batches_stop_at_the_sample_limit():
    assert batch_sizes(lenet_with_batch(None), count=10, batch_size=4, limit=6) == [4, 2]


def test_batches_keep_their_labels():
    labels = [b.labels.tolist() for b in model_batches(lenet_with_batch(4), images(10), 32)]
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_inputs_with_different_fixed_batch_sizes_have_no_fixed_size():
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
    ]
    node = helper.make_node("Concat", ["a", "b"], ["y"], name="concat", axis=0)
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])
    graph = helper.make_graph([node], "g", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    assert fixed_batch_size(model) is None
