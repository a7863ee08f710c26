"""`rcompile verify` as a CI pipeline runs it: the exit status gates on bit-truth."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import rcompile_run

import rcompile
from rcompile.data import input_specs, open_data
from rcompile.exporter import write_model
from rcompile.verify import verify

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "mnist_calib.npz"
TEST = ROOT / "models" / "mnist_test.npz"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("verify")
    paths = {}
    for target in ("sim", "qdq"):
        result = rcompile.compile(LENET, "dfp8", CALIB, calib_count=100, target=target)
        paths[target] = write_model(result.model, folder / f"lenet5_{target}.onnx")
    return paths


def test_a_sim_model_verifies_bit_true_at_every_level(compiled):
    run = rcompile_run("verify", compiled["sim"], "--data", TEST, "--count", 50, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["exact"] and summary["target"] == "sim" and summary["samples"] == 50
    levels = [
        entry["level"] for entry in summary["runs"] if entry["provider"] == "CPUExecutionProvider"
    ]
    assert levels == ["disable_all", "basic", "extended", "all"]
    assert all(entry["values"] == 500 and entry["differing"] == 0 for entry in summary["runs"])


def test_verify_prints_one_line_per_run_and_the_verdict(compiled):
    run = rcompile_run("verify", compiled["qdq"], "--data", TEST, "--count", 20)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "(target qdq)" in lines[0] and lines[-1].startswith("bit-true: ")
    assert sum("logits:" in line for line in lines) >= 4


def test_a_sim_model_edited_off_its_plan_fails_with_exit_1(compiled, tmp_path):
    model = onnx.load(compiled["sim"])
    last = [node for node in model.graph.node if node.op_type == "QuantizeDFP"][-1]
    fl = next(a for a in last.attribute if a.name == "fl")
    fl.i -= 1
    edited = write_model(model, tmp_path / "edited.onnx")
    run = rcompile_run("verify", edited, "--data", TEST, "--count", 20)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "is not bit-true" in run.stderr
    assert "bit-true: no" in run.stdout


def test_a_model_rcompile_did_not_write_is_refused_with_one_line():
    run = rcompile_run("verify", LENET, "--data", TEST, "--count", 5)
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        == "rcompile: error: the model has no rcompile plan (rcompile.plan metadata)"
    )


def test_verify_counts_steps_of_the_output_format(compiled):
    model = onnx.load(compiled["sim"])
    last = [node for node in model.graph.node if node.op_type == "QuantizeDFP"][-1]
    next(a for a in last.attribute if a.name == "fl").i += 1  # twice as fine: codes move
    data = open_data(TEST, input_specs(model), None)
    result = verify(model, data, 20, 10, "edited")
    worst = max(d.max_steps for d in result.deviations)
    assert (
        not result.exact
        and worst >= 1
        and all(float(k) > 0 for d in result.deviations for k in d.by_steps)
    )


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="needs qemu-x86_64 (Debian's qemu-user) on x86_64 to emulate an AVX2-only CPU",
)
def test_a_sim_model_is_bit_true_on_an_avx2_cpu_without_vnni(compiled):
    """onnxruntime's fused u8s8 kernels on such CPUs sum in saturating 16-bit lanes; a sim
    model leaves it none. QEMU's Haswell has AVX2 and no AVX-512 or VNNI."""
    command = [QEMU, "-cpu", "Haswell", sys.executable, "-m", "rcompile", "verify"]
    command += [str(compiled["sim"]), "--data", str(TEST), "--count", "20"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "bit-true: yes"
