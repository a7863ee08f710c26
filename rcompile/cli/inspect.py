"""`rcompile inspect` and `rcompile eval`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rcompile.api import DEFAULT_BATCH_SIZE
from rcompile.cli.app import (
    AsJson,
    BatchSize,
    Debug,
    Device,
    HeldInputs,
    Preprocess,
    app,
    emit,
)
from rcompile.data import input_specs, open_data, parse_held, parse_preprocessing
from rcompile.errors import UserError
from rcompile.importer import load_model
from rcompile.input_shapes import parse_input_shape, with_input_shapes
from rcompile.report_build import inspect_layers
from rcompile.score import predictions, score
from rcompile.sessions import on_device


@app.command("inspect", help="List the quantizable layers of a model: shapes, MACs, parameters.")
def inspect_command(
    model: Annotated[Path, typer.Argument(help="The .onnx model.")],
    input_shape: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=D1,D2,...: a fixed shape for an input of dynamic size, to count MACs "
            "(repeat for several inputs)."
        ),
    ] = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    given = dict(parse_input_shape(text) for text in input_shape or [])
    layers = inspect_layers(with_input_shapes(load_model(model), given))
    emit({"model": str(model), "layers": layers}, as_json, _inspect_lines)


def _inspect_lines(summary: dict) -> list[str]:
    lines = [f"{'layer':40} {'op':12} {'input':>18} {'weights':>18} {'MACs':>14} {'params':>10}"]
    for row in summary["layers"]:
        shape = "x".join(map(str, row["input_shapes"][0] or ["?"]))
        weights = "x".join(map(str, row["weight_shape"] or ["-"]))
        macs = f"{row['macs']:,}" if row["macs"] is not None else "?"
        lines.append(
            f"{row['node']:40} {row['op_type']:12} {shape:>18} {weights:>18} {macs:>14} "
            f"{row['parameters']:>10,}"
        )
    total = sum(row["macs"] or 0 for row in summary["layers"])
    unknown = sum(row["macs"] is None for row in summary["layers"])
    line = f"{len(summary['layers'])} quantizable layers, {total:,} MACs per sample"
    if unknown:
        line += (
            f" ({unknown} layers of unknown size not counted: give the inputs' sizes with "
            "--input-shape NAME=D1,D2,...)"
        )
    lines.append(line)
    return lines


@app.command("eval", help="Score a model: top-1/top-5 against labels, agreement with a reference.")
def eval_command(
    model: Annotated[Path, typer.Argument(help="The .onnx model to score.")],
    data: Annotated[
        Path,
        typer.Option(
            help="A folder of images (labels from NNNN_ prefixes or class folders) "
            "or a .npz with `labels`."
        ),
    ],
    reference: Annotated[
        Path | None, typer.Option(help="An FP32 model to compare top-1 predictions with.")
    ] = None,
    preprocess: Preprocess = "imagenet",
    held: HeldInputs = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    device: Device = "cpu",
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    scored = load_model(model)
    specs, preprocessing = input_specs(scored), parse_preprocessing(preprocess)
    dataset = open_data(data, specs, preprocessing, parse_held(held or []))
    if not dataset.has_labels and reference is None:
        raise UserError(f"{data}: no labels found; add labels or give --reference to compare with")
    show = sys.stderr.isatty()
    with on_device(device):
        scores = predictions(scored, dataset, batch_size, "scoring", show)
        baseline = (
            predictions(load_model(reference), dataset, batch_size, "scoring reference", show)
            if reference
            else None
        )
    summary = {
        "model": str(model),
        "data": str(data),
        **score(scores, dataset.labels, baseline).as_dict(),
    }
    emit(summary, as_json, _eval_lines)


def _eval_lines(summary: dict) -> list[str]:
    lines = [f"{summary['model']} on {summary['data']} ({summary['samples']} samples)"]
    for key, label in (
        ("top1", "top-1"),
        ("top5", "top-5"),
        ("agreement", "top-1 agreement with reference"),
    ):
        if summary[key] is not None:
            lines.append(f"{label}: {100 * summary[key]:.2f} %")
    return lines
