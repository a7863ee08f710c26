"""Export: provenance in sorted metadata, a checked model, the same bytes for the same inputs,
and writes that are atomic and never land on an input."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rcompile
from rcompile import exporter
from rcompile.exporter import (
    ExportError,
    check_targets,
    finish_model,
    write_bytes,
    write_files,
    write_model,
)
from rcompile.onnx_ops import IR_VERSION, OPSET

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
MNIST_CALIB = ROOT / "models" / "mnist_calib.npz"
PLAN = {"scheme": "dfp8", "layers": [{"node": "conv", "output": "dfp8f3"}], "skipped": []}


def small_model() -> onnx.ModelProto:
    weight = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = helper.make_graph(
        [conv],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 3, 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in model.metadata_props}


def test_metadata_keys_are_sorted():
    result = finish_model(small_model(), {"rcompile.scheme": "dfp8", "rcompile.plan": PLAN})
    keys = [entry.key for entry in result.metadata_props]
    assert keys == ["rcompile.plan", "rcompile.scheme", "rcompile.version"]


def test_metadata_carries_version_scheme_and_plan():
    result = finish_model(small_model(), {"rcompile.scheme": "dfp8", "rcompile.plan": PLAN})
    entries = metadata(result)
    assert entries["rcompile.version"] == rcompile.__version__
    assert entries["rcompile.scheme"] == "dfp8"
    assert json.loads(entries["rcompile.plan"]) == PLAN


def test_metadata_values_are_json_with_sorted_keys():
    result = finish_model(small_model(), {"rcompile.plan": {"b": 1, "a": {"d": 2, "c": 3}}})
    assert metadata(result)["rcompile.plan"] == '{"a": {"c": 3, "d": 2}, "b": 1}'


def test_finished_model_names_rcompile_as_producer():
    result = finish_model(small_model(), {})
    assert (result.producer_name, result.producer_version) == ("rcompile", rcompile.__version__)


def test_finished_model_passes_the_full_checker():
    result = finish_model(small_model(), {"rcompile.plan": PLAN})
    onnx.checker.check_model(result, full_check=True)


def test_the_inputs_metadata_is_kept_and_rcompiles_own_replaced():
    """An OCR model's dictionary or a detector's class names survive, in their order and
    before rcompile's entries; a plan left by an earlier rcompile run does not."""
    model = small_model()
    model.metadata_props.add(key="character", value="a\nb\nc")
    model.metadata_props.add(key="names", value="{0: 'person'}")
    model.metadata_props.add(key="rcompile.plan", value="stale")
    entries = list(finish_model(model, {"rcompile.plan": PLAN}).metadata_props)
    assert [(e.key, e.value) for e in entries[:2]] == [
        ("character", "a\nb\nc"),
        ("names", "{0: 'person'}"),
    ]
    assert json.loads(metadata(finish_model(model, {"rcompile.plan": PLAN}))["rcompile.plan"])


def test_finish_model_leaves_its_input_alone():
    model = small_model()
    before = model.SerializeToString(deterministic=True)
    finish_model(model, {"rcompile.plan": PLAN})
    assert model.SerializeToString(deterministic=True) == before


def test_compiling_lenet_twice_writes_identical_bytes(tmp_path):
    first = rcompile.compile(LENET, "dfp8", MNIST_CALIB, calib_count=64)
    second = rcompile.compile(LENET, "dfp8", MNIST_CALIB, calib_count=64)
    write_model(first.model, tmp_path / "first.onnx")
    write_model(second.model, tmp_path / "second.onnx")
    assert (tmp_path / "first.onnx").read_bytes() == (tmp_path / "second.onnx").read_bytes()


def test_write_model_writes_a_model_that_loads_back(tmp_path):
    model = finish_model(small_model(), {"rcompile.plan": PLAN})
    write_model(model, tmp_path / "out.onnx")
    assert onnx.load(tmp_path / "out.onnx") == model


def test_write_bytes_leaves_only_the_target(tmp_path):
    assert write_bytes(b"data", tmp_path / "out.onnx") == tmp_path / "out.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
    assert (tmp_path / "out.onnx").read_bytes() == b"data"


def failing_replace(source, target):
    raise OSError("disk full")


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter.os, "replace", failing_replace)
    with pytest.raises(ExportError, match=r"out\.onnx: cannot write: disk full"):
        write_bytes(b"data", tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    monkeypatch.setattr(exporter.os, "replace", failing_replace)
    with pytest.raises(ExportError):
        write_bytes(b"new", target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_write_bytes_replaces_an_existing_output(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    write_bytes(b"new", target)
    assert target.read_bytes() == b"new"


def test_protected_path_is_never_overwritten(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"input")
    with pytest.raises(ExportError, match="refusing to overwrite an input"):
        write_bytes(b"output", source, protected=(source,))
    assert source.read_bytes() == b"input"


def test_protected_path_is_recognised_under_another_spelling(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    source = tmp_path / "model.onnx"
    source.write_bytes(b"input")
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(ExportError, match="refusing to overwrite an input"):
        write_bytes(b"output", Path("..") / "model.onnx", protected=(source,))
    assert source.read_bytes() == b"input"


def test_target_in_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        check_targets([tmp_path / "absent" / "out.onnx"])


def test_target_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(ExportError, match="is a folder"):
        check_targets([tmp_path])


def test_the_same_target_twice_is_refused(tmp_path):
    with pytest.raises(ExportError, match="given for two outputs"):
        check_targets([tmp_path / "out.onnx", tmp_path / "." / "out.onnx"])


def test_distinct_targets_in_existing_folders_pass(tmp_path):
    check_targets([tmp_path / "net.onnx", tmp_path / "report.json"], (tmp_path / "in.onnx",))
    assert os.listdir(tmp_path) == []


def test_a_set_whose_last_rename_fails_leaves_the_old_set_whole(tmp_path, monkeypatch):
    """The model is renamed into place, the report's rename fails: the old model comes back,
    the new report was never there, and no temporary or backup file is left."""
    model, report = tmp_path / "net.onnx", tmp_path / "net.report.json"
    model.write_bytes(b"old model")
    renames = []
    real_replace = exporter.os.replace

    def replace_once(source, target):
        renames.append(target)
        if len(renames) == 2:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(exporter.os, "replace", replace_once)
    with pytest.raises(ExportError, match="No space left on device"):
        write_files({model: b"new model", report: b"new report"})
    assert model.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_new_files_take_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        write_files({tmp_path / "new.onnx": b"new"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.onnx").stat().st_mode) == 0o640
    kept = tmp_path / "kept.onnx"
    kept.write_bytes(b"old")
    kept.chmod(0o604)
    write_files({kept: b"new"})
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_bytes() == b"new"


@pytest.mark.parametrize("path", ["", ".", ".."])
def test_an_output_that_names_no_file_is_refused(path):
    with pytest.raises(ExportError, match="names no file"):
        check_targets([Path(path)])


def test_a_device_is_refused_as_an_output():
    with pytest.raises(ExportError, match="/dev/null: is not a regular file"):
        write_bytes(b"data", Path("/dev/null"))
