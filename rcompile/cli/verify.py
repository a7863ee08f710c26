"""`rcompile verify MODEL_Q --data D`: the gate for CI pipelines and RTL designers."""

from __future__ import annotations

import sys
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
from rcompile.errors import UserError
from rcompile.verify import verify

DEFAULT_COUNT = 100


# Step sizes of differences listed per line, smallest first.
SHOWN_STEPS = 5


@app.command(
    "verify",
    help="Run a compiled model at every onnxruntime optimisation level and through its "
    "reference datapath; count per output the values that differ and by how many steps. "
    "Exit status 1 when a sim model is not bit-true.",
)
def verify_command(
    model: CompiledModel,
    data: InputData,
    count: Annotated[
        int, typer.Option(min=1, help="Verify on the first N samples.")
    ] = DEFAULT_COUNT,
    preprocess: Preprocess = "imagenet",
    held: HeldInputs = None,
    batch_size: BatchSize = 8,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    compiled, dataset = compiled_and_data(model, data, preprocess, held)
    result = verify(compiled, dataset, count, batch_size, str(model), sys.stderr.isatty())
    emit(result.as_dict(), as_json, _verify_lines)
    if result.target == "sim" and not result.exact:
        worst = max(result.deviations, key=lambda d: d.differing)
        raise UserError(
            f"{model} is not bit-true: {worst.differing:,} of {worst.values:,} values of "
            f"{worst.output} differ from the reference at {worst.level} on {worst.provider}"
        )


def _verify_lines(summary: dict) -> list[str]:
    lines = [
        f"{summary['model']} (target {summary['target']}) against its reference datapath, "
        f"{summary['samples']} samples"
    ]
    for run in summary["runs"]:
        line = (
            f"{run['provider']:22} {run['level']:12} {run['output']}: "
            f"{run['differing']:,} of {run['values']:,} differ"
        )
        if run["differing"]:
            ordered = sorted(run["by_steps"].items(), key=lambda kv: float(kv[0]))
            counts = ", ".join(f"{k}: {v:,}" for k, v in ordered[:SHOWN_STEPS])
            if len(ordered) > SHOWN_STEPS:
                counts += f", {len(ordered) - SHOWN_STEPS:,} more sizes (--json lists all)"
            line += f", by up to {run['max_steps']:g} steps ({counts})"
        lines.append(line)
    lines.append("bit-true: yes" if summary["exact"] else "bit-true: no")
    return lines
