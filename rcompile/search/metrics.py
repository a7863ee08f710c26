"""Metrics for the search: a number where higher is better, in points (percent) like the
error margin, computed from a model's outputs on the validation set.

Built in: `top1` and `top5` against labels, `agreement` (top-1 agreement with the FP32
model, for data without labels). A user metric is `module:function`, called as
`function(outputs, labels, reference_outputs)` and returning a float in the same units as
the margin.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rcompile.errors import SchemeError
from rcompile.score import score

MetricFunction = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    name: str
    function: MetricFunction
    needs_labels: bool

    def __call__(self, outputs: np.ndarray, labels, reference: np.ndarray) -> float:
        if self.name in BUILT_IN:
            return float(self.function(outputs, labels, reference))
        try:
            return float(self.function(outputs, labels, reference))
        except Exception as error:  # the user's function: its failure is theirs to fix
            first = (str(error).strip().splitlines() or [""])[0]
            raise SchemeError(
                f"metric {self.name} failed when called as function(outputs, labels, "
                f"reference): {type(error).__name__}: {first}"
            ) from error


def _share_of(key: str) -> MetricFunction:
    """A built-in metric: `rcompile.score`'s share, in points."""

    def metric(outputs: np.ndarray, labels, reference: np.ndarray) -> float:
        return 100.0 * getattr(score(outputs, labels, reference), key)

    return metric


BUILT_IN = {
    "top1": Metric("top1", _share_of("top1"), True),
    "top5": Metric("top5", _share_of("top5"), True),
    "agreement": Metric("agreement", _share_of("agreement"), False),
}


def load_metric(spec: str, has_labels: bool) -> Metric:
    """A built-in metric by name, or `module:function`; `auto` is top1 with labels, else
    agreement."""
    if spec == "auto":
        spec = "top1" if has_labels else "agreement"
    if spec in BUILT_IN:
        metric = BUILT_IN[spec]
        if metric.needs_labels and not has_labels:
            raise SchemeError(
                f"metric {spec} needs labels; the validation data has none (use --metric agreement)"
            )
        return metric
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise SchemeError(f"unknown metric {spec!r}; use top1, top5, agreement or module:function")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise SchemeError(f"cannot load metric {spec!r} ({error})") from None
    return Metric(spec, function, False)
