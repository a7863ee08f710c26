"""Calibration: activation ranges are the running min and max over every batch, weight ranges
are per output channel along the layer's axis, and NaN or inf is stopped with the tensor's name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor
from onnx import helper, numpy_helper

from rcompile.errors import CalibrationError, ModelImportError
from rcompile.passes import calibrate
from rcompile.passes.calibrate import (
    Range,
    activation_ranges,
    activation_tensors,
    weight_ranges,
)
from rcompile.passes.layers import find_layers

F32 = np.float32


def constant(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=F32), name)


SCALE = np.array([1.0, 2.0, -1.0, 0.5], dtype=F32)  # powers of two: exact in any order


def scale_relu_model() -> onnx.ModelProto:
    """x (N, 4) -> Mul by SCALE -> h -> Relu -> y: exact arithmetic, so NumPy agrees bit for bit."""
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["h"], name="mul"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    return make_model(
        nodes, [tensor("x", ["N", 4])], [tensor("y", ["N", 4])], [constant("scale", SCALE)]
    )


def batches(seed: int, sizes=(3, 5, 2)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(scale=3.0, size=(n, 4)).astype(F32)} for n in sizes]


def test_activation_ranges_are_min_and_max_over_every_batch():
    data = batches(seed=0)
    ranges = activation_ranges(scale_relu_model(), ["x", "h", "y"], data).ranges
    x = np.concatenate([batch["x"] for batch in data])
    h = x * SCALE
    expected = {name: Range(float(v.min()), float(v.max())) for name, v in (("x", x), ("h", h))}
    expected["y"] = Range(float(np.maximum(h, 0).min()), float(np.maximum(h, 0).max()))
    assert ranges == expected


def test_activation_ranges_count_the_samples_of_every_batch():
    samples = activation_ranges(scale_relu_model(), ["x", "y"], batches(seed=0)).samples
    assert samples == 10


@pytest.mark.parametrize("budget", [1, 48, 10**9], ids=["one-sample", "a-few", "whole"])
def test_batches_run_in_parts_that_fit_the_budget_with_the_same_ranges(budget, monkeypatch):
    """One sample's three observed tensors take 48 bytes: a budget of 1 byte runs every
    sample alone, 48 one at a time, and a large one whole batches; the ranges and the count
    do not change, and no run returns more than the budget (after the first sample)."""
    data = batches(seed=0, sizes=(7, 5))
    whole = activation_ranges(scale_relu_model(), ["x", "h", "y"], data, 10**9).ranges
    runs = []
    real = calibrate.open_session

    def counting(model):
        session = real(model)

        class Counted:
            def run(self, names, inputs):
                runs.append(len(inputs["x"]))
                return session.run(names, inputs)

        return Counted()

    monkeypatch.setattr(calibrate, "open_session", counting)
    observed = activation_ranges(scale_relu_model(), ["x", "h", "y"], data, budget)
    ranges, samples = observed.ranges, observed.samples
    assert (ranges, samples) == (whole, 12)
    assert runs[0] == 1 and sum(runs) == 12
    assert max(runs[1:]) == {1: 1, 48: 1, 10**9: 6}[budget]


@pytest.mark.parametrize("budget", [1, 10**9], ids=["one-sample", "whole"])
def test_channel_means_are_those_of_all_samples_however_batches_split(budget):
    """The per-channel means bias correction reads: along the given axis, over every sample
    of every batch, the same whether batches run whole or a sample at a time."""
    data = batches(seed=2, sizes=(7, 5))
    axes = {"x": 1, "h": -1}
    observed = activation_ranges(scale_relu_model(), ["x", "h"], data, budget, channel_axes=axes)
    x = np.concatenate([batch["x"] for batch in data]).astype(np.float64)
    assert set(observed.means) == {"x", "h"}
    np.testing.assert_allclose(observed.means["x"], x.mean(axis=0), rtol=1e-12)
    h = (x.astype(F32) * SCALE).astype(np.float64)
    np.testing.assert_allclose(observed.means["h"], h.mean(axis=0), rtol=1e-6)


def test_a_model_with_a_fixed_batch_size_gets_its_batches_whole():
    """A model exported for batches of exactly 4 cannot take one sample: the budget does
    not split its batches."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [tensor("x", [4, 4])], [tensor("y", [4, 4])], [])
    data = [{"x": np.full((4, 4), value, F32)} for value in (-1.0, 2.0)]
    observed = activation_ranges(model, ["x", "y"], data, budget=1)
    ranges, samples = observed.ranges, observed.samples
    assert samples == 8 and ranges["y"] == Range(0.0, 2.0)


def test_activation_ranges_accept_a_generator_of_batches():
    observed = activation_ranges(scale_relu_model(), ["y"], iter(batches(seed=1)))
    ranges, samples = observed.ranges, observed.samples
    assert samples == 10
    assert ranges["y"].min == 0.0


def test_activation_ranges_of_no_batches_raise():
    with pytest.raises(CalibrationError, match="no samples"):
        activation_ranges(scale_relu_model(), ["x"], [])


def log_matmul_model() -> onnx.ModelProto:
    """x -> Log -> logged -> MatMul (a layer): the layer's input is computed inside the model."""
    nodes = [
        helper.make_node("Log", ["x"], ["logged"], name="log"),
        helper.make_node("MatMul", ["logged", "w"], ["y"], name="matmul"),
    ]
    weight = constant("w", np.eye(4))
    return make_model(nodes, [tensor("x", ["N", 4])], [tensor("y", ["N", 4])], [weight])


def test_nan_computed_inside_the_model_raises_naming_the_tensor():
    model = log_matmul_model()
    tensors = activation_tensors(find_layers(model))
    data = [{"x": np.full((2, 4), 2.0, F32)}, {"x": np.full((2, 4), -1.0, F32)}]
    with pytest.raises(CalibrationError, match="tensor 'logged' holds NaN or inf"):
        activation_ranges(model, tensors, data)


def test_inf_computed_inside_the_model_raises_naming_the_tensor():
    model = log_matmul_model()
    data = [{"x": np.zeros((2, 4), F32)}]
    with pytest.raises(CalibrationError, match="'logged'"):
        activation_ranges(model, activation_tensors(find_layers(model)), data)


def test_activation_tensors_lists_each_quantized_tensor_once_in_graph_order():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="second"),
        helper.make_node("MatMul", ["a", "b"], ["y"], name="third"),
    ]
    model = make_model(
        nodes, [tensor("x", [4, 4])], [tensor("y", [4, 4])], [constant("w", np.eye(4))]
    )
    assert activation_tensors(find_layers(model)) == ["x", "a", "b", "y"]


def weighted_model(seed: int = 0, weight_nan: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Conv (4, 2, 3, 3) with bias, then Gemm with transB=0 (weight (K, 5)) and a MatMul."""
    rng = np.random.default_rng(seed)
    values = {
        "conv_w": rng.normal(size=(4, 2, 3, 3)) * np.array([1, 10, 0.1, 3]).reshape(4, 1, 1, 1),
        "conv_b": rng.normal(size=4),
        "gemm_w": rng.normal(size=(36, 5)) * np.array([1, 0.2, 5, 2, 0.5]),
        "matmul_w": rng.normal(size=(5, 3)) * np.array([4, 1, 0.25]),
    }
    values = {name: value.astype(F32) for name, value in values.items()}
    if weight_nan:
        values["gemm_w"][3, 2] = np.nan
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gemm_w"], ["g"], name="gemm"),
        helper.make_node("MatMul", ["g", "matmul_w"], ["y"], name="matmul"),
    ]
    initializers = [constant(name, value) for name, value in values.items()]
    model = make_model(nodes, [tensor("x", ["N", 2, 5, 5])], [tensor("y", ["N", 3])], initializers)
    return model, values


def test_weight_ranges_give_the_overall_min_and_max():
    model, values = weighted_model()
    ranges = weight_ranges(model, find_layers(model))
    weight = values["conv_w"]
    assert ranges["conv_w"].overall == Range(float(weight.min()), float(weight.max()))


@pytest.mark.parametrize(("name", "axis"), [("conv_w", 0), ("gemm_w", 1), ("matmul_w", 1)])
def test_weight_channel_maxima_are_taken_along_the_output_channel_axis(name, axis):
    model, values = weighted_model()
    ranges = weight_ranges(model, find_layers(model))
    weight = values[name]
    others = tuple(a for a in range(weight.ndim) if a != axis)
    expected = np.abs(weight).max(axis=others)
    assert ranges[name].channel_max_abs == tuple(float(v) for v in expected)


@pytest.mark.parametrize(("name", "axis"), [("conv_w", 0), ("gemm_w", 1), ("matmul_w", 1)])
def test_weight_channels_hold_each_output_channels_values_in_a_row(name, axis):
    model, values = weighted_model()
    ranges = weight_ranges(model, find_layers(model))
    weight = values[name]
    channels = ranges[name].channels
    assert channels.shape == (weight.shape[axis], weight.size // weight.shape[axis])
    for index in range(weight.shape[axis]):
        np.testing.assert_array_equal(channels[index], np.take(weight, index, axis).ravel())


def test_bias_ranges_are_per_element():
    model, values = weighted_model()
    ranges = weight_ranges(model, find_layers(model))
    bias = values["conv_b"]
    assert ranges["conv_b"].channel_max_abs == tuple(float(v) for v in np.abs(bias))


def test_nan_in_a_weight_raises_naming_the_parameter_and_the_layer():
    model, _ = weighted_model(weight_nan=True)
    with pytest.raises(ModelImportError, match="parameter 'gemm_w' of layer 'gemm'"):
        weight_ranges(model, find_layers(model))


def test_inf_in_a_bias_raises_naming_the_parameter_and_the_layer():
    model, values = weighted_model()
    values["conv_b"][1] = np.inf
    bias = next(t for t in model.graph.initializer if t.name == "conv_b")
    bias.CopyFrom(constant("conv_b", values["conv_b"]))
    with pytest.raises(ModelImportError, match="parameter 'conv_b' of layer 'conv'"):
        weight_ranges(model, find_layers(model))


def test_range_max_abs_is_the_larger_magnitude():
    assert Range(-5.0, 3.0).max_abs == 5.0


def test_ranges_merge_to_the_enclosing_interval():
    assert Range(-1.0, 2.0).merged(Range(0.5, 4.0)) == Range(-1.0, 4.0)
