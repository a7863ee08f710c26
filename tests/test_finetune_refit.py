"""Re-choosing activation fractional lengths after fine-tuning: the trained model lowers
again from its plan bit for bit, a changed plan is one compile could make, and the re-choice
moves a badly chosen activation, lowers the loss and writes a model that is bit-true to its
new plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import rcompile_run

import rcompile
from rcompile.api import load_source
from rcompile.data import Dataset
from rcompile.errors import SchemeError
from rcompile.exporter import write_model
from rcompile.plan import PlanOptions
from rcompile.verify import verify

torch = pytest.importorskip("torch", reason="fine-tuning needs PyTorch (the finetune extra)")

from rcompile.finetune import TrainOptions, finetune  # noqa: E402
from rcompile.finetune.export import write_weights  # noqa: E402
from rcompile.finetune.graph import QuantizedGraph  # noqa: E402
from rcompile.finetune.refit import (  # noqa: E402
    OUTPUT,
    Knob,
    activation_knobs,
    lowered,
    plan_of,
    shifted,
    trained_source,
)
from rcompile.formats import DFP  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
LENET = MODELS / "lenet5.onnx"
FC1_OUTPUT = "/fc1/Gemm_output_0"


def _moved_weights(graph: QuantizedGraph) -> dict[str, np.ndarray]:
    """Every shadow moved by a seeded step of its unit, quantized: values that are not the
    compiled ones but still what the storage holds."""
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for weight in graph.weights:
            weight.add_(torch.from_numpy(rng.integers(-1, 2, weight.shape).astype(np.float32)))
    return {name: value.numpy() for name, value in graph.quantized_weights().items()}


@pytest.mark.parametrize(
    ("scheme", "options"),
    [
        ("dfp4", PlanOptions()),
        ("dfp:w4a8", PlanOptions(equalization=True)),
        ("pow2", PlanOptions()),
        ("fp8e4m3", PlanOptions()),
    ],
    ids=["dfp4", "dfp-w4a8-equalized", "pow2", "fp8e4m3"],
)
def test_the_trained_source_lowered_with_its_plan_is_the_finetuned_model(scheme, options):
    """What the re-choice builds on: the FP32 model with the trained values, lowered with
    the model's own plan, is the model `write_weights` stores, node for node, byte for
    byte."""
    compiled = rcompile.compile(LENET, scheme, MODELS / "mnist_calib.npz", options=options).model
    graph = QuantizedGraph(compiled)
    values = _moved_weights(graph)
    stored = write_weights(compiled, values)
    teacher = load_source(LENET)
    source = trained_source(compiled, teacher.model, values, graph.shadows)
    again = lowered(compiled, source, plan_of(compiled, source), teacher.declared_shapes)
    assert stored.graph != compiled.graph
    assert again.graph.SerializeToString() == stored.graph.SerializeToString()


@pytest.fixture(scope="module")
def lenet_dfp8() -> onnx.ModelProto:
    return rcompile.compile(LENET, "dfp8", MODELS / "mnist_calib.npz").model


def test_a_layers_output_and_the_next_layers_input_are_one_knob(lenet_dfp8):
    plan = plan_of(lenet_dfp8, load_source(LENET).model)
    knobs = activation_knobs(plan, load_source(LENET).model.graph)
    by_tensors = {knob.tensors: knob.entries for knob in knobs}
    assert by_tensors[("/conv1/Conv_output_0", "/pool1/MaxPool_output_0")] == {
        ("/conv1/Conv", OUTPUT),
        ("/conv2/Conv", 0),
    }
    assert by_tensors[("input",)] == {("/conv1/Conv", 0)}
    entries = [entry for knob in knobs for entry in knob.entries]
    assert len(entries) == len(set(entries)) == 2 * len(plan.layers)


def test_formats_that_differ_on_one_grid_are_separate_knobs(coarse_fc1):
    """fc1's output forced coarser than fc2 reads it: two knobs, each movable alone."""
    model = onnx.load(str(coarse_fc1))
    plan = plan_of(model, load_source(LENET).model)
    knobs = activation_knobs(plan, load_source(LENET).model.graph)
    assert {("/fc1/Gemm", OUTPUT)} in [knob.entries for knob in knobs]
    assert {("/fc2/Gemm", 0)} in [knob.entries for knob in knobs]


def test_a_finer_input_moves_its_layers_bias_onto_the_finer_product_grid(lenet_dfp8):
    source = load_source(LENET).model
    plan = plan_of(lenet_dfp8, source)
    fc2 = next(p for p in plan.layers if p.layer.node == "/fc2/Gemm")
    knob = Knob(frozenset({("/fc2/Gemm", 0)}), fc2.layer.inputs)
    moved = shifted(plan, knob, 1, {fc2.layer.bias: 0.5})
    after = next(p for p in moved.layers if p.layer.node == "/fc2/Gemm")
    assert after.inputs[0].fl == fc2.inputs[0].fl + 1
    assert [f.fl for f in after.bias] == [f.fl + 1 for f in fc2.bias]
    assert (after.weights, after.output) == (fc2.weights, fc2.output)
    untouched = [p for p in moved.layers if p.layer.node != "/fc2/Gemm"]
    assert untouched == [p for p in plan.layers if p.layer.node != "/fc2/Gemm"]


def test_a_fractional_length_out_of_range_is_no_candidate(lenet_dfp8):
    """Nor is a bias grid finer than the accumulator takes (see `_bias_on_grid`)."""
    plan = plan_of(lenet_dfp8, load_source(LENET).model)
    knob = Knob(frozenset({("/fc3/Gemm", OUTPUT)}), ("logits",))
    fl = plan.layers[-1].output.fl
    low, high = DFP.fl_range(8)
    assert shifted(plan, knob, high - fl, {}) is not None
    assert shifted(plan, knob, high - fl + 1, {}) is None
    assert shifted(plan, knob, low - fl - 1, {}) is None
    first_input = Knob(frozenset({("/conv1/Conv", 0)}), ("input",))
    assert shifted(plan, first_input, 30, {"conv1.bias": 0.5}) is None


@pytest.fixture(scope="module")
def coarse_fc1(tmp_path_factory) -> Path:
    """LeNet-5 dfp8 whose fc1 output is forced three bits coarser than compile chooses."""
    folder = tmp_path_factory.mktemp("coarse")
    chosen = rcompile.compile(LENET, "dfp8", MODELS / "mnist_calib.npz").plan
    fc1 = next(p for p in chosen.layers if p.layer.node == "/fc1/Gemm").output
    overrides = folder / "coarse.json"
    overrides.write_text(json.dumps({"/fc1/Gemm": {"output": f"udfp8f{fc1.fl - 3}"}}))
    result = rcompile.compile(LENET, "dfp8", MODELS / "mnist_calib.npz", overrides=overrides).model
    return write_model(result, folder / "coarse.onnx")


@pytest.fixture(scope="module")
def refitted(coarse_fc1, tmp_path_factory):
    data = tmp_path_factory.mktemp("refit") / "train.npz"
    np.savez(data, input=np.load(MODELS / "mnist_train.npz")["input"][:256])
    options = TrainOptions(epochs=0, rounding_steps=2, refit_activations=True)
    return finetune(coarse_fc1, data, options=options, teacher=LENET)


def test_refit_makes_a_too_coarse_activation_finer_and_lowers_the_loss(coarse_fc1, refitted):
    before = plan_of(onnx.load(str(coarse_fc1)), load_source(LENET).model)
    after = plan_of(refitted.model, load_source(LENET).model)
    fc1 = [next(p for p in plan.layers if p.layer.node == "/fc1/Gemm") for plan in (before, after)]
    assert fc1[1].output.fl > fc1[0].output.fl
    change = next(c for c in refitted.refits if FC1_OUTPUT in c.tensors)
    assert change.after == [fc1[1].output.name]
    assert all(c.loss_after < c.loss_before for c in refitted.refits)
    assert [c.loss_before for c in refitted.refits[1:]] == [
        c.loss_after for c in refitted.refits[:-1]
    ]
    assert refitted.refits[-1].loss_after < 0.9 * refitted.refits[0].loss_before
    for old, new in zip(before.layers, after.layers, strict=True):
        assert (old.weights, old.accumulator) == (new.weights, new.accumulator)
        assert [f.bw for f in (*old.inputs, old.output)] == [
            f.bw for f in (*new.inputs, new.output)
        ]


def test_the_refitted_model_is_bit_true_to_its_new_plan(coarse_fc1, refitted):
    images = np.load(MODELS / "mnist_test.npz")["input"][:64]
    data = Dataset("test", len(images), lambda a, b: {"input": images[a:b]})
    assert verify(refitted.model, data, None, 32, "refitted").exact
    assert len(refitted.model.SerializeToString()) <= coarse_fc1.stat().st_size


def test_a_plan_without_fixed_point_activations_is_refused_before_training(tmp_path):
    compiled = rcompile.compile(LENET, "fp8e4m3", MODELS / "mnist_calib.npz").model
    path = write_model(compiled, tmp_path / "fp8.onnx")
    data = tmp_path / "train.npz"
    np.savez(data, input=np.load(MODELS / "mnist_train.npz")["input"][:64])
    options = TrainOptions(epochs=0, rounding_steps=2, refit_activations=True)
    with pytest.raises(SchemeError, match="plan has none"):
        finetune(path, data, options=options, teacher=LENET)


def test_refit_is_reported_on_the_command_line(coarse_fc1, tmp_path):
    data = tmp_path / "train.npz"
    np.savez(data, input=np.load(MODELS / "mnist_train.npz")["input"][:256])
    output = tmp_path / "refit.onnx"
    flags = ("--epochs", "0", "--rounding-steps", "2", "--teacher", LENET)
    result = rcompile_run(
        "finetune", coarse_fc1, "--train", data, "-o", output, *flags, "--refit-activations"
    )
    assert result.returncode == 0, result.stderr
    assert "refit activations: " in result.stdout and FC1_OUTPUT in result.stdout
    record = json.loads((tmp_path / "refit.finetune.json").read_text())
    assert record["options"]["refit_activations"] is True
    assert any(FC1_OUTPUT in change["tensors"] for change in record["refit_activations"])
