"""`rcompile vectors MODEL_Q --data D -o DIR`: golden vectors for RTL testbenches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rcompile.cli.app import (
    AsJson,
    BatchSize,
    CompiledModel,
    Debug,
    HeldInputs,
    InputData,
    Preprocess,
    app,
    compiled_and_data,
    emit,
)
from rcompile.vectors import write_vectors


@app.command(
    "vectors",
    help="Write golden vectors: per layer and sample the integer codes of input, weights, "
    "bias, accumulator and output, as the reference datapath computes them (vectors.npz, "
    "one hex file per tensor, manifest.json).",
)
def vectors_command(
    model: CompiledModel,
    data: InputData,
    output: Annotated[Path, typer.Option("-o", "--output", help="A new (or empty) folder.")],
    count: Annotated[int, typer.Option(min=1, help="Samples to write.")] = 1,
    preprocess: Preprocess = "imagenet",
    held: HeldInputs = None,
    batch_size: BatchSize = 8,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    compiled, dataset = compiled_and_data(model, data, preprocess, held)
    manifest = write_vectors(compiled, dataset, count, batch_size, output, sys.stderr.isatty())
    summary = {
        "output": str(output),
        "samples": manifest["samples"],
        "layers": len(manifest["layers"]),
    }
    emit(summary, as_json, _lines)


def _lines(summary: dict) -> list[str]:
    return [
        f"wrote {summary['samples']} samples x {summary['layers']} layers to {summary['output']} "
        "(manifest.json, vectors.npz, hex/)"
    ]
