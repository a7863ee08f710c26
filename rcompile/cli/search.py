"""`rcompile search`: the bit-width search."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rcompile.api import DEFAULT_BATCH_SIZE
from rcompile.cli.app import (
    AsJson,
    BatchSize,
    Debug,
    Device,
    HeldInputs,
    MaxDrop,
    Preprocess,
    app,
    emit,
    enforce,
    input_paths,
    number_option,
    write_outputs,
)
from rcompile.data import parse_held, parse_preprocessing
from rcompile.exporter import check_targets
from rcompile.search import DEFAULT_CONFIDENCE
from rcompile.search import search as run_search
from rcompile.sessions import on_device

SEARCH_EXAMPLES = """

Example:

\b
  rcompile search models/lenet5.onnx --calib models/mnist_calib.npz \\
      --val models/mnist_test.npz --error-margin 1.0 -o lenet5_search.onnx
"""


@app.command(
    "search",
    help="Find the fewest bits that keep the metric within an error margin of FP32, and "
    "write that model (see docs/search.md)." + SEARCH_EXAMPLES,
)
def search_command(
    model: Annotated[Path, typer.Argument(help="The FP32 .onnx model.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write the chosen model.")
    ],
    calib: Annotated[Path, typer.Option(help="Calibration data (folder of images, .npz, .npy).")],
    val: Annotated[Path, typer.Option(help="Validation data the metric is measured on.")],
    error_margin: Annotated[
        float,
        number_option(
            "--error-margin",
            "Points of the metric the result may lose against FP32.",
        ),
    ] = 1.0,
    scheme: Annotated[
        str, typer.Option(help="Families to search: dfp, minifloat, pow2 or all.")
    ] = "dfp",
    mode: Annotated[
        str,
        typer.Option(
            help="ristretto (16/8/4/2 bits per group), widths (every width per group) or "
            "layerwise (widths, then per-layer allocation)."
        ),
    ] = "layerwise",
    cost: Annotated[
        str, typer.Option(help="What to minimise: weights, activations or bitops.")
    ] = "weights",
    metric: Annotated[
        str, typer.Option(help="top1, top5, agreement, fidelity, module:function, or auto.")
    ] = "auto",
    confidence: Annotated[
        float,
        number_option(
            "--confidence",
            "A candidate passes when this upper confidence bound of its drop (a paired "
            "bootstrap over the samples) is within the margin.",
        ),
    ] = DEFAULT_CONFIDENCE,
    holdout: Annotated[
        float,
        number_option(
            "--holdout",
            "Keep this share of --val away from every decision and report the chosen model on it.",
        ),
    ] = 0.0,
    jobs: Annotated[
        int,
        typer.Option(min=1, help="Candidates scored in parallel processes (with --ray: actors)."),
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Score candidates on a Ray cluster: its address, auto (the running one) or "
            "local (start one here)."
        ),
    ] = None,
    budget: Annotated[int, typer.Option(min=1, help="At most this many evaluations.")] = 200,
    preprocess: Preprocess = "imagenet",
    held: HeldInputs = None,
    report: Annotated[Path | None, typer.Option(help="Report path (.json).")] = None,
    max_drop: MaxDrop = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    device: Device = "cpu",
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    inputs = input_paths(model, calib, val)
    check_targets([output], inputs)
    report_json = report or output.with_name(f"{output.stem}.report.json")
    plot = report_json.with_suffix(".svg")
    check_targets([output, report_json, report_json.with_suffix(".md"), plot], inputs)
    with on_device(device), _search_progress(sys.stderr.isatty()) as progress:
        found = run_search(
            model,
            calib,
            val,
            error_margin,
            families=scheme,
            mode=mode,
            cost=cost,
            metric=metric,
            jobs=jobs,
            budget=budget,
            preprocessing=parse_preprocessing(preprocess),
            batch_size=batch_size,
            report_progress=progress,
            held=parse_held(held or []),
            confidence=confidence,
            holdout=holdout,
            ray=ray,
        )
    report_data = found.result.report.as_dict()
    details = report_data["search"]
    if not as_json:
        for line in found.summary:
            typer.echo(line)
    summary = {
        "status": "written",
        "output": str(output),
        "report": str(report_json),
        "plot": str(plot),
        "interrupted": found.interrupted,
        "search": {key: value for key, value in details.items() if key != "table"},
    }
    if max_drop is not None:
        drop = details["fp32_score"] - details["chosen_score"]
        enforce(summary, (drop, details["metric"]), max_drop, as_json)
    write_outputs(
        found.result, report_data, output, report_json, inputs, {plot: found.plot.encode()}
    )
    emit(summary, as_json, _search_lines)


def _search_lines(summary: dict) -> list[str]:
    details = summary["search"]
    lines = [
        f"wrote {summary['output']}, report {summary['report']}, plot {summary['plot']}",
        f"{details['evaluations']} evaluations; one costs "
        f"{details['evaluation_cost_vs_fp32']['median']}x an FP32 evaluation (median)",
    ]
    kept = details["holdout"]
    if kept is not None:
        lines.append(
            f"{details['metric']} on {details['samples']} search samples: FP32 "
            f"{details['fp32_score']:.2f}, chosen {details['chosen_score']:.2f}; on "
            f"{kept['samples']} held-out samples: FP32 {kept['fp32_score']:.2f}, chosen "
            f"{kept['chosen_score']:.2f}"
        )
    if summary["interrupted"]:
        lines.insert(0, "interrupted: wrote the best configuration found so far")
    return lines


@contextmanager
def _search_progress(show: bool):
    """A status line naming the candidate being scored and the best so far."""
    if not show:
        yield lambda label, best: None
        return
    console = Console(stderr=True)
    with console.status("searching") as status:

        def update(label: str, best) -> None:
            text = f"scoring {label}"
            if best is not None:
                text += (
                    f" | best so far: {best.configuration.label} "
                    f"({best.score:.2f}, {best.cost:,} bits)"
                )
            status.update(text)

        yield update
