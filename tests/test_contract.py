"""The contract of docs/cli.md under attack: outputs onto inputs, onto devices and onto no
file at all, option values out of range, and the disk failing mid-write. Every case must
end with exit status 1, one line naming the mistake, and the user's folder as it was: no
file written, none changed or lost."""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import rcompile_run
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_user_error

from rcompile import exporter
from rcompile.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user's folder: a model, calibration and labelled data, and an overrides file."""
    shutil.copy(MODELS / "lenet5.onnx", tmp_path / "net.onnx")
    with np.load(MODELS / "mnist_calib.npz") as arrays:
        np.savez(tmp_path / "calib.npz", input=arrays["input"][:16])
    with np.load(MODELS / "mnist_test.npz") as arrays:
        np.savez(tmp_path / "val.npz", input=arrays["input"][:16], labels=arrays["labels"][:16])
    (tmp_path / "overrides.json").write_text('{"conv1": {"weights": "dfp8"}}')
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    (tmp_path / "skip.yaml").write_text('"/conv1/Conv": {skip: "yes"}\n')
    np.savez(
        tmp_path / "labels.npz",
        input=np.load(tmp_path / "val.npz")["input"],
        labels=np.full(16, 10),
    )
    conv_model(tmp_path / "f16.onnx", TensorProto.FLOAT16)
    conv_model(tmp_path / "f64.onnx", TensorProto.DOUBLE)
    conv_model(tmp_path / "custom.onnx", TensorProto.FLOAT, custom=True)
    for name, dtype in (("x16", np.float16), ("x32", np.float32)):
        np.savez(tmp_path / f"{name}.npz", x=np.ones((4, 3, 8, 8), dtype))
    return tmp_path


def conv_model(path: Path, element: int, custom: bool = False, output_side: int = 6) -> None:
    """x -> Conv (-> a vendor's op) -> y in the given float type."""
    dtype = helper.tensor_dtype_to_np_dtype(element)
    weight = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(dtype)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if custom else "y"], name="conv")]
    if custom:
        nodes.append(helper.make_node("FancyAct", ["c"], ["y"], name="fancy", domain="com.vendor"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", element, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", element, ["N", 4, output_side, output_side])],
        [numpy_helper.from_array(weight, "w")],
    )
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid("com.vendor", 1)] * custom
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, path)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mode."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


COMPILE = ["net.onnx", "--calib", "calib.npz", "--calib-count", "16"]

# (arguments, what the one line must name)
CASES = {
    "output onto the calibration data": ([*COMPILE, "-o", "calib.npz"], "calib.npz"),
    "report onto the calibration data": (
        [*COMPILE, "-o", "q.onnx", "--report", "calib.npz"],
        "refusing to overwrite an input",
    ),
    "output onto the model": ([*COMPILE, "-o", "net.onnx"], "refusing to overwrite an input"),
    "output onto the validation data": (
        [*COMPILE, "--val", "val.npz", "-o", "val.npz"],
        "refusing to overwrite an input",
    ),
    "output onto the overrides": (
        [*COMPILE, "--overrides", "overrides.json", "-o", "overrides.json"],
        "refusing to overwrite an input",
    ),
    "output onto a device": ([*COMPILE, "-o", "/dev/null"], "is not a regular file"),
    "empty output": ([*COMPILE, "-o", ""], "names no file"),
    "output a folder name": ([*COMPILE, "-o", ".."], "names no file"),
    "batch size 0": ([*COMPILE, "-o", "q.onnx", "--batch-size", "0"], "--batch-size"),
    "calibration count 0": ([*COMPILE[:3], "-o", "q.onnx", "--calib-count", "0"], "--calib-count"),
    "max drop NaN": (
        [*COMPILE, "-o", "q.onnx", "--val", "val.npz", "--max-drop", "nan"],
        "--max-drop",
    ),
    "search with 0 jobs": (
        ["search", *COMPILE[:3], "--val", "val.npz", "-o", "q.onnx", "--jobs", "0"],
        "--jobs",
    ),
    "search budget 0": (
        ["search", *COMPILE[:3], "--val", "val.npz", "-o", "q.onnx", "--budget", "0"],
        "--budget",
    ),
    "search margin infinite": (
        ["search", *COMPILE[:3], "--val", "val.npz", "-o", "q.onnx", "--error-margin", "inf"],
        "--error-margin",
    ),
    "search confidence 1": (
        ["search", *COMPILE[:3], "--val", "val.npz", "-o", "q.onnx", "--confidence", "1"],
        "the confidence must be at least 0.5 and below 1",
    ),
    "search holding out everything": (
        ["search", *COMPILE[:3], "--val", "val.npz", "-o", "q.onnx", "--holdout", "1"],
        "the held-out share must be at least 0 and below 1",
    ),
    "search holding out no sample": (
        ["search", *COMPILE[:3], "--val", "val.npz", "-o", "q.onnx", "--holdout", "0.01"],
        "holds out 0",
    ),
    "search output onto the validation data": (
        ["search", *COMPILE[:3], "--val", "val.npz", "-o", "val.npz"],
        "refusing to overwrite an input",
    ),
}
FINETUNE = ["finetune", "net.onnx", "--train", "val.npz", "--val", "val.npz", "-o", "t.onnx"]
for option, value in (
    ("--lr", "-1"),
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--lr", "0"),
    ("--epochs", "-1"),
    ("--rounding-steps", "-1"),
    ("--patience", "-1"),
    ("--batch-size", "0"),
):
    CASES[f"finetune {option} {value}"] = ([*FINETUNE, option, value], option)
CASES["finetune with nothing to train"] = (
    [*FINETUNE, "--epochs", "0", "--rounding-steps", "0"],
    "nothing to train",
)
CASES.update(
    {
        "float16 model": (["f16.onnx", "--calib", "x16.npz", "-o", "q.onnx"], "is float16"),
        "float64 model": (["f64.onnx", "--calib", "x32.npz", "-o", "q.onnx"], "is double"),
        "vendor op": (["custom.onnx", "--calib", "x32.npz", "-o", "q.onnx"], "com.vendor"),
        "binary overrides": (
            [*COMPILE, "-o", "q.onnx", "--overrides", "binary.json"],
            "not a text file",
        ),
        "skip not a boolean": (
            [*COMPILE, "-o", "q.onnx", "--overrides", "skip.yaml"],
            "skip must be true or false",
        ),
        "full-width digit in a scheme": (
            [*COMPILE, "-o", "q.onnx", "--scheme", "dfp\uff18"],
            "unknown scheme",
        ),
        "a metric that fails": (
            ["search", *COMPILE[:3], "--val", "val.npz", "-o", "q.onnx", "--metric", "os:getcwd"],
            "metric os:getcwd failed",
        ),
        "labels outside the classes in --val": (
            [*COMPILE, "-o", "q.onnx", "--val", "labels.npz"],
            "labels must be class indices 0 to 9",
        ),
        "labels outside the classes in eval": (
            ["eval", "net.onnx", "--data", "labels.npz"],
            "labels must be class indices 0 to 9",
        ),
    }
)
CASES["finetune output onto its training data"] = (
    [*FINETUNE[:-1], "val.npz"],
    "refusing to overwrite an input",
)


@pytest.mark.parametrize(("arguments", "named"), CASES.values(), ids=CASES.keys())
def test_a_mistake_is_one_line_and_leaves_the_folder_as_it_was(folder, arguments, named):
    before = snapshot(folder)
    assert_user_error(rcompile_run(*arguments, cwd=folder), named)
    assert snapshot(folder) == before
    assert Path("/dev/null").is_char_device()


def test_a_full_disk_mid_write_leaves_no_new_file_and_the_old_set_whole(
    folder, monkeypatch, capsys
):
    """A first compile writes the model and its reports; a second, over the same output,
    finds the disk full when it renames the reports into place: the old set is kept whole,
    with no temporary or half-renamed file beside it."""
    monkeypatch.chdir(folder)
    assert main([*COMPILE, "-o", "q.onnx"]) == 0
    before = snapshot(folder)
    renamed = []
    replace = exporter.os.replace

    def disk_full_on_the_report(source, target):
        renamed.append(target)
        if str(target).endswith(".report.json"):
            raise OSError(28, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(exporter.os, "replace", disk_full_on_the_report)
    capsys.readouterr()
    assert main([*COMPILE, "-o", "q.onnx", "--scheme", "dfp16"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["rcompile: error: q.report.json: cannot write: No space left on device"]
    assert any(str(target).endswith("q.onnx") for target in renamed)
    assert snapshot(folder) == before


def test_a_declared_output_shape_the_graph_contradicts_is_replaced_with_a_warning(folder):
    conv_model(folder / "wrong.onnx", TensorProto.FLOAT, output_side=7)
    result = rcompile_run("wrong.onnx", "--calib", "x32.npz", "-o", "q.onnx", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("rcompile: warning: wrong.onnx: the declared shapes")
    shape = onnx.load(folder / "q.onnx").graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim][1:] == [4, 6, 6]


def test_a_per_layer_bias_mode_from_the_docs_example_applies(folder):
    """docs/schemes.md: `"*": {bias: weights}` gives every layer Ristretto's bias."""
    (folder / "bias.yaml").write_text('"*": {bias: weights}\n')
    result = rcompile_run(*COMPILE, "-o", "q.onnx", "--overrides", "bias.yaml", cwd=folder)
    assert result.returncode == 0, result.stderr
    layers = json.loads((folder / "q.report.json").read_text())["layers"]
    assert {layer["formats"]["bias"]["bits"] for layer in layers} == {8}
    default = rcompile_run(*COMPILE, "-o", "d.onnx", cwd=folder)
    assert default.returncode == 0, default.stderr
    layers = json.loads((folder / "d.report.json").read_text())["layers"]
    assert {layer["formats"]["bias"]["bits"] for layer in layers} == {32}


def slow_model(path: Path) -> None:
    """Two 256-channel 3x3 convolutions on 64x64 inputs: many seconds of calibration."""
    rng = np.random.default_rng(1)
    weights = {"w1": rng.normal(size=(256, 3, 3, 3)), "w2": rng.normal(size=(256, 256, 3, 3))}
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["c", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
        ],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256, 64, 64])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def wait_until_numpy_is_loaded(pid: int) -> None:
    """Until the process has mapped NumPy's library (Linux: /proc/PID/maps): rcompile's
    entry point is then importing the pipeline. A Ctrl-C before the entry point runs (while
    Python starts) ends any Python program with Python's own message; on a loaded machine
    start-up can outlast a fixed delay."""
    maps = Path(f"/proc/{pid}/maps")
    deadline = time.monotonic() + 20
    while maps.exists() and time.monotonic() < deadline:
        if "numpy" in maps.read_text():
            return
        time.sleep(0.01)


@pytest.mark.parametrize("delay", [0.0, 2.5], ids=["start-up", "mid-run"])
def test_ctrl_c_is_one_line_exit_130_and_writes_nothing(folder, delay):
    """Ctrl-C while Python still imports the pipeline (as soon as it can answer one), or
    while it calibrates, says so in one line and leaves the folder as it was."""
    slow_model(folder / "slow.onnx")
    x = np.random.default_rng(2).normal(size=(192, 3, 64, 64)).astype(np.float32)
    np.savez(folder / "slow.npz", x=x)
    before = snapshot(folder)
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "rcompile", "slow.onnx", "--calib", "slow.npz", "-o", "q.onnx"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_until_numpy_is_loaded(process.pid)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - start < 30, "the interrupt was not answered promptly"
    assert (process.returncode, stderr) == (130, "rcompile: interrupted\n")
    assert snapshot(folder) == before


def if_network(path: Path) -> None:
    """A convolution in each branch of an If on the input's mean."""
    weight = numpy_helper.from_array(
        np.random.default_rng(3).normal(size=(4, 3, 3, 3)).astype(np.float32), "w"
    )

    def branch(name: str, activation: str) -> onnx.GraphProto:
        nodes = [
            helper.make_node("Conv", ["x", "w"], [f"{name}_c"], name=f"{name}_conv"),
            helper.make_node(activation, [f"{name}_c"], [f"{name}_y"], name=f"{name}_act"),
        ]
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 4, 6, 6])
        return helper.make_graph(nodes, name, [], [out])

    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["c"], name="positive"),
        helper.make_node(
            "If",
            ["c"],
            ["y"],
            name="if",
            then_branch=branch("a", "Relu"),
            else_branch=branch("b", "Sigmoid"),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [weight, numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def test_layers_inside_if_bodies_stay_fp32_with_a_warning_and_are_listed(folder):
    if_network(folder / "if.onnx")
    result = rcompile_run("if.onnx", "--calib", "x32.npz", "-o", "q.onnx", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("rcompile: warning: 2 layers inside If, Loop or Scan")
    assert "no parameters quantized" in result.stdout
    report = json.loads((folder / "q.report.json").read_text())
    assert report["unquantized_ops"]["Conv (in If)"] == 2
    session = ort.InferenceSession(str(folder / "q.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).normal(size=(2, 3, 8, 8)).astype(np.float32)
    source = ort.InferenceSession(str(folder / "if.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], source.run(None, {"x": x})[0])


def sample_rate_network(path: Path) -> None:
    """y = Relu(Conv(x) * sr): a second input, a scalar int64 every sample shares."""
    weight = numpy_helper.from_array(
        np.random.default_rng(5).normal(size=(4, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Cast", ["sr"], ["rate"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["c", "rate"], ["m"], name="scale"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def test_an_input_held_constant_calibrates_compiles_and_verifies(folder):
    """`--input sr=16000` feeds the scalar to every run: compile and verify (bit-true at
    every level) take it, and the written model keeps `sr` as an input. A 0-d `sr` in the
    .npz is held the same way and gives the same model."""
    sample_rate_network(folder / "rate.onnx")
    compiled = rcompile_run(
        "rate.onnx", "--calib", "x32.npz", "-o", "q.onnx", "--input", "sr=16000", cwd=folder
    )
    assert compiled.returncode == 0, compiled.stderr
    assert [i.name for i in onnx.load(folder / "q.onnx").graph.input] == ["x", "sr"]
    verified = rcompile_run(
        "verify", "q.onnx", "--data", "x32.npz", "--input", "sr=16000", cwd=folder
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip().endswith("bit-true: yes")
    missing = rcompile_run("rate.onnx", "--calib", "x32.npz", "-o", "r.onnx", cwd=folder)
    assert_user_error(missing, "hold the others constant with --input NAME=VALUE")
    np.savez(folder / "with_rate.npz", x=np.load(folder / "x32.npz")["x"], sr=np.array(16000))
    from_npz = rcompile_run("rate.onnx", "--calib", "with_rate.npz", "-o", "n.onnx", cwd=folder)
    assert from_npz.returncode == 0, from_npz.stderr
    same = ("q.onnx", "n.onnx")
    assert onnx.load(folder / same[0]).graph == onnx.load(folder / same[1]).graph


def stateful_network(path: Path) -> None:
    """y = MatMul(Relu(MatMul(x, W1) + ReduceSum(h, axis 0)), W2), with a recurrent-style
    state h of shape (2, N, 4): its samples on axis 1."""
    rng = np.random.default_rng(6)
    parameters = [
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([0], np.int64), "layers"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="first"),
        helper.make_node("ReduceSum", ["h", "layers"], ["s"], name="sum", keepdims=0),
        helper.make_node("Add", ["a", "s"], ["b"], name="add"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, "N", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        parameters,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def test_an_input_batched_on_axis_1_takes_samples_first_data_and_verifies(folder):
    """The data holds h samples first, (N, 2, 4); compile, eval and verify feed it on the
    model's axis 1 in batches that do not divide the count, bit-true at every level.
    Fine-tuning, which feeds axis 0, says so in one line."""
    stateful_network(folder / "state.onnx")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    h = rng.normal(size=(20, 2, 4)).astype(np.float32)
    np.savez(folder / "state.npz", x=x, h=h, labels=rng.integers(0, 3, 20))
    compiled = rcompile_run(
        "state.onnx",
        "--calib",
        "state.npz",
        "--val",
        "state.npz",
        "-o",
        "q.onnx",
        "--batch-size",
        "7",
        cwd=folder,
    )
    assert compiled.returncode == 0, compiled.stderr
    verified = rcompile_run(
        "verify", "q.onnx", "--data", "state.npz", "--batch-size", "6", cwd=folder
    )
    assert verified.returncode == 0, verified.stderr
    assert "20 samples" in verified.stdout and verified.stdout.strip().endswith("bit-true: yes")
    quantized = ort.InferenceSession(str(folder / "q.onnx"), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(folder / "state.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"x": x, "h": h.transpose(1, 0, 2).copy()}
    got, want = quantized.run(None, feeds)[0], fp32.run(None, feeds)[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    before = snapshot(folder)
    tuned = rcompile_run(
        "finetune",
        "q.onnx",
        "--train",
        "state.npz",
        "--val",
        "state.npz",
        "-o",
        "t.onnx",
        cwd=folder,
    )
    assert_user_error(tuned, "input 'h' of shape (2, N, 4) takes them on axis 1")
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("sr=1,2", "2 values given, the input holds 1"),
        ("rate=3", "the model has no input 'rate' (inputs: x, sr)"),
        ("sr", "expected NAME=VALUE"),
        ("sr=fast", "expected NAME=VALUE"),
        ("x=1", "has dynamic dimensions"),
    ],
)
def test_a_wrong_held_input_is_one_line(folder, given, named):
    sample_rate_network(folder / "rate.onnx")
    before = snapshot(folder)
    result = rcompile_run(
        "rate.onnx", "--calib", "x32.npz", "-o", "q.onnx", "--input", given, cwd=folder
    )
    assert_user_error(result, named)
    assert snapshot(folder) == before
