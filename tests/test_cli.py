"""The command line as users meet it: compile, inspect and eval on the real LeNet, and every
kind of bad input, each answered with exit status 1 and one line on stderr.

User-visible paths run `python -m rcompile` in a subprocess (so the exit status, stdout and
stderr are the real ones); the rest call `rcompile.cli.main` in-process, which is faster."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import rcompile_run
from PIL import Image

import rcompile.cli
from rcompile.cli import main

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "mnist_calib.npz"
TEST = ROOT / "models" / "mnist_test.npz"
FP32_TOP1 = 0.979
CALIB_COUNT = "100"


def compile_args(output: Path, *extra: object, model: Path = LENET) -> list[str]:
    return [
        str(model),
        "-o",
        str(output),
        "--scheme",
        "dfp8",
        "--calib",
        str(CALIB),
        "--calib-count",
        CALIB_COUNT,
        *map(str, extra),
    ]


def assert_user_error(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """Exit status 1, one line `rcompile: error: ...` naming each of `named`, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rcompile: error: ")
    for text in named:
        assert text in lines[0]
    return lines[0]


def top1(model: Path, data: Path = TEST) -> float:
    with np.load(data) as arrays:
        images, labels = arrays["input"], arrays["labels"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def save_calibration(path: Path, images: np.ndarray) -> Path:
    np.savez(path, input=images)
    return path


def mnist_calib(count: int = 10) -> np.ndarray:
    with np.load(CALIB) as arrays:
        return arrays["input"][:count].copy()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One real compile of LeNet with the default report names and accuracy on the test set."""
    folder = tmp_path_factory.mktemp("compiled")
    output = folder / "lenet5_q.onnx"
    result = rcompile_run(*compile_args(output, "--val", TEST))
    return result, output


@pytest.fixture
def opset5_model(tmp_path) -> Path:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 5)])
    path = tmp_path / "opset5.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def int_input_model(tmp_path) -> Path:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Neg", ["tokens"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("tokens", onnx.TensorProto.INT64, ["N", 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, ["N", 8])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path / "tokens.onnx"
    onnx.save(model, str(path))
    return path


def write_digits(folder: Path, count: int = 4, seed: int = 0) -> Path:
    """`count` random 28x28 grey PNGs, enough for LeNet to calibrate on."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index}.png")
    return folder


def lenet_with_batch_size(path: Path, batch: int) -> Path:
    model = onnx.load(str(LENET))
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    onnx.save(model, str(path))
    return path


# --- compile ----------------------------------------------------------------------------------


def test_compile_exits_zero(compiled):
    result, _ = compiled
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr


def test_compile_writes_the_model_and_both_reports_beside_it(compiled):
    _, output = compiled
    assert sorted(path.name for path in output.parent.iterdir()) == [
        "lenet5_q.onnx",
        "lenet5_q.report.json",
        "lenet5_q.report.md",
    ]


def test_compile_says_what_it_wrote(compiled):
    result, output = compiled
    assert f"wrote {output}" in result.stdout
    assert "top-1 FP32 97.90 %" in result.stdout


def test_compiled_model_passes_the_full_checker(compiled):
    _, output = compiled
    onnx.checker.check_model(onnx.load(str(output)), full_check=True)


def test_compiled_model_keeps_lenet_accuracy_in_onnxruntime(compiled):
    _, output = compiled
    assert top1(output) == pytest.approx(FP32_TOP1, abs=0.003)


def test_compile_report_holds_the_accuracy_of_both_models(compiled):
    _, output = compiled
    report = json.loads(output.with_name("lenet5_q.report.json").read_text())
    assert report["accuracy"]["fp32"]["top1"] == pytest.approx(FP32_TOP1)
    assert report["accuracy"]["quantized"]["top1"] == pytest.approx(FP32_TOP1, abs=0.003)
    assert [row["node"] for row in report["layers"]] == [
        "/conv1/Conv",
        "/conv2/Conv",
        "/fc1/Gemm",
        "/fc2/Gemm",
        "/fc3/Gemm",
    ]


def test_compile_markdown_report_names_the_scheme(compiled):
    _, output = compiled
    markdown = output.with_name("lenet5_q.report.md").read_text()
    assert markdown.startswith("# rcompile report")
    assert "`dfp8`" in markdown


def test_compile_json_summary_is_parseable_and_has_the_accuracy(tmp_path, capsys):
    output = tmp_path / "q.onnx"
    assert main([*compile_args(output, "--val", TEST), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(output)
    assert summary["accuracy"]["fp32"]["top1"] == pytest.approx(FP32_TOP1)
    assert summary["accuracy"]["quantized"]["top1"] == pytest.approx(FP32_TOP1, abs=0.003)


def test_compile_report_option_puts_both_reports_there(tmp_path):
    output = tmp_path / "model" / "q.onnx"
    output.parent.mkdir()
    report = tmp_path / "reports" / "custom.json"
    report.parent.mkdir()
    assert main([*compile_args(output), "--report", str(report)]) == 0
    assert sorted(path.name for path in report.parent.iterdir()) == ["custom.json", "custom.md"]
    assert json.loads(report.read_text())["scheme"] == "dfp8"
    assert sorted(path.name for path in output.parent.iterdir()) == ["q.onnx"]


def test_compile_calibrates_on_an_image_folder(tmp_path):
    images = write_digits(tmp_path / "digits")
    output = tmp_path / "q.onnx"
    args = [LENET, "-o", output, "--calib", images, "--preprocess", "unit"]
    assert main(list(map(str, args))) == 0
    assert output.is_file()


def test_compile_of_a_model_with_a_fixed_batch_size_succeeds(tmp_path):
    model = lenet_with_batch_size(tmp_path / "lenet_b1.onnx", 1)
    output = tmp_path / "q.onnx"
    result = rcompile_run(*compile_args(output, model=model))
    assert result.returncode == 0, result.stderr
    assert output.is_file()


def test_compile_of_a_gemm_with_a_row_vector_bias_succeeds(tmp_path):
    """Gemm's C may be (1, N) (Caffe converters write it so); it is the usual bias."""
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 5])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [
            onnx.numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(rng.normal(size=(1, 4)).astype(np.float32), "b"),
        ],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path / "fc.onnx"
    onnx.save(model, str(path))
    calib = tmp_path / "x.npz"
    np.savez(calib, x=rng.normal(size=(20, 5)).astype(np.float32))
    output = tmp_path / "q.onnx"
    assert main([str(path), "-o", str(output), "--calib", str(calib)]) == 0
    assert output.is_file()


def test_no_arguments_print_the_help(capsys):
    assert main([]) == 0
    assert "Usage" in capsys.readouterr().out


def test_version_is_printed(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rcompile {rcompile.__version__}"


# --- inspect ----------------------------------------------------------------------------------


def test_inspect_lists_the_five_layers_with_their_macs():
    result = rcompile_run("inspect", "models/lenet5.onnx")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:-1]}
    assert list(rows) == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm", "/fc3/Gemm"]
    assert "117,600" in rows["/conv1/Conv"]
    assert result.stdout.splitlines()[-1] == "5 quantizable layers, 416,520 MACs per sample"


def test_inspect_json_lists_the_layers(capsys):
    assert main(["inspect", str(LENET), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    macs = {row["node"]: row["macs"] for row in summary["layers"]}
    assert macs == {
        "/conv1/Conv": 117_600,
        "/conv2/Conv": 240_000,
        "/fc1/Gemm": 48_000,
        "/fc2/Gemm": 10_080,
        "/fc3/Gemm": 840,
    }


def test_inspect_of_a_missing_model_is_a_user_error(tmp_path):
    path = tmp_path / "absent.onnx"
    assert_user_error(rcompile_run("inspect", path), str(path), "no such file")


# --- eval -------------------------------------------------------------------------------------


def test_eval_scores_top1_against_labels():
    result = rcompile_run("eval", LENET, "--data", TEST)
    assert result.returncode == 0, result.stderr
    assert "top-1: 97.90 %" in result.stdout.splitlines()


def test_eval_of_a_model_against_itself_agrees_fully(capsys):
    assert main(["eval", str(LENET), "--data", str(TEST), "--reference", str(LENET), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["agreement"] == 1.0
    assert summary["top1"] == pytest.approx(FP32_TOP1)
    assert summary["samples"] == 1000


def test_eval_without_labels_or_reference_is_a_user_error(tmp_path):
    data = save_calibration(tmp_path / "unlabelled.npz", mnist_calib())
    result = rcompile_run("eval", LENET, "--data", data)
    assert_user_error(result, str(data), "no labels", "--reference")


def test_eval_of_a_model_with_a_fixed_batch_size_succeeds(tmp_path, capsys):
    model = lenet_with_batch_size(tmp_path / "lenet_b1.onnx", 1)
    assert main(["eval", str(model), "--data", str(TEST), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(FP32_TOP1)


# --- bad input: the model -------------------------------------------------------------------


def test_model_that_is_not_a_file_is_reported(tmp_path):
    path = tmp_path / "absent.onnx"
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=path))
    assert_user_error(result, str(path), "no such file")


def test_random_bytes_as_model_are_reported_as_not_onnx(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=path))
    assert_user_error(result, str(path), "not an ONNX model")


def test_truncated_model_is_reported_as_not_onnx(tmp_path):
    data = LENET.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=path))
    assert_user_error(result, str(path), "not an ONNX model")


def test_unsupported_opset_is_reported_with_the_supported_range(tmp_path, opset5_model):
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=opset5_model))
    assert_user_error(result, str(opset5_model), "opset 5 is not supported", "opsets 7 to")


def test_model_without_a_float_input_is_reported(tmp_path, int_input_model):
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=int_input_model))
    assert_user_error(result, str(int_input_model), "no floating-point input", "tokens")


def test_model_with_a_newer_ir_version_than_onnxruntime_reads_is_not_an_internal_error(tmp_path):
    model = onnx.load(str(LENET))
    model.ir_version = onnx.IR_VERSION  # onnx 1.23 writes 14; onnxruntime 1.31 reads 13
    path = tmp_path / "future_ir.onnx"
    onnx.save(model, str(path))
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=path))
    assert result.returncode != 2, result.stderr
    assert "internal error" not in result.stderr


def test_weights_with_inf_are_reported_with_the_tensor_name(tmp_path):
    model = onnx.load(str(LENET))
    weight = next(t for t in model.graph.initializer if t.name == "conv1.weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[3] = np.inf
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    path = tmp_path / "inf.onnx"
    onnx.save(model, str(path))
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=path))
    assert_user_error(result, "'conv1.weight'", "inf")


# --- bad input: options -----------------------------------------------------------------------


def test_unknown_scheme_is_reported_with_the_valid_schemes(tmp_path):
    result = rcompile_run(*compile_args(tmp_path / "q.onnx"), "--scheme", "int7")
    assert_user_error(result, "unknown scheme 'int7'", "dfp8", "fp8e4m3", "pow2")


@pytest.mark.parametrize(
    ("option", "value", "names"),
    [
        ("--target", "tensorrt", ("--target", "sim", "qdq")),
        ("--overflow", "clamp", ("--overflow", "saturate", "wrap")),
        ("--accumulator-bits", "7", ("--accumulator-bits",)),
        ("--accumulator-bits", "65", ("--accumulator-bits",)),
        ("--scheme", "dfp8@nearest", ("unknown rounding 'nearest'", "up")),
    ],
)
def test_a_bad_lowering_option_is_one_line_and_writes_nothing(option, value, names, tmp_path):
    result = rcompile_run(*compile_args(tmp_path / "q.onnx"), option, value)
    assert_user_error(result, *names)
    assert not list(tmp_path.iterdir())


def test_target_qdq_writes_standard_ops_with_the_target_in_the_report(tmp_path):
    output = tmp_path / "q.onnx"
    result = rcompile_run(*compile_args(output), "--target", "qdq")
    assert result.returncode == 0, result.stderr
    model = onnx.load(output)
    assert not model.functions and all(node.domain == "" for node in model.graph.node)
    report = json.loads((tmp_path / "q.report.json").read_text())
    assert report["target"] == "qdq"


def test_accumulator_options_reach_every_layer_and_the_report(tmp_path):
    output = tmp_path / "q.onnx"
    result = rcompile_run(*compile_args(output), "--accumulator-bits", "24", "--overflow", "wrap")
    assert result.returncode == 0, result.stderr
    layers = json.loads((tmp_path / "q.report.json").read_text())["layers"]
    registers = {(row["accumulator"]["bits"], row["accumulator"]["overflow"]) for row in layers}
    assert registers == {(24, "wrap")}
    assert all(row["accumulator"]["bits_needed"] < 24 for row in layers)


def test_missing_calibration_for_dfp8_asks_for_calib(tmp_path):
    result = rcompile_run(LENET, "-o", tmp_path / "q.onnx", "--scheme", "dfp8")
    assert_user_error(result, "dfp8", "--calib")


def test_unknown_option_is_reported(tmp_path):
    result = rcompile_run(*compile_args(tmp_path / "q.onnx"), "--frobnicate")
    assert_user_error(result, "--frobnicate")


def test_override_naming_a_missing_layer_is_reported(tmp_path):
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"/conv9/Conv": {"weights": "dfp4"}}))
    result = rcompile_run(*compile_args(tmp_path / "q.onnx"), "--overrides", overrides)
    assert_user_error(result, "'/conv9/Conv'", "/conv1/Conv")


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    path = tmp_path / "absent.onnx"
    result = rcompile_run(*compile_args(tmp_path / "q.onnx", model=path), "--debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ModelImportError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"rcompile: error: {path}: no such file"


# --- bad input: calibration data ------------------------------------------------------------


def test_missing_calibration_file_is_reported(tmp_path):
    calib = tmp_path / "absent.npz"
    result = rcompile_run(LENET, "-o", tmp_path / "q.onnx", "--calib", calib)
    assert_user_error(result, str(calib), "no such file")


def test_calibration_of_the_wrong_shape_names_the_input_and_both_shapes(tmp_path):
    calib = save_calibration(tmp_path / "big.npz", np.zeros((10, 1, 32, 32), np.float32))
    result = rcompile_run(LENET, "-o", tmp_path / "q.onnx", "--calib", calib)
    assert_user_error(result, str(calib), "'input'", "(N, 1, 28, 28)", "(10, 1, 32, 32)")


def test_calibration_with_nan_names_the_input_and_the_sample(tmp_path):
    images = mnist_calib()
    images[7, 0, 3, 4] = np.nan
    calib = save_calibration(tmp_path / "nan.npz", images)
    result = rcompile_run(LENET, "-o", tmp_path / "q.onnx", "--calib", calib)
    assert_user_error(result, str(calib), "'input'", "NaN", "sample 7")


class _CreatesFileWhenUnpickled:
    """Unpickling this calls open(marker, "w"): proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_object_npy_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    calib = tmp_path / "objects.npy"
    payload = np.empty(3, dtype=object)
    payload[:] = [_CreatesFileWhenUnpickled(marker)] * 3
    np.save(calib, payload, allow_pickle=True)
    result = rcompile_run(LENET, "-o", tmp_path / "q.onnx", "--calib", calib)
    assert_user_error(result, str(calib), "without pickle")
    assert not marker.exists()


def test_corrupt_image_in_the_calibration_folder_is_named(tmp_path):
    images = write_digits(tmp_path / "digits")
    garbage = images / "9_garbage.png"
    garbage.write_bytes(np.random.default_rng(2).bytes(300))
    result = rcompile_run(
        LENET, "-o", tmp_path / "q.onnx", "--calib", images, "--preprocess", "unit"
    )
    assert_user_error(result, str(garbage), "cannot read the image")


# --- outputs ----------------------------------------------------------------------------------


def test_output_equal_to_the_input_model_is_refused_and_the_input_kept(tmp_path):
    model = tmp_path / "lenet5.onnx"
    shutil.copyfile(LENET, model)
    result = rcompile_run(*compile_args(model, model=model))
    assert_user_error(result, str(model), "refusing to overwrite an input")
    assert model.read_bytes() == LENET.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["lenet5.onnx"]


def test_output_naming_the_input_model_another_way_is_refused(tmp_path):
    model = tmp_path / "lenet5.onnx"
    shutil.copyfile(LENET, model)
    (tmp_path / "sub").mkdir()
    other_spelling = tmp_path / "sub" / ".." / "lenet5.onnx"
    assert main(compile_args(other_spelling, model=model)) == 1
    assert model.read_bytes() == LENET.read_bytes()


def test_failed_run_leaves_no_output_and_no_temporary_files(tmp_path):
    calib = save_calibration(tmp_path / "big.npz", np.zeros((10, 1, 32, 32), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    result = rcompile_run(LENET, "-o", out / "q.onnx", "--calib", calib)
    assert result.returncode == 1
    assert list(out.iterdir()) == []


def test_report_in_a_missing_folder_leaves_no_model_behind(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    report = tmp_path / "absent" / "r.json"
    result = rcompile_run(*compile_args(out / "q.onnx"), "--report", report)
    assert_user_error(result, str(report.parent))
    assert list(out.iterdir()) == []


def test_report_path_equal_to_the_output_is_refused(tmp_path):
    output = tmp_path / "q.onnx"
    result = rcompile_run(*compile_args(output), "--report", output)
    assert_user_error(result, str(output))
    assert not output.exists()


def test_output_that_is_a_folder_is_a_user_error(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    result = rcompile_run(*compile_args(folder))
    assert_user_error(result, str(folder))
    assert list(folder.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


# --- internal errors --------------------------------------------------------------------------


def _broken_compile(*args, **kwargs):
    raise RuntimeError("simulated bug")


def test_internal_error_exits_two_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rcompile.cli.compile, "compile_model", _broken_compile)
    assert main(compile_args(tmp_path / "q.onnx")) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("rcompile: internal error: RuntimeError: simulated bug")
    assert "--debug" in stderr
    assert "Traceback" not in stderr


def test_internal_error_with_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rcompile.cli.compile, "compile_model", _broken_compile)
    assert main([*compile_args(tmp_path / "q.onnx"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def dynamic_conv(path: Path) -> Path:
    """x (N, 3, H, W) -> 3x3 Conv to 8 channels, padded: MACs depend on H and W."""
    weight = onnx.numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = onnx.helper.make_graph(
        [conv],
        "dynamic",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, "H", "W"])],
        [weight],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_inspect_says_a_total_is_partial_and_counts_it_with_given_input_shapes(tmp_path, capsys):
    model = dynamic_conv(tmp_path / "dynamic.onnx")
    assert main(["inspect", str(model)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "1 quantizable layers, 0 MACs per sample (1 layers of unknown size not counted: give "
        "the inputs' sizes with --input-shape NAME=D1,D2,...)"
    )
    assert main(["inspect", str(model), "--input-shape", "x=1,3,960,640"]) == 0
    macs = 960 * 640 * 8 * 27
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"1 quantizable layers, {macs:,} MACs per sample"
    )


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("x=1,3,960", "3 dimensions given, the input has 4"),
        ("y=1,3,9,9", "the model has no input 'y'"),
        ("x=1x3", "expected NAME=D1,D2,..."),
        ("x=1,4,9,9", "dimension 3 is fixed, 4 given"),
    ],
)
def test_a_wrong_input_shape_is_one_line(tmp_path, given, named):
    model = dynamic_conv(tmp_path / "dynamic.onnx")
    assert_user_error(rcompile_run("inspect", model, "--input-shape", given), named)


CUDA_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(CUDA_PROVIDER, reason="this onnxruntime has a CUDA provider")
@pytest.mark.parametrize("command", ["compile", "eval", "search"])
def test_device_cuda_without_a_cuda_provider_is_one_line_and_writes_nothing(command, tmp_path):
    output = tmp_path / "out.onnx"
    arguments = {
        "compile": ["models/lenet5.onnx", "-o", output, "--calib", "models/mnist_calib.npz"],
        "eval": ["eval", "models/lenet5.onnx", "--data", "models/mnist_test.npz"],
        "search": [
            "search",
            "models/lenet5.onnx",
            "-o",
            output,
            "--calib",
            "models/mnist_calib.npz",
            "--val",
            "models/mnist_test.npz",
        ],
    }[command]
    result = rcompile_run(*arguments, "--device", "cuda")
    assert result.returncode == 1 and "--device cuda" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_device_auto_runs_where_there_is_no_gpu(tmp_path):
    result = rcompile_run(
        "eval",
        "models/lenet5.onnx",
        "--data",
        "models/mnist_test.npz",
        "--device",
        "auto",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top1"] > 0.95


def test_sessions_open_on_the_chosen_device():
    from rcompile.sessions import CPU, current_provider, on_device, open_session

    with on_device("auto") as provider:
        assert current_provider() == provider
        session = open_session(onnx.load(str(ROOT / "models" / "lenet5.onnx")))
        assert session.get_providers()[0] == provider
    assert current_provider() == CPU
