"""`rcompile search` and `--max-drop` as users meet them, on the real LeNet-5: the files
written, the Ristretto-style summary, `--json`, the CI contract (exit status 3, nothing
written), user errors (exit status 1, one line), a margin nothing meets, `--jobs` and Ctrl-C.

The main paths run `python -m rcompile` in a subprocess (real exit status and streams); the
rest call `rcompile.cli.main` in-process, which is faster."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import rcompile_run

from rcompile.cli import main

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "mnist_calib.npz"
TEST = ROOT / "models" / "mnist_test.npz"
SVG = "{http://www.w3.org/2000/svg}"
ROW_KEYS = {"label", "score", "cost", "within_margin", "pareto"}


def search_args(output: Path, *extra: object) -> list[str]:
    return [
        "search",
        str(LENET),
        "-o",
        str(output),
        "--calib",
        str(CALIB),
        "--val",
        str(TEST),
        *map(str, extra),
    ]


def compile_args(output: Path, *extra: object) -> list[str]:
    return [str(LENET), "-o", str(output), "--calib", str(CALIB), *map(str, extra)]


def outputs_of(output: Path) -> list[Path]:
    """The model, report.json, report.md and (for search) the plot."""
    return [output] + [
        output.with_name(f"{output.stem}.report{ext}") for ext in (".json", ".md", ".svg")
    ]


def assert_nothing_written(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == []


def assert_user_error(code: int, stderr: str, *named: str) -> str:
    assert code == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("rcompile: error: ")
    for text in named:
        assert text in lines[0], lines[0]
    return lines[0]


def top1_percent(model: Path) -> float:
    with np.load(TEST) as arrays:
        images, labels = arrays["input"], arrays["labels"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


# --- the main path (subprocess) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    output = folder / "lenet5_search.onnx"
    result = rcompile_run(*search_args(output, "--error-margin", "1.0"))
    return result, output


def test_search_exits_0_and_writes_model_reports_and_plot(searched) -> None:
    result, output = searched
    assert result.returncode == 0, result.stderr
    model, report_json, report_md, plot = outputs_of(output)
    for path in (model, report_json, report_md, plot):
        assert path.is_file(), path
    onnx.checker.check_model(onnx.load(model))
    report = json.loads(report_json.read_text())
    section = report["search"]
    assert section["mode"] == "layerwise"
    assert section["cost"] == "weights"
    assert section["margin"] == 1.0
    assert section["chosen_score"] >= section["fp32_score"] - 1.0
    assert top1_percent(model) == pytest.approx(section["chosen_score"], abs=1e-6)
    table = section["table"]
    assert len(table) == section["evaluations"] > 0
    for row in table:
        assert set(row) >= ROW_KEYS
        assert isinstance(row["within_margin"], bool) and isinstance(row["pareto"], bool)
    assert any(row["label"] == section["chosen"] and row["within_margin"] for row in table)
    assert any(row["pareto"] for row in table)
    assert report["totals"]["parameter_memory_bits"] == section["chosen_cost"]
    assert "# rcompile report" in report_md.read_text()
    circles = ET.fromstring(plot.read_text()).findall(f".//{SVG}circle")
    assert len(circles) == section["evaluations"] + 1


def test_search_prints_the_ristretto_style_summary(searched) -> None:
    result, output = searched
    lines = result.stdout.splitlines()
    assert "-" * 30 in lines
    assert (
        "Network top1 analysis (margin 1 points, judged on the 0.9 upper bound of the drop)"
        in lines
    )
    assert "Baseline 32bit float: 97.90" in lines
    for title in ("CONV weights:", "FC weights:", "layer activations:"):
        assert title in lines
    chosen = json.loads(outputs_of(output)[1].read_text())["search"]["chosen"]
    assert f"Chosen: {chosen}" in lines
    assert any(line.startswith("top1: ") for line in lines)
    assert any(line.startswith(f"wrote {output}") for line in lines)
    assert not any(line.startswith("interrupted") for line in lines)


def test_search_report_markdown_shows_accuracy_in_percent(searched) -> None:
    """report.md renders the accuracy shares as percentages, as for `rcompile`."""
    _, output = searched
    markdown = outputs_of(output)[2].read_text()
    assert "| fp32 | 97.90 %" in markdown
    assert "9790" not in markdown


def test_search_json_is_parseable(tmp_path) -> None:
    output = tmp_path / "s.onnx"
    result = rcompile_run(
        *search_args(output, "--error-margin", "1", "--mode", "ristretto", "--json")
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "written"
    assert summary["output"] == str(output)
    assert summary["interrupted"] is False
    assert summary["search"]["mode"] == "ristretto"
    assert summary["search"]["chosen"] == (
        "combined CONV weights 4-bit, FC weights 4-bit, layer activations 8-bit"
    )
    assert "table" not in summary["search"]
    for path in outputs_of(output):
        assert path.is_file(), path


# --- --max-drop -------------------------------------------------------------------------------


def test_search_max_drop_met_writes_everything(tmp_path, capsys) -> None:
    output = tmp_path / "s.onnx"
    code = main(
        search_args(
            output, "--error-margin", "1", "--mode", "ristretto", "--max-drop", "1", "--json"
        )
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["status"] == "written"
    assert 0 <= summary["drop"] <= 1
    for path in outputs_of(output):
        assert path.is_file(), path


def test_search_max_drop_exceeded_exits_3_and_writes_nothing(tmp_path) -> None:
    output = tmp_path / "s.onnx"
    result = rcompile_run(
        *search_args(output, "--error-margin", "1", "--mode", "ristretto", "--max-drop", "0.1")
    )
    assert result.returncode == 3, result.stderr
    assert_nothing_written(tmp_path)
    assert "--max-drop 0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_search_max_drop_exceeded_json_is_rejected_with_reason(tmp_path, capsys) -> None:
    output = tmp_path / "s.onnx"
    code = main(
        search_args(
            output, "--error-margin", "1", "--mode", "ristretto", "--max-drop", "0.1", "--json"
        )
    )
    captured = capsys.readouterr()
    assert code == 3
    summary = json.loads(captured.out)
    assert summary["status"] == "rejected"
    assert "0.1" in summary["reason"] and "nothing was written" in summary["reason"]
    assert summary["drop"] > 0.1
    assert "output" not in summary and "report" not in summary
    assert_nothing_written(tmp_path)


def test_compile_max_drop_met_writes_everything(tmp_path, capsys) -> None:
    output = tmp_path / "c.onnx"
    code = main(
        compile_args(output, "--val", TEST, "--scheme", "dfp8", "--max-drop", "0.5", "--json")
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["status"] == "written"
    assert summary["drop"] <= 0.5
    for path in outputs_of(output)[:3]:
        assert path.is_file(), path


def test_compile_max_drop_exceeded_exits_3_and_writes_nothing(tmp_path) -> None:
    output = tmp_path / "c.onnx"
    result = rcompile_run(
        *compile_args(output, "--val", TEST, "--scheme", "dfp4", "--max-drop", "1", "--json")
    )
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "rejected"
    assert "--max-drop 1" in summary["reason"]
    assert summary["drop"] > 1
    assert "output" not in summary
    assert_nothing_written(tmp_path)
    assert "Traceback" not in result.stderr


def test_compile_max_drop_without_val_is_a_user_error(tmp_path, capsys) -> None:
    code = main(compile_args(tmp_path / "c.onnx", "--max-drop", "1"))
    assert_user_error(code, capsys.readouterr().err, "--max-drop", "--val")
    assert_nothing_written(tmp_path)


# --- user errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--mode", "greedy"], ["mode", "greedy"]),
        (["--cost", "latency"], ["cost", "latency"]),
        (["--scheme", "int8"], ["scheme", "int8"]),
        (["--error-margin", "-1"], ["margin"]),
        (["--error-margin", "nan"], ["margin"]),
        (["--metric", "top3"], ["top3"]),
    ],
)
def test_invalid_search_options_are_user_errors(tmp_path, capsys, extra, named) -> None:
    code = main(search_args(tmp_path / "s.onnx", *extra))
    assert_user_error(code, capsys.readouterr().err, *named)
    assert_nothing_written(tmp_path)


def test_invalid_search_option_is_one_line_in_a_real_process(tmp_path) -> None:
    result = rcompile_run(*search_args(tmp_path / "s.onnx", "--mode", "bogus"))
    assert_user_error(result.returncode, result.stderr, "mode", "bogus")
    assert_nothing_written(tmp_path)


# --- margins nothing meets --------------------------------------------------------------------


@pytest.fixture
def never_passes(tmp_path, monkeypatch) -> str:
    """A metric only the FP32 model itself meets: 100 for its own outputs, else 0."""
    folder = tmp_path / "metric"
    folder.mkdir()
    (folder / "rcompile_cli_metric.py").write_text(
        textwrap.dedent(
            """
            def only_fp32(outputs, labels, reference):
                return 100.0 if outputs is reference else 0.0
            """
        )
    )
    monkeypatch.syspath_prepend(str(folder))
    return "rcompile_cli_metric:only_fp32"


def test_no_configuration_within_the_margin_exits_1_and_writes_nothing(
    tmp_path, capsys, never_passes
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = main(
        search_args(
            out / "s.onnx", "--error-margin", "1", "--mode", "ristretto", "--metric", never_passes
        )
    )
    line = assert_user_error(code, capsys.readouterr().err, "no configuration")
    assert "1 points" in line
    assert_nothing_written(out)


def test_zero_margin_with_ristretto_gives_a_full_configuration_or_says_none(tmp_path) -> None:
    """On LeNet the activations lose points even at 16 bits, so Ristretto's procedure has no
    combined network within a zero margin: the command must say so (exit 1, nothing written)
    rather than write a model with some tensors left FP32."""
    output = tmp_path / "s.onnx"
    result = rcompile_run(*search_args(output, "--error-margin", "0", "--mode", "ristretto"))
    if result.returncode == 1:
        assert_user_error(result.returncode, result.stderr, "no configuration")
        assert_nothing_written(tmp_path)
        return
    assert result.returncode == 0, result.stderr
    report = json.loads(outputs_of(output)[1].read_text())
    assert report["search"]["chosen_score"] >= report["search"]["fp32_score"]
    chosen = report["search"]["chosen"]
    for layer in report["layers"]:
        formats = layer["formats"]
        assert formats["weights"] is not None, f"{layer['node']} weights FP32 in {chosen!r}"
        assert formats["output"] is not None, f"{layer['node']} output FP32 in {chosen!r}"
        assert all(fmt is not None for fmt in formats["inputs"]), layer["node"]


# --- --jobs and Ctrl-C ------------------------------------------------------------------------


def test_jobs_2_chooses_the_same_configuration_as_jobs_1(tmp_path) -> None:
    """Layerwise mode: the sensitivities, the groups' first widths and the bisections' next
    candidates are scored in the worker processes; only those the search asks for count."""
    reports = []
    for jobs in (1, 2):
        output = tmp_path / f"jobs{jobs}.onnx"
        result = rcompile_run(*search_args(output, "--error-margin", "1", "--jobs", jobs, "--json"))
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(outputs_of(output)[1].read_text()))
    one, two = (report["search"] for report in reports)
    assert one["chosen"] == two["chosen"]
    assert one["chosen_score"] == two["chosen_score"]
    assert one["chosen_cost"] == two["chosen_cost"]
    assert [(r["label"], r["score"]) for r in one["table"]] == [
        (r["label"], r["score"]) for r in two["table"]
    ]
    assert reports[0]["layers"] == reports[1]["layers"]
    assert (tmp_path / "jobs1.onnx").read_bytes() == (tmp_path / "jobs2.onnx").read_bytes()


def test_ctrl_c_writes_the_best_so_far_and_says_so(tmp_path, capsys, ctrl_c_after_20) -> None:
    output = tmp_path / "s.onnx"
    code = main(search_args(output, "--error-margin", "1"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "interrupted: wrote the best configuration found so far" in captured.out.splitlines()
    for path in outputs_of(output):
        assert path.is_file(), path
    section = json.loads(outputs_of(output)[1].read_text())["search"]
    assert section["interrupted"] is True
    assert section["evaluations"] == 20
    assert section["chosen_score"] >= section["threshold"]
    assert top1_percent(output) == pytest.approx(section["chosen_score"], abs=1e-6)


def test_ctrl_c_json_says_interrupted(tmp_path, capsys, ctrl_c_after_20) -> None:
    code = main(search_args(tmp_path / "s.onnx", "--json"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["status"] == "written"
    assert summary["interrupted"] is True
    assert summary["search"]["interrupted"] is True


def test_holdout_prints_and_reports_both_numbers(tmp_path) -> None:
    output = tmp_path / "held.onnx"
    result = rcompile_run(*search_args(output, "--holdout", "0.4", "--mode", "ristretto"))
    assert result.returncode == 0, result.stderr
    search = json.loads(outputs_of(output)[1].read_text())["search"]
    kept = search["holdout"]
    assert (search["samples"], kept["samples"]) == (600, 400)
    assert search["confidence"] == 0.9
    line = (
        f"top1 on 600 search samples: FP32 {search['fp32_score']:.2f}, chosen "
        f"{search['chosen_score']:.2f}; on 400 held-out samples: FP32 {kept['fp32_score']:.2f}, "
        f"chosen {kept['chosen_score']:.2f}"
    )
    assert line in result.stdout.splitlines()
