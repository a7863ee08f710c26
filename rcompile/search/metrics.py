"""Metrics for the search: a number where higher is better, in points (percent) like the
error margin, computed from a model's outputs on the validation set.

Built in: `top1` and `top5` against labels, `agreement` (top-1 agreement with the FP32
model, for data without labels), `fidelity` (100 x (1 - noise energy / signal energy) of the
outputs, for models that are not classifiers); each is the mean of a per-sample score, which
the bootstrap of `rcompile.search.confidence` resamples. A user metric is `module:function`,
called as `function(outputs, labels, reference_outputs)` and returning a float in the same
units as the margin.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from rcompile.errors import SchemeError
from rcompile.score import check_labels_fit

MetricFunction = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], float]
PerSample = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """A built-in metric has `per_sample`, each sample's points, whose mean is the metric;
    a user's has `function`."""

    name: str
    needs_labels: bool
    per_sample: PerSample | None = None
    function: MetricFunction | None = None

    def __call__(self, outputs: np.ndarray, labels, reference: np.ndarray) -> float:
        if self.per_sample is not None:
            return float(np.mean(self.per_sample(outputs, labels, reference)))
        try:
            return float(self.function(outputs, labels, reference))
        except Exception as error:  # the user's function: its failure is theirs to fix
            first = (str(error).strip().splitlines() or [""])[0]
            raise SchemeError(
                f"metric {self.name} failed when called as function(outputs, labels, "
                f"reference): {type(error).__name__}: {first}"
            ) from error


def _top(outputs: np.ndarray, labels, reference: np.ndarray, k: int) -> np.ndarray:
    check_labels_fit(labels, outputs.shape[1])
    best = np.argsort(-outputs, axis=1, kind="stable")[:, :k]
    return 100.0 * np.any(best == labels[: len(outputs), None], axis=1)


def _agreement(outputs: np.ndarray, labels, reference: np.ndarray) -> np.ndarray:
    """The share of a sample's class decisions (one, or one per position of a dense output)
    that are FP32's."""
    same = outputs.argmax(1) == reference.argmax(1)
    return 100.0 * same.reshape(len(outputs), -1).mean(axis=1)


def _fidelity(outputs: np.ndarray, labels, reference: np.ndarray) -> np.ndarray:
    """100 x (1 - noise energy / signal energy) per sample, at least 0: a margin of 1 point
    is a noise of 1 % of the signal's energy, an output SQNR of 20 dB."""
    count = len(outputs)
    noise = np.square(outputs.astype(np.float64) - reference).reshape(count, -1).sum(axis=1)
    signal = np.square(reference.astype(np.float64)).reshape(count, -1).sum(axis=1)
    ratio = noise / np.maximum(signal, np.finfo(np.float64).tiny)
    return 100.0 * (1.0 - np.minimum(ratio, 1.0))


BUILT_IN = {
    "top1": Metric("top1", True, partial(_top, k=1)),
    "top5": Metric("top5", True, partial(_top, k=5)),
    "agreement": Metric("agreement", False, _agreement),
    "fidelity": Metric("fidelity", False, _fidelity),
}


def load_metric(spec: str, has_labels: bool, classifier: bool = True) -> Metric:
    """A built-in metric by name, or `module:function`; `auto` is top1 with labels, else
    agreement for a classifier (a (samples, classes) output), else fidelity."""
    if spec == "auto":
        spec = "top1" if has_labels else "agreement" if classifier else "fidelity"
    if spec in BUILT_IN:
        metric = BUILT_IN[spec]
        if metric.needs_labels and not has_labels:
            raise SchemeError(
                f"metric {spec} needs labels; the validation data has none (use --metric agreement)"
            )
        return metric
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise SchemeError(
            f"unknown metric {spec!r}; use top1, top5, agreement, fidelity or module:function"
        )
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise SchemeError(f"cannot load metric {spec!r} ({error})") from None
    return Metric(spec, False, function=function)
