"""The typer application and what its commands share: options, the summary printer, and
the accuracy contract of `--max-drop`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

import rcompile
from rcompile.data import input_specs, open_data, parse_held, parse_preprocessing
from rcompile.exporter import write_files
from rcompile.importer import read_model
from rcompile.report_markdown import render_markdown

EXAMPLES = """

Examples:

\b
  rcompile models/lenet5.onnx -o lenet5_q.onnx --scheme dfp8 --calib models/mnist_calib.npz
  rcompile net.onnx -o net_q.onnx --scheme dfp:w4a8 --calib images/ --preprocess inception
  rcompile inspect net.onnx
  rcompile eval net_q.onnx --data val/ --reference net.onnx
  rcompile verify net_q.onnx --data images/
"""


class _DefaultToCompile(TyperGroup):
    """Treat `rcompile MODEL ...` as `rcompile compile MODEL ...`."""

    def parse_args(self, ctx, args):
        passthrough = {"--help", "-h", "--version"}
        if args and args[0] not in self.commands and args[0] not in passthrough:
            args = ["compile", *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx):
        """In the order a user meets them."""
        order = ("compile", "search", "finetune", "inspect", "eval", "verify", "vectors")
        return sorted(super().list_commands(ctx), key=lambda name: order.index(name))


app = typer.Typer(
    cls=_DefaultToCompile,
    add_completion=False,
    no_args_is_help=True,
    help="Compile FP32 ONNX models into bit-true models of fixed-point, mini-float and "
    "power-of-two hardware." + EXAMPLES,
    rich_markup_mode=None,
)

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
Preprocess = Annotated[
    str,
    typer.Option(
        help="Preprocessing preset for image folders: imagenet, inception, caffe, unit, raw."
    ),
]
BatchSize = Annotated[int, typer.Option(min=1, help="Samples per onnxruntime run.")]
HeldInputs = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        metavar="NAME=VALUE",
        help="NAME=VALUE[,VALUE...]: an input held constant for every sample (a sample rate, "
        "say), instead of coming from the data; repeat for several.",
    ),
]
Device = Annotated[
    str,
    typer.Option(
        help="Where to run: cpu, cuda (a CUDA GPU: onnxruntime's CUDA provider; torch and "
        "CuPy for fine-tuning) or auto (cuda where there is one)."
    ),
]
CompiledModel = Annotated[Path, typer.Argument(help="A model rcompile wrote.")]
InputData = Annotated[Path, typer.Option(help="Inputs: a folder of images, a .npz or a .npy.")]
MaxDrop = Annotated[
    float | None,
    typer.Option(
        callback=lambda value: value if value is None else finite(value, "--max-drop"),
        help="Fail (exit status 3, nothing written) if the result loses more than this many "
        "points on the validation data.",
    ),
]
ACCURACY_CONTRACT_FAILED = 3


def finite(value: float, option: str, positive: bool = False) -> float:
    """`value` when it is a finite number (above 0 with `positive`, else at least 0)."""
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        needed = "above 0" if positive else "0 or more"
        raise typer.BadParameter(f"{value} is not a finite number {needed}", param_hint=option)
    return value


def number_option(flag: str, help: str, positive: bool = False):
    """A float option that must be a finite number (see `finite`)."""
    return typer.Option(callback=lambda value: finite(value, flag, positive), help=help)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rcompile {rcompile.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """rcompile"""


def enforce(summary: dict, drop: tuple[float, str], max_drop: float, as_json: bool) -> None:
    """The CI contract: more than `max_drop` points lost writes nothing and exits with 3."""
    points, metric = drop
    summary["drop"] = round(points, 4)
    if points <= max_drop:
        return
    summary.update(
        status="rejected",
        reason=f"the quantized model loses {points:.2f} points of {metric}, more than "
        f"--max-drop {max_drop:g}; nothing was written",
    )
    for key in ("output", "report", "report_markdown"):
        summary.pop(key, None)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    print(f"rcompile: {summary['reason']}", file=sys.stderr)
    raise typer.Exit(ACCURACY_CONTRACT_FAILED)


def write_outputs(
    result,
    report_data: dict,
    output: Path,
    report_json: Path,
    inputs: tuple[Path, ...],
    extra: dict[Path, bytes] | None = None,
) -> None:
    """The model, its reports and any `extra` files, as one set, over none of the `inputs`."""
    files = {
        output: result.model.SerializeToString(deterministic=True),
        report_json: json.dumps(report_data, indent=2).encode() + b"\n",
        report_json.with_suffix(".md"): render_markdown(report_data).encode(),
        **(extra or {}),
    }
    write_files(files, inputs)


def input_paths(*paths: Path | None) -> tuple[Path, ...]:
    """The paths a command reads, which no output may be."""
    return tuple(path for path in paths if path is not None)


def compiled_and_data(model: Path, data: Path, preprocess: str, held: list[str] | None):
    """A compiled model as written, and its input data (`held`: `--input` options)."""
    compiled = read_model(model)
    specs, preprocessing = input_specs(compiled), parse_preprocessing(preprocess)
    return compiled, open_data(data, specs, preprocessing, parse_held(held or []))


def emit(summary: dict, as_json: bool, lines) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        for line in lines(summary):
            typer.echo(line)
