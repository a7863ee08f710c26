"""The Python API: `compile` runs the whole pipeline (import, calibrate, plan, rewrite,
export) and returns the quantized model with its report. The CLI is a thin layer over it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from rcompile.batching import model_batches
from rcompile.data import Dataset, Preprocessing, input_specs, open_data
from rcompile.errors import CalibrationError, warn
from rcompile.exporter import finish_model
from rcompile.importer import prepare_model, read_model
from rcompile.lowering import lower
from rcompile.origin import SOURCE_KEY, source_record
from rcompile.passes.bias_correction import bias_corrector, mean_axes, with_biases
from rcompile.passes.calibrate import (
    Statistics,
    activation_ranges,
    activation_tensors,
    weight_ranges,
)
from rcompile.passes.declared_shapes import declared_names, keep_declared_shapes
from rcompile.passes.equalize import equalize_layers
from rcompile.passes.layers import QUANTIZABLE, Layer, find_layers
from rcompile.plan import (
    PLAN_KEY,
    Override,
    Plan,
    Planner,
    PlanOptions,
    load_overrides,
    plan_record,
)
from rcompile.progress import progress_bar
from rcompile.report import Report
from rcompile.report_build import layer_rows, nested_nodes, unquantized_ops
from rcompile.scheme import FixedRule, MiniFloatRule, Scheme, parse_scheme
from rcompile.score import predictions, score

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class CompileResult:
    model: onnx.ModelProto
    report: Report
    plan: Plan


def compile(
    model: str | Path | onnx.ModelProto,
    scheme: str = "dfp8",
    calib: str | Path | None = None,
    *,
    calib_count: int | None = None,
    val: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    options: PlanOptions | None = None,
    overrides: str | Path | tuple[Override, ...] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = False,
    target: str = "sim",
    held: Mapping[str, object] | None = None,
) -> CompileResult:
    """Quantize `model` with `scheme`, calibrating on `calib` (a folder of images, .npz or
    .npy); with `val`, score the FP32 and the quantized model on it for the report.
    `target`: `sim`, bit-true under every onnxruntime optimisation level, or `qdq`, plain
    QuantizeLinear/DequantizeLinear for deployment (see `rcompile.lowering`). `held`: inputs
    held constant, `{name: value}` (a sample rate, say), fed to every run."""
    options = options or PlanOptions()
    imported = load_source(model)
    source = imported.model  # the FP32 reference for the accuracy
    if options.equalization:
        imported = replace(imported, model=equalize_layers(source).model)
    parsed = parse_scheme(scheme)
    if not isinstance(overrides, tuple):
        overrides = load_overrides(overrides)
    layers = find_layers(imported.model)
    nested = [node for _, node in nested_nodes(source.graph) if node.op_type in QUANTIZABLE]
    if nested:
        warn(
            f"{len(nested)} layers inside If, Loop or Scan bodies stay FP32 (the report lists "
            "them under unquantized ops)"
        )
    statistics, calibration = collect_statistics(
        imported.model,
        layers,
        parsed,
        calib,
        calib_count,
        preprocessing,
        batch_size,
        show_progress,
        held,
        means=options.bias_correction,
        histograms=options.fits_activations,
    )
    planner = Planner(
        layers, statistics, options, bias_corrector(imported.model, statistics, options)
    )
    plan = planner.plan(parsed, overrides)
    imported, statistics = with_corrected_biases(
        imported, statistics, layers, planner.corrected_biases(plan)
    )
    accuracy_of = None
    if val is not None:

        def accuracy_of(quantized: onnx.ModelProto) -> dict:
            return _accuracy(source, quantized, val, preprocessing, batch_size, show_progress, held)

    return finish(
        imported, plan, options, calibration, accuracy_of, target=target, statistics=statistics
    )


def with_corrected_biases(
    imported: Source, statistics: Statistics, layers: list[Layer], biases: dict[str, np.ndarray]
) -> tuple[Source, Statistics]:
    """The source with the biases bias correction chose, and the parameter ranges read from
    it (what the report shows); unchanged without any."""
    if not biases:
        return imported, statistics
    model = with_biases(imported.model, biases)
    return replace(imported, model=model), replace(statistics, weights=weight_ranges(model, layers))


@dataclass(frozen=True)
class Source:
    """An imported model, its label for reports, the values whose shapes its file declared
    (the only shapes the written model keeps), and where it came from (the teacher that
    fine-tuning looks for; None for a model given in memory)."""

    model: onnx.ModelProto
    label: str
    declared_shapes: frozenset[str]
    origin: dict | None = None


def load_source(model: str | Path | onnx.ModelProto) -> Source:
    if isinstance(model, onnx.ModelProto):
        return Source(prepare_model(model), model.graph.name or "model", declared_names(model))
    raw = read_model(model)
    return Source(
        prepare_model(raw, str(model)), str(model), declared_names(raw), source_record(model)
    )


def finish(
    imported: Source,
    plan: Plan,
    options: PlanOptions,
    calibration: dict,
    accuracy_of=None,
    extra: dict | None = None,
    target: str = "sim",
    statistics: Statistics | None = None,
) -> CompileResult:
    """Lower `plan` on `source` for `target`, record the provenance in the model, and build
    the report (`accuracy_of(quantized_model)` fills its accuracy; `extra` adds report
    sections)."""
    source = imported.model
    lowered = lower(source, plan, target).model
    quantized = keep_declared_shapes(lowered, imported.declared_shapes).model
    option_values = {
        "per_channel": options.per_channel,
        "unsigned": options.unsigned,
        "bias": options.bias,
        "fit": options.fit,
        "activation_fit": options.activation_fit,
        "accumulator": options.accumulator.as_dict() if options.accumulator else "default",
        "bias_correction": options.bias_correction,
        "equalization": options.equalization,
    }
    quantized = finish_model(
        quantized,
        {
            "rcompile.scheme": plan.scheme,
            "rcompile.options": option_values,
            "rcompile.calibration": _without_folders(calibration),
            PLAN_KEY: plan_record(plan),
            "rcompile.target": target,
            **({SOURCE_KEY: imported.origin} if imported.origin else {}),
        },
    )
    report = Report(
        model=imported.label,
        scheme=plan.scheme,
        target=target,
        options=option_values,
        calibration=calibration,
        layers=layer_rows(source, plan, statistics),
        unquantized=unquantized_ops(source, plan),
        skipped=plan.skipped,
        accuracy=accuracy_of(quantized) if accuracy_of else None,
        extra=extra or {},
    )
    return CompileResult(quantized, report, plan)


def _without_folders(calibration: dict) -> dict:
    """The calibration summary with its data's file or folder name only: a model travels,
    and the user's folders are nobody else's business."""
    source = calibration.get("source")
    return {**calibration, "source": Path(source).name if source else source}


def collect_statistics(
    model,
    layers,
    scheme: Scheme,
    calib,
    calib_count,
    preprocessing,
    batch_size,
    show_progress,
    held: Mapping[str, object] | None = None,
    means: bool = False,
    histograms: bool = False,
) -> tuple[Statistics, dict]:
    """Weight ranges, and activation ranges from the calibration data where the scheme needs
    them; with a summary of the calibration for the report. `held`: inputs held constant.
    `means`: also the per-channel means of the layer inputs that bias correction reads;
    `histograms`: also the activations' magnitude histograms that activation fitting reads."""
    weights = weight_ranges(model, layers)
    if calib is None:
        if not (
            isinstance(scheme.activations, FixedRule) and isinstance(scheme.weights, FixedRule)
        ):
            scaled = isinstance(scheme.activations, MiniFloatRule)
            fitted = "exponent biases" if scaled else "fractional lengths"
            base, at, rounding = scheme.name.partition("@")
            instead = f", or use {base}:unscaled{at}{rounding}" if scaled else ""
            raise CalibrationError(
                f"scheme {scheme.name} sets its {fitted} from calibration data; give some "
                f"with --calib (a folder of images, a .npz or a .npy){instead}"
            )
        return Statistics({}, weights, 0), {"source": None, "samples": 0}
    data = open_data(calib, input_specs(model), preprocessing, held)
    total = min(data.count, calib_count) if calib_count else data.count
    with progress_bar("calibrating", total, show_progress) as advance:
        batches = _counted(model, data, batch_size, calib_count, advance)
        tensors = activation_tensors(layers)
        axes = mean_axes(model, layers) if means else None
        observed = activation_ranges(
            model, tensors, batches, held=data.held, channel_axes=axes, histograms=histograms
        )
    statistics = Statistics(
        observed.ranges, weights, observed.samples, observed.means, observed.histograms
    )
    return statistics, {"source": str(calib), "samples": observed.samples}


def _counted(model, data: Dataset, batch_size: int, limit: int | None, advance):
    """The batches' sample inputs (the held ones apart), counting them for the progress."""
    for batch in model_batches(model, data, batch_size, limit):
        samples = {k: v for k, v in batch.inputs.items() if k not in data.held}
        yield samples
        advance(batch.size)


def _accuracy(source, quantized, val, preprocessing, batch_size, show_progress, held) -> dict:
    data = open_data(val, input_specs(source), preprocessing, held)
    reference = predictions(source, data, batch_size, "scoring FP32", show_progress)
    result = predictions(quantized, data, batch_size, "scoring quantized", show_progress)
    return {
        "data": str(val),
        "samples": len(result),
        "fp32": score(reference, data.labels).as_dict(),
        "quantized": score(result, data.labels, reference).as_dict(),
    }
