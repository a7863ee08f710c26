"""The bit-width search: given a model, calibration data, labelled (or unlabelled) validation
data and an error margin, find the cheapest configuration whose metric stays within the margin
of the FP32 model's, and build that model with its report (see docs/search.md)."""

from __future__ import annotations

import statistics as stats
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from rcompile.api import (
    DEFAULT_BATCH_SIZE,
    CompileResult,
    collect_statistics,
    finish,
    load_source,
    with_corrected_biases,
)
from rcompile.batching import model_batches
from rcompile.data import Preprocessing, input_specs, open_data
from rcompile.errors import SchemeError, UserError
from rcompile.passes.layers import find_layers
from rcompile.plan import PlanOptions
from rcompile.scheme import parse_scheme
from rcompile.score import score
from rcompile.search.cost import COSTS, layer_sizes
from rcompile.search.evaluator import EvaluationData, Evaluator
from rcompile.search.layerwise import allocate
from rcompile.search.metrics import load_metric
from rcompile.search.procedures import (
    Outcome,
    ristretto_dfp,
    ristretto_minifloat,
    ristretto_pow2,
)
from rcompile.search.runner import BudgetSpent, Runner
from rcompile.search.table import plot_svg, ristretto_summary, rows
from rcompile.search.workers import LocalWorkers, RayWorkers

FAMILIES = ("dfp", "minifloat", "pow2", "all")
DEFAULT_CONFIDENCE = 0.9
HOLDOUT_SEED = 0
MODES = ("ristretto", "widths", "layerwise")


class NoConfigurationError(UserError):
    """No configuration scored stays within the margin."""


@dataclass(frozen=True)
class SearchResult:
    result: CompileResult
    summary: list[str]
    plot: str
    interrupted: bool


def search(
    model: str | Path | onnx.ModelProto,
    calib: str | Path,
    val: str | Path,
    margin: float,
    *,
    families: str = "dfp",
    mode: str = "layerwise",
    cost: str = "weights",
    metric: str = "auto",
    jobs: int = 1,
    budget: int = 200,
    options: PlanOptions | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report_progress=lambda label, best: None,
    held: Mapping[str, object] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    holdout: float = 0.0,
    ray: str | None = None,
) -> SearchResult:
    """Search; an interrupt (Ctrl-C) ends it early with the best configuration found so far.
    `held`: inputs held constant (see `rcompile.compile`). A candidate passes when the
    `confidence` upper bound of its drop is within `margin`; `holdout`, a seeded share of
    `val` no decision sees, on which the chosen model is scored at the end; `ray`, the address
    of a Ray cluster to score candidates on (`local` starts one here), with `jobs` actors
    (1: one per CPU of the cluster)."""
    _check(families, mode, cost, margin, confidence, holdout)
    # The search does not equalise yet; its report must not say it does.
    options = replace(options or PlanOptions(), equalization=False)
    imported = load_source(model)
    source = imported.model
    evaluator, calibration, kept = prepare_evaluator(
        source,
        calib,
        val,
        metric,
        cost,
        options,
        preprocessing,
        batch_size,
        jobs if ray is None else 2,
        held,
        confidence,
        holdout,
    )
    layers, statistics = list(evaluator.data.layers), evaluator.data.statistics
    threshold = evaluator.fp32_score - margin
    runner = Runner(evaluator, margin, _workers(evaluator.data, jobs, ray), report_progress, budget)
    outcomes: list[Outcome] = []
    interrupted = budget_spent = False
    try:
        _run(runner, layers, statistics, families, mode, cost, outcomes)
    except KeyboardInterrupt:
        interrupted = True
    except BudgetSpent:
        budget_spent = True
    finally:
        runner.close()
    chosen = runner.best
    metric_name = evaluator.data.metric.name
    sweeps = [sweep for outcome in outcomes for sweep in outcome.sweeps]
    summary = ristretto_summary(
        evaluator.fp32_score, metric_name, sweeps, chosen, margin, confidence
    )
    if chosen is None:
        best = max(runner.history, key=lambda e: e.score, default=None)
        detail = f"; the best scored {best.score:.2f} ({best.configuration.label})" if best else ""
        raise NoConfigurationError(
            f"no configuration stays within {margin:g} points of FP32's {metric_name} "
            f"{evaluator.fp32_score:.2f}{detail}; widen the margin or fine-tune"
        )
    ratios = [e.seconds / evaluator.fp32_seconds for e in runner.history]
    section = {
        "search": {
            "metric": metric_name,
            "margin": margin,
            "confidence": confidence,
            "families": families,
            "mode": mode,
            "cost": cost,
            "samples": len(evaluator.reference),
            "fp32_score": evaluator.fp32_score,
            "threshold": threshold,
            "chosen": chosen.configuration.label,
            "chosen_score": chosen.score,
            "chosen_drop_bound": chosen.drop_bound,
            "chosen_divergence": chosen.divergence,
            "chosen_cost": chosen.cost,
            "holdout": None,
            "workers": runner.width,
            "ray": ray,
            "evaluations": len(runner.history),
            "interrupted": interrupted,
            "budget_spent": budget_spent,
            "evaluation_cost_vs_fp32": {
                "median": round(stats.median(ratios), 3),
                "max": round(max(ratios), 3),
                "fp32_seconds": round(evaluator.fp32_seconds, 4),
            },
            "table": rows(runner.history, margin),
        }
    }

    def accuracy(quantized: onnx.ModelProto) -> dict:
        written = quantized.SerializeToString()
        outputs = Evaluator.outputs_of(written, evaluator.data)
        # The written model, not its evaluation form, is what the held-out samples judge.
        section["search"]["holdout"] = _held_out_scores(evaluator.data, written, kept)
        return {
            "data": str(val),
            "samples": len(outputs),
            "fp32": score(evaluator.reference, evaluator.data.labels).as_dict(),
            "quantized": score(outputs, evaluator.data.labels, evaluator.reference).as_dict(),
        }

    imported, statistics = with_corrected_biases(imported, statistics, layers, chosen.biases)
    result = finish(
        imported, chosen.plan, options, calibration, accuracy, section, statistics=statistics
    )
    plot = plot_svg(runner.history, threshold, chosen, cost, metric_name)
    return SearchResult(result, summary, plot, interrupted)


def prepare_evaluator(
    source: onnx.ModelProto,
    calib: str | Path,
    val: str | Path,
    metric: str = "auto",
    cost: str = "weights",
    options: PlanOptions | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    jobs: int = 1,
    held: Mapping[str, object] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    holdout: float = 0.0,
):
    """The evaluator of an imported model on `val`, with the calibration it used: statistics
    collected once, validation data decoded once, the FP32 outputs and time measured; and
    the held-out share of `val` (its decoded batches and labels; None without `holdout`)."""
    layers = find_layers(source)
    options = options or PlanOptions()
    statistics, calibration = collect_statistics(
        source,
        layers,
        parse_scheme("dfp8"),
        calib,
        None,
        preprocessing,
        batch_size,
        False,
        held,
        means=options.bias_correction,
        histograms=options.fits_activations,
    )
    specs = input_specs(source)
    searched, kept = _split(open_data(val, specs, preprocessing, held).count, holdout)
    data = open_data(val, specs, preprocessing, held, searched)
    batches = list(model_batches(source, data, batch_size))
    if kept is not None:
        held_out = open_data(val, specs, preprocessing, held, kept)
        kept = HeldOut(
            tuple(b.inputs for b in model_batches(source, held_out, batch_size)), held_out.labels
        )
    evaluator = Evaluator(
        EvaluationData(
            model=source.SerializeToString(),
            layers=tuple(layers),
            statistics=statistics,
            sizes=layer_sizes(source),
            batches=tuple(batch.inputs for batch in batches),
            labels=data.labels,
            metric=load_metric(metric, data.has_labels, _is_classifier(source)),
            options=options,
            cost=cost,
            confidence=confidence,
            threads=0 if jobs <= 1 else 1,
        )
    )
    return evaluator, calibration, kept


def _is_classifier(model: onnx.ModelProto) -> bool:
    """Whether the first output is (samples, classes), as far as its declared shape says."""
    kind = model.graph.output[0].type
    return not kind.tensor_type.HasField("shape") or len(kind.tensor_type.shape.dim) == 2


@dataclass(frozen=True, eq=False)
class HeldOut:
    """The validation samples kept away from every decision, decoded."""

    batches: tuple[dict[str, np.ndarray], ...]
    labels: np.ndarray | None


def _split(count: int, holdout: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The sample indices the search decides on and those it holds out (a seeded share)."""
    if holdout == 0:
        return None, None
    held = round(holdout * count)
    if not 1 <= held < count:
        raise SchemeError(
            f"--holdout {holdout:g} of {count} validation samples holds out {held}; "
            "it must keep at least one aside and one to search on"
        )
    order = np.random.default_rng(HOLDOUT_SEED).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def _held_out_scores(data: EvaluationData, written: bytes, kept: HeldOut | None) -> dict | None:
    """FP32's and the written model's metric on the held-out samples."""
    if kept is None:
        return None
    data = replace(data, batches=kept.batches, labels=kept.labels)
    reference = Evaluator.outputs_of(data.model, data)
    outputs = Evaluator.outputs_of(written, data)
    fp32 = data.metric(reference, data.labels, reference)
    quantized = data.metric(outputs, data.labels, reference)
    return {
        "samples": len(reference),
        "fp32_score": fp32,
        "chosen_score": quantized,
        "drop": fp32 - quantized,
    }


def _workers(data: EvaluationData, jobs: int, ray: str | None):
    if ray is not None:
        return RayWorkers(data, jobs if jobs > 1 else 0, ray)
    return LocalWorkers(data, jobs) if jobs > 1 else None


def _check(
    families: str, mode: str, cost: str, margin: float, confidence: float, holdout: float
) -> None:
    for value, allowed, name in (
        (families, FAMILIES, "scheme"),
        (mode, MODES, "mode"),
        (cost, COSTS, "cost"),
    ):
        if value not in allowed:
            raise SchemeError(f"search {name} must be one of {', '.join(allowed)}; got {value!r}")
    if not np.isfinite(margin) or margin < 0:
        raise SchemeError(f"the error margin must be a number >= 0, got {margin}")
    if not 0.5 <= confidence < 1:
        raise SchemeError(f"the confidence must be at least 0.5 and below 1, got {confidence}")
    if not 0 <= holdout < 1:
        raise SchemeError(f"the held-out share must be at least 0 and below 1, got {holdout}")


def _run(runner, layers, statistics, families, mode, cost, outcomes) -> None:
    if families in ("dfp", "all"):
        outcome = ristretto_dfp(runner, layers, every_width=mode != "ristretto")
        outcomes.append(outcome)
        if mode == "layerwise" and outcome.assignment is not None:
            sizes = runner.evaluator.data.sizes
            allocate(runner, layers, outcome.assignment, sizes, cost, families == "all")
    if families in ("minifloat", "all"):
        outcomes.append(ristretto_minifloat(runner, statistics))
    if families in ("pow2", "all"):
        outcomes.append(ristretto_pow2(runner))
