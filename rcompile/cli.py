"""The command-line interface: a thin typer layer over the Python API.

    rcompile net.onnx -o net_q.onnx --scheme dfp8 --calib images/
    rcompile inspect net.onnx
    rcompile eval net_q.onnx --data val/ --reference net.onnx

Exit status: 0 success, 1 a user error (one line on stderr; --debug shows the traceback),
2 an internal error.
"""

from __future__ import annotations

import json
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

import rcompile
from rcompile.api import DEFAULT_BATCH_SIZE
from rcompile.api import compile as compile_model
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.errors import UserError
from rcompile.exporter import check_targets, write_bytes, write_model
from rcompile.importer import load_model
from rcompile.plan import PlanOptions
from rcompile.report_build import inspect_layers
from rcompile.report_markdown import render_markdown
from rcompile.scheme import SCHEME_GRAMMAR
from rcompile.score import predictions, score
from rcompile.search import search as run_search

SEARCH_EXAMPLES = """

Example:

\b
  rcompile search models/lenet5.onnx --calib models/mnist_calib.npz \\
      --val models/mnist_test.npz --error-margin 1.0 -o lenet5_search.onnx
"""

EXAMPLES = """

Examples:

\b
  rcompile models/lenet5.onnx -o lenet5_q.onnx --scheme dfp8 --calib models/mnist_calib.npz
  rcompile net.onnx -o net_q.onnx --scheme dfp:w4a8 --calib images/ --preprocess inception
  rcompile inspect net.onnx
  rcompile eval net_q.onnx --data val/ --reference net.onnx
"""


class _DefaultToCompile(TyperGroup):
    """Treat `rcompile MODEL ...` as `rcompile compile MODEL ...`."""

    def parse_args(self, ctx, args):
        passthrough = {"--help", "-h", "--version"}
        if args and args[0] not in self.commands and args[0] not in passthrough:
            args = ["compile", *args]
        return super().parse_args(ctx, args)


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
BatchSize = Annotated[int, typer.Option(help="Samples per onnxruntime run.")]
MaxDrop = Annotated[
    float | None,
    typer.Option(
        help="Fail (exit status 3, nothing written) if the result loses more than this many "
        "points on the validation data."
    ),
]
ACCURACY_CONTRACT_FAILED = 3


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


@app.command("compile", help="Quantize a model (the default command)." + EXAMPLES)
def compile_command(
    model: Annotated[Path, typer.Argument(help="The FP32 .onnx model.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write the quantized model.")
    ],
    scheme: Annotated[str, typer.Option(help=f"The scheme: {SCHEME_GRAMMAR}.")] = "dfp8",
    calib: Annotated[
        Path | None, typer.Option(help="Calibration data: a folder of images, a .npz or a .npy.")
    ] = None,
    calib_count: Annotated[
        int | None, typer.Option(help="Use only the first N calibration samples.")
    ] = None,
    val: Annotated[
        Path | None, typer.Option(help="Labelled data to score the FP32 and quantized models on.")
    ] = None,
    preprocess: Preprocess = "imagenet",
    overrides: Annotated[
        Path | None, typer.Option(help="Per-layer overrides (JSON or YAML).")
    ] = None,
    per_tensor: Annotated[
        bool,
        typer.Option(
            "--per-tensor", help="One weight format per tensor instead of per output channel."
        ),
    ] = False,
    signed_activations: Annotated[
        bool,
        typer.Option(
            "--signed-activations",
            help="Signed formats even for activations that are never negative.",
        ),
    ] = False,
    bias: Annotated[
        str,
        typer.Option(
            help="Bias format: accumulator (input fl + weight fl, 32 bits) or weights (Ristretto)."
        ),
    ] = "accumulator",
    fit: Annotated[
        str, typer.Option(help="How fractional lengths follow the data: mse, max or ristretto.")
    ] = "mse",
    report: Annotated[
        Path | None,
        typer.Option(
            help="Report path (.json; the .md goes beside it). Default: beside the output."
        ),
    ] = None,
    max_drop: MaxDrop = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    if max_drop is not None and val is None:
        raise UserError("--max-drop needs --val, the data to measure the drop on")
    options = PlanOptions(
        per_channel=not per_tensor, unsigned=not signed_activations, bias=bias, fit=fit
    )
    report_json = report or output.with_name(f"{output.stem}.report.json")
    report_md = report_json.with_suffix(".md")
    check_targets([output, report_json, report_md], protected=(model,))
    result = compile_model(
        model,
        scheme,
        calib,
        calib_count=calib_count,
        val=val,
        preprocessing=parse_preprocessing(preprocess),
        options=options,
        overrides=overrides if overrides is not None else (),
        batch_size=batch_size,
        show_progress=sys.stderr.isatty(),
    )
    report_data = result.report.as_dict()
    summary = {
        "status": "written",
        "output": str(output),
        "report": str(report_json),
        "report_markdown": str(report_md),
        "fp32_bytes": model.stat().st_size,
        "totals": report_data["totals"],
        "accuracy": report_data["accuracy"],
    }
    if max_drop is not None:
        _enforce(summary, _drop(report_data["accuracy"]), max_drop, as_json)
    _write_outputs(result, report_data, output, report_json, model)
    summary["bytes"] = output.stat().st_size
    _emit(summary, as_json, _compile_lines)


def _drop(accuracy: dict) -> tuple[float, str]:
    """Points lost on the validation data: top-1 with labels, else top-1 agreement."""
    fp32, quantized = accuracy["fp32"], accuracy["quantized"]
    if fp32.get("top1") is not None:
        return 100 * (fp32["top1"] - quantized["top1"]), "top-1"
    return 100 * (1 - quantized["agreement"]), "top-1 agreement"


def _enforce(summary: dict, drop: tuple[float, str], max_drop: float, as_json: bool) -> None:
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


def _write_outputs(result, report_data: dict, output: Path, report_json: Path, model: Path) -> None:
    write_model(result.model, output, protected=(model,))
    write_bytes(json.dumps(report_data, indent=2).encode() + b"\n", report_json, (model,))
    write_bytes(render_markdown(report_data).encode(), report_json.with_suffix(".md"), (model,))


def _compile_lines(summary: dict) -> list[str]:
    totals = summary["totals"]
    lines = [
        f"wrote {summary['output']} ({summary['bytes']:,} bytes, FP32 {summary['fp32_bytes']:,})",
        f"report {summary['report']} and {summary['report_markdown']}",
        f"{totals['layers']} layers quantized; parameter memory "
        f"{totals['parameter_memory_bits']:,} bits "
        f"({totals['parameter_compression']}x smaller than FP32)",
    ]
    accuracy = summary["accuracy"]
    if accuracy:
        fp32, quantized = accuracy["fp32"], accuracy["quantized"]
        if fp32["top1"] is not None:
            lines.append(
                f"top-1 FP32 {100 * fp32['top1']:.2f} %, quantized {100 * quantized['top1']:.2f} %"
            )
        lines.append(f"top-1 agreement with FP32 {100 * quantized['agreement']:.2f} %")
    return lines


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
        float, typer.Option(help="Points of the metric the result may lose against FP32.")
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
        str, typer.Option(help="top1, top5, agreement, module:function, or auto.")
    ] = "auto",
    jobs: Annotated[int, typer.Option(help="Candidates scored in parallel processes.")] = 1,
    budget: Annotated[int, typer.Option(help="At most this many evaluations.")] = 200,
    preprocess: Preprocess = "imagenet",
    report: Annotated[Path | None, typer.Option(help="Report path (.json).")] = None,
    max_drop: MaxDrop = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    report_json = report or output.with_name(f"{output.stem}.report.json")
    plot = report_json.with_suffix(".svg")
    check_targets([output, report_json, report_json.with_suffix(".md"), plot], protected=(model,))
    with _search_progress(sys.stderr.isatty()) as progress:
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
        _enforce(summary, (drop, details["metric"]), max_drop, as_json)
    _write_outputs(found.result, report_data, output, report_json, model)
    write_bytes(found.plot.encode(), plot, (model,))
    _emit(summary, as_json, _search_lines)


def _search_lines(summary: dict) -> list[str]:
    details = summary["search"]
    lines = [
        f"wrote {summary['output']}, report {summary['report']}, plot {summary['plot']}",
        f"{details['evaluations']} evaluations; one costs "
        f"{details['evaluation_cost_vs_fp32']['median']}x an FP32 evaluation (median)",
    ]
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


@app.command(
    "finetune",
    help="Train an rcompile model's weights through its quantizers (full-precision shadow "
    "weights, straight-through gradients) and write it with the same plan. Needs PyTorch "
    "(the `finetune` extra).",
)
def finetune_command(
    model: Annotated[Path, typer.Argument(help="A model written by rcompile.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
    train: Annotated[Path, typer.Option(help="Labelled training data.")],
    val: Annotated[Path, typer.Option(help="Labelled validation data (early stopping).")],
    epochs: Annotated[int, typer.Option(help="At most this many passes over the data.")] = 10,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, cosine schedule).")] = 3e-4,
    batch_size: Annotated[int, typer.Option(help="Samples per training step.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the shuffling and the rounding.")] = 0,
    stochastic_rounding: Annotated[
        bool,
        typer.Option("--stochastic-rounding", help="Round weights stochastically in training."),
    ] = False,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better validation top-1.")
    ] = 3,
    preprocess: Preprocess = "imagenet",
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    check_targets([output], protected=(model,))
    try:
        from rcompile.finetune import TrainOptions, finetune
    except ImportError as error:
        raise UserError(
            f'fine-tuning needs PyTorch ({error}); install it with pip install -e ".[finetune]"'
        ) from None
    options = TrainOptions(epochs, lr, batch_size, seed, stochastic_rounding, patience)
    result = finetune(
        model, train, val, options, parse_preprocessing(preprocess), sys.stderr.isatty()
    )
    write_model(result.model, output, protected=(model,))
    _emit({"output": str(output), **result.as_dict()}, as_json, _finetune_lines)


def _finetune_lines(summary: dict) -> list[str]:
    return [
        f"wrote {summary['output']}",
        f"validation top-1 {summary['val_top1_before']:.2f} % before, "
        f"{summary['val_top1_after']:.2f} % after (best epoch {summary['best_epoch']} of "
        f"{len(summary['history'])})",
    ]


@app.command("inspect", help="List the quantizable layers of a model: shapes, MACs, parameters.")
def inspect_command(
    model: Annotated[Path, typer.Argument(help="The .onnx model.")],
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    layers = inspect_layers(load_model(model))
    _emit({"model": str(model), "layers": layers}, as_json, _inspect_lines)


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
    lines.append(f"{len(summary['layers'])} quantizable layers, {total:,} MACs per sample")
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
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    scored = load_model(model)
    dataset = open_data(data, input_specs(scored), parse_preprocessing(preprocess))
    if not dataset.has_labels and reference is None:
        raise UserError(f"{data}: no labels found; add labels or give --reference to compare with")
    show = sys.stderr.isatty()
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
    _emit(summary, as_json, _eval_lines)


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


def _emit(summary: dict, as_json: bool, lines) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        for line in lines(summary):
            typer.echo(line)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0, 1 user error, 2 internal error)."""
    args = (sys.argv[1:] if argv is None else argv) or ["--help"]
    debug = "--debug" in args
    try:
        status = app(args=args, prog_name="rcompile", standalone_mode=False)
    except (UserError, typer.TyperException) as error:
        if debug:
            traceback.print_exc()
        message = error.format_message() if isinstance(error, typer.TyperException) else str(error)
        print(f"rcompile: error: {message}", file=sys.stderr)
        return 1
    except (typer.Abort, KeyboardInterrupt):
        print("rcompile: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug of ours: say so, and how to see it
        if debug:
            traceback.print_exc()
        first_line = (str(error).strip().splitlines() or [""])[0]
        print(
            f"rcompile: internal error: {type(error).__name__}: {first_line} (run with --debug "
            "for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 2
    return status if isinstance(status, int) else 0


def entry_point() -> None:
    sys.exit(main())
