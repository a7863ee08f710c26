"""Fine-tuning: the torch quantizers equal the reference, the torch graph equals onnxruntime,
and fine-tuning keeps the plan, runs on stock onnxruntime and is deterministic for a seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_same_bits, rounded_formats, sweep_formats, sweep_inputs
from onnx import helper

import rcompile
from rcompile.exporter import write_model

torch = pytest.importorskip("torch", reason="fine-tuning needs PyTorch (the finetune extra)")

from rcompile.finetune import TrainOptions, finetune  # noqa: E402
from rcompile.finetune.graph import QuantizedGraph, float_arrays  # noqa: E402
from rcompile.finetune.quantizers import per_channel, quantize  # noqa: E402
from rcompile.formats import DFP, Pow2  # noqa: E402
from rcompile.passes.store_weights import quantize_values  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.mark.parametrize("seed", [None, 7], ids=["nearest", "stochastic"])
def test_torch_quantizers_equal_the_reference_bit_for_bit(seed):
    x = sweep_inputs()
    for fmt in sweep_formats():
        got = quantize(torch.from_numpy(x), fmt, seed).numpy()
        assert_same_bits(fmt, x, fmt.quantize(x, seed=seed), got)


def test_torch_quantizers_round_by_every_mode_as_the_reference():
    x = sweep_inputs()
    for fmt in rounded_formats():
        got = quantize(torch.from_numpy(x), fmt).numpy()
        assert_same_bits(fmt, x, fmt.quantize(x), got)


@pytest.mark.parametrize("axis", [0, 1])
def test_vectorised_per_channel_quantizers_equal_the_reference(axis):
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(8, 6, 3)) * rng.uniform(0.01, 4, size=(8, 1, 1))).astype(np.float32)
    values = np.moveaxis(values, 0, axis).copy()
    for formats in (
        tuple(DFP(4, int(fl)) for fl in rng.integers(-2, 9, 8)),
        tuple(DFP(6, int(fl), rounding="up") for fl in rng.integers(-2, 9, 8)),
        tuple(
            Pow2(int(low), int(low) + 5, bool(z))
            for low, z in zip(rng.integers(-9, -2, 8), rng.integers(0, 2, 8), strict=True)
        ),
    ):
        got = per_channel(torch.from_numpy(values), formats, axis).numpy()
        expected = quantize_values(values, formats, axis)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_straight_through_gradient_is_one_inside_the_range_and_zero_outside():
    x = torch.tensor([0.3, -0.7, 5.0, -9.0], requires_grad=True)
    per_channel(x, (DFP(4, 1),), 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compiled")
    paths = {}
    for scheme in ("dfp4", "pow2", "fp8e4m3"):
        result = rcompile.compile(MODELS / "lenet5.onnx", scheme, MODELS / "mnist_calib.npz")
        paths[scheme] = write_model(result.model, folder / f"lenet5_{scheme}.onnx")
    return paths


@pytest.mark.parametrize("scheme", ["dfp4", "pow2", "fp8e4m3"])
def test_torch_execution_equals_onnxruntime_on_real_images(compiled, scheme):
    """The engine sums in float32, the sim model exactly: equal for DFP and power-of-two
    LeNet-5; scaled fp8 weights keep 4 significant bits down to tiny values, so a float32
    sum can round a step, which later layers carry on: at most 1 logit in 1,000 differs."""
    model = onnx.load(str(compiled[scheme]))
    images = np.load(MODELS / "mnist_test.npz")["input"][:256]
    with torch.no_grad():
        torch_logits = QuantizedGraph(model)(float_arrays({"input": images})).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": images})[0]
    if scheme != "fp8e4m3":
        np.testing.assert_allclose(torch_logits, expected, atol=1e-4)
        return
    assert np.mean(~np.isclose(torch_logits, expected, rtol=0, atol=1e-4)) <= 1e-3
    assert np.mean(torch_logits.argmax(1) == expected.argmax(1)) == 1.0


@pytest.mark.skipif(
    not (SHARED / "models" / "efficientnet_lite0.onnx").is_file(),
    reason="no shared EfficientNet-Lite0",
)
def test_torch_execution_of_efficientnet_agrees_with_onnxruntime(tmp_path):
    images = SHARED / "data" / "imagenet-sample-dev"
    calib = tmp_path / "calib"
    calib.mkdir()
    for file in sorted(images.glob("*.jpg"))[:8]:
        (calib / file.name).symlink_to(file)
    from rcompile.data import input_specs, open_data, parse_preprocessing

    preprocessing = parse_preprocessing("inception")
    result = rcompile.compile(
        SHARED / "models" / "efficientnet_lite0.onnx", "dfp8", calib, preprocessing=preprocessing
    )
    batch = next(open_data(calib, input_specs(result.model), preprocessing).batches(8)).inputs
    with torch.no_grad():
        torch_logits = QuantizedGraph(result.model)(float_arrays(batch)).numpy()
    session = ort.InferenceSession(
        result.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ort_logits = session.run(None, batch)[0]
    assert np.mean(torch_logits.argmax(1) == ort_logits.argmax(1)) >= 7 / 8
    assert np.median(np.abs(torch_logits - ort_logits)) < 0.05


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    train, test = np.load(MODELS / "mnist_train.npz"), np.load(MODELS / "mnist_test.npz")
    np.savez(folder / "train.npz", input=train["input"][:512], labels=train["labels"][:512])
    np.savez(folder / "val.npz", input=test["input"][:200], labels=test["labels"][:200])
    return folder / "train.npz", folder / "val.npz"


def _quantizers(model: onnx.ModelProto) -> list[tuple]:
    return [
        (
            n.name,
            n.op_type,
            n.overload,
            tuple((a.name, helper.get_attribute_value(a)) for a in n.attribute),
        )
        for n in model.graph.node
        if n.domain == "ai.rcompile"
    ]


def _plan(model: onnx.ModelProto) -> str:
    return next(p.value for p in model.metadata_props if p.key == "rcompile.plan")


@pytest.fixture(scope="module")
def tuned(compiled, small_data):
    train, val = small_data
    options = TrainOptions(epochs=2, batch_size=64, seed=3)
    return [finetune(compiled["dfp4"], train, val, options) for _ in range(2)]


def test_finetuning_keeps_every_quantizer_and_the_plan(compiled, tuned):
    before = onnx.load(str(compiled["dfp4"]))
    assert _quantizers(tuned[0].model) == _quantizers(before)
    assert _plan(tuned[0].model) == _plan(before)


def test_finetuned_model_changes_weights_and_runs_on_stock_onnxruntime(compiled, tuned):
    before = {t.name: t.raw_data for t in onnx.load(str(compiled["dfp4"])).graph.initializer}
    after = {t.name: t.raw_data for t in tuned[0].model.graph.initializer}
    assert before.keys() == after.keys() and before != after
    onnx.checker.check_model(tuned[0].model, full_check=True)
    images = np.load(MODELS / "mnist_test.npz")["input"][:8]
    ort.InferenceSession(
        tuned[0].model.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"input": images})


def test_the_same_seed_gives_the_same_bytes(tuned):
    assert tuned[0].model.SerializeToString() == tuned[1].model.SerializeToString()


def test_finetuned_weights_stay_on_their_formats_grid(tuned):
    graph = QuantizedGraph(tuned[0].model)
    for shadow, weight in zip(graph.shadows, graph.weights, strict=True):
        values = weight.detach().numpy()
        axis = shadow.axis % max(values.ndim, 1)
        np.testing.assert_array_equal(
            quantize_values(values, shadow.formats, axis if len(shadow.formats) > 1 else None),
            values,
        )


def test_stochastic_rounding_trains_other_weights_than_nearest(compiled, small_data):
    train, val = small_data
    nearest = finetune(compiled["pow2"], train, val, TrainOptions(epochs=1, seed=1))
    stochastic = finetune(
        compiled["pow2"], train, val, TrainOptions(epochs=1, seed=1, stochastic_rounding=True)
    )
    assert nearest.model.SerializeToString() != stochastic.model.SerializeToString()


def test_finetune_cli_writes_the_model_and_reports_accuracy(compiled, small_data, tmp_path):
    train, val = small_data
    output = tmp_path / "tuned.onnx"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rcompile",
            "finetune",
            str(compiled["dfp4"]),
            "--train",
            str(train),
            "--val",
            str(val),
            "-o",
            str(output),
            "--epochs",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert output.is_file() and '"val_top1_after"' in result.stdout


def test_finetune_refuses_a_model_rcompile_did_not_write(small_data, tmp_path):
    train, val = small_data
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rcompile",
            "finetune",
            str(MODELS / "lenet5.onnx"),
            "--train",
            str(train),
            "--val",
            str(val),
            "-o",
            str(tmp_path / "x.onnx"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "carries no rcompile plan" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_finetune_needs_labels(compiled, tmp_path):
    images = np.load(MODELS / "mnist_test.npz")["input"][:64]
    np.save(tmp_path / "unlabelled.npy", images)
    from rcompile.errors import CalibrationError

    with pytest.raises(CalibrationError, match="needs labels"):
        finetune(compiled["dfp4"], tmp_path / "unlabelled.npy", tmp_path / "unlabelled.npy")
