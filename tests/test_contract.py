"""The contract of docs/cli.md under attack: outputs onto inputs, onto devices and onto no
file at all, option values out of range, and the disk failing mid-write. Every case must
end with exit status 1, one line naming the mistake, and the user's folder as it was: no
file written, none changed or lost."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import rcompile_run
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
    return tmp_path


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
    ("--epochs", "0"),
    ("--patience", "-1"),
    ("--batch-size", "0"),
):
    CASES[f"finetune {option} {value}"] = ([*FINETUNE, option, value], option)
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
