"""Fine-tuning on a CUDA GPU: the quantizers run by rcompile's CuPy kernels on torch's CUDA
tensors (through DLPack) equal the NumPy reference, and training on the GPU writes the same
bytes as on the CPU for a seed. Skipped, with the reason, without PyTorch, CuPy or a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_bits, rounded_formats, sweep_formats, sweep_inputs

torch = pytest.importorskip("torch", reason="fine-tuning needs PyTorch (the finetune extra)")
cupy = pytest.importorskip("cupy", reason="the CUDA quantizers need CuPy (the cuda extra)")
if not torch.cuda.is_available():
    pytest.skip(
        "no CUDA GPU: the GPU fine-tuning checks still have to run", allow_module_level=True
    )

import rcompile  # noqa: E402
from rcompile.exporter import write_model  # noqa: E402
from rcompile.finetune import TrainOptions, finetune  # noqa: E402
from rcompile.finetune.quantizers import per_channel, quantize  # noqa: E402
from rcompile.formats import DFP, Pow2  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("seed", [None, 7], ids=["nearest", "stochastic"])
def test_cuda_tensors_quantize_as_the_reference(seed):
    x = sweep_inputs()
    for fmt in sweep_formats():
        got = quantize(torch.from_numpy(x).cuda(), fmt, seed)
        assert got.is_cuda
        assert_same_bits(fmt, x, fmt.quantize(x, seed=seed), got.cpu().numpy())


def test_cuda_tensors_round_by_every_mode_as_the_reference():
    x = sweep_inputs()
    for fmt in rounded_formats():
        assert_same_bits(
            fmt, x, fmt.quantize(x), quantize(torch.from_numpy(x).cuda(), fmt).cpu().numpy()
        )


def test_per_channel_quantizers_on_cuda_equal_the_cpu():
    rng = np.random.default_rng(0)
    values = torch.from_numpy((rng.normal(size=(8, 6, 3)) * 0.5).astype(np.float32))
    for formats in (
        tuple(DFP(4, int(fl)) for fl in rng.integers(-2, 9, 8)),
        tuple(Pow2(int(low), int(low) + 5) for low in rng.integers(-9, -2, 8)),
    ):
        for seed in (None, 3):
            cpu = per_channel(values, formats, 0, seed).numpy()
            gpu = per_channel(values.cuda(), formats, 0, seed).cpu().numpy()
            np.testing.assert_array_equal(cpu.view(np.uint32), gpu.view(np.uint32))


def test_the_straight_through_gradient_is_the_same_on_cuda():
    x = torch.tensor([0.3, -0.7, 5.0, -9.0])
    grads = []
    for device in ("cpu", "cuda"):
        leaf = x.to(device).requires_grad_()
        per_channel(leaf, (DFP(4, 1),), 0).sum().backward()
        grads.append(leaf.grad.cpu().numpy())
    np.testing.assert_array_equal(*grads)


def test_training_on_cpu_and_on_cuda_writes_the_same_bytes(tmp_path):
    compiled = rcompile.compile(MODELS / "lenet5.onnx", "dfp4", MODELS / "mnist_calib.npz")
    path = write_model(compiled.model, tmp_path / "q.onnx")
    train = np.load(MODELS / "mnist_train.npz")["input"][:512]
    np.save(tmp_path / "train.npy", train)
    runs = {
        device: finetune(
            path,
            tmp_path / "train.npy",
            options=TrainOptions(epochs=2, seed=5, device=device, rounding_steps=0),
            teacher=MODELS / "lenet5.onnx",
        )
        for device in ("cpu", "cuda")
    }
    assert runs["cuda"].device == "cuda"
    assert runs["cpu"].model.SerializeToString() == runs["cuda"].model.SerializeToString()
