"""`rcompile MODEL -o OUT`: compile a model (the default command)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rcompile.api import DEFAULT_BATCH_SIZE
from rcompile.api import compile as compile_model
from rcompile.cli.app import (
    EXAMPLES,
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
    write_outputs,
)
from rcompile.data import parse_held, parse_preprocessing
from rcompile.errors import UserError
from rcompile.exporter import check_targets
from rcompile.lowering import TARGETS
from rcompile.plan import OVERFLOWS, Accumulator, PlanOptions
from rcompile.scheme import SCHEME_GRAMMAR
from rcompile.sessions import on_device


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
        int | None, typer.Option(min=1, help="Use only the first N calibration samples.")
    ] = None,
    val: Annotated[
        Path | None, typer.Option(help="Labelled data to score the FP32 and quantized models on.")
    ] = None,
    preprocess: Preprocess = "imagenet",
    held: HeldInputs = None,
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
        str,
        typer.Option(
            help="How weights' fractional lengths follow the data: mse, max or ristretto "
            "(Ristretto's rules, for activations too)."
        ),
    ] = "mse",
    activation_fit: Annotated[
        str,
        typer.Option(
            help="How activation formats follow the calibration data: max (hold the "
            "largest value), mse (least squared error) or percentile[:P] (hold the P-th "
            "percentile of the magnitudes, 99.99)."
        ),
    ] = "max",
    bias_correction: Annotated[
        bool,
        typer.Option(
            "--bias-correction/--no-bias-correction",
            help="Move each bias so that the quantized weights keep every output channel's "
            "mean on the calibration data.",
        ),
    ] = True,
    equalize: Annotated[
        bool,
        typer.Option(
            "--equalize/--no-equalize",
            help="Rescale consecutive convolutions' channels to equal weight ranges before "
            "quantizing (cross-layer equalisation; off: on EfficientNet-Lite0 it loses with "
            "bias correction on).",
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Report path (.json; the .md goes beside it). Default: beside the output."
        ),
    ] = None,
    accumulator_bits: Annotated[
        int | None,
        typer.Option(
            min=8,
            max=64,
            help="Every layer's accumulator width (default: 32 bits for 8x8-bit products, "
            "64 for wider ones).",
        ),
    ] = None,
    overflow: Annotated[
        str, typer.Option(help="What an accumulator does on overflow: saturate or wrap.")
    ] = "saturate",
    target: Annotated[
        str,
        typer.Option(
            help="sim: bit-true at every onnxruntime optimisation level; qdq: standard "
            "QuantizeLinear/DequantizeLinear for deployment (fast, checked by `rcompile verify`)."
        ),
    ] = "sim",
    max_drop: MaxDrop = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    device: Device = "cpu",
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    if target not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if max_drop is not None and val is None:
        raise UserError("--max-drop needs --val, the data to measure the drop on")
    if overflow not in OVERFLOWS:
        raise UserError(f"--overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}")
    register = None
    if accumulator_bits is not None or overflow != "saturate":
        register = Accumulator(accumulator_bits or 32, overflow)
    options = PlanOptions(
        per_channel=not per_tensor,
        unsigned=not signed_activations,
        bias=bias,
        fit=fit,
        activation_fit=activation_fit,
        accumulator=register,
        bias_correction=bias_correction,
        equalization=equalize,
    )
    inputs = input_paths(model, calib, val, overrides)
    check_targets([output], inputs)
    report_json = report or output.with_name(f"{output.stem}.report.json")
    report_md = report_json.with_suffix(".md")
    check_targets([output, report_json, report_md], inputs)
    with on_device(device):
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
            target=target,
            held=parse_held(held or []),
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
        enforce(summary, _drop(report_data["accuracy"]), max_drop, as_json)
    write_outputs(result, report_data, output, report_json, inputs)
    summary["bytes"] = output.stat().st_size
    emit(summary, as_json, _compile_lines)


def _drop(accuracy: dict) -> tuple[float, str]:
    """Points lost on the validation data: top-1 with labels, else top-1 agreement."""
    fp32, quantized = accuracy["fp32"], accuracy["quantized"]
    if fp32.get("top1") is not None:
        return 100 * (fp32["top1"] - quantized["top1"]), "top-1"
    return 100 * (1 - quantized["agreement"]), "top-1 agreement"


def _compile_lines(summary: dict) -> list[str]:
    totals = summary["totals"]
    lines = [
        f"wrote {summary['output']} ({summary['bytes']:,} bytes, FP32 {summary['fp32_bytes']:,})",
        f"report {summary['report']} and {summary['report_markdown']}",
        f"{totals['layers']} layers quantized; parameter memory "
        f"{totals['parameter_memory_bits']:,} bits "
        + (
            f"({totals['parameter_compression']}x smaller than FP32)"
            if totals["parameter_compression"]
            else "(no parameters quantized)"
        ),
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
