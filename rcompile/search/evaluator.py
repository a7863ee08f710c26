"""Scoring configurations of one model on one validation set.

Everything that does not depend on the configuration is computed once: the imported model,
its layers and sizes, the calibration statistics, the decoded validation batches and the
FP32 model's outputs (for the agreement metric and the baseline score). A configuration is a
scheme plus per-layer overrides; scoring it costs one lowering (in the evaluation form,
`rcompile.search.evaluation_form`), one onnxruntime session and one pass over the validation
set, or over the part of the network after a shared prefix (`share_prefix`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from statistics import median

import numpy as np
import onnx
import onnxruntime as ort

from rcompile.lowering.values import QuantizedValues
from rcompile.passes.bias_correction import bias_corrector, with_biases
from rcompile.passes.calibrate import Statistics
from rcompile.passes.layers import Layer
from rcompile.plan import Override, Plan, Planner, PlanOptions
from rcompile.scheme import Scheme
from rcompile.search.confidence import divergence, drop_bound
from rcompile.search.cost import LayerSize, plan_cost
from rcompile.search.evaluation_form import DISABLED_OPTIMIZERS, evaluation_form
from rcompile.search.metrics import Metric
from rcompile.search.prefix import SharedPrefix
from rcompile.sessions import open_session

FP32_TIMINGS = 3
# Choosing between integer and float kernels: the batches run, the runs of each (the first
# warms up), and the configuration timed.


@dataclass(frozen=True)
class Configuration:
    """What to score: a scheme with per-layer overrides, and a label for people. Only a
    `final` configuration (a whole network, not a probe of one group or layer with the rest
    FP32) can be the search's result."""

    label: str
    scheme: Scheme
    overrides: tuple[Override, ...] = ()
    final: bool = True


@dataclass(frozen=True)
class Evaluation:
    """A scored configuration: its plan, metric value, cost and the seconds scoring took;
    `drop_bound`, the upper confidence bound of its drop against FP32 (what the margin
    judges), and `divergence`, how far its outputs moved (see `rcompile.search.confidence`);
    `biases`, the values bias correction gave the plan's layers (the model scored is the FP32
    model with these biases and this plan, in whichever process scored it)."""

    configuration: Configuration
    plan: Plan
    score: float
    cost: int
    seconds: float
    drop_bound: float
    divergence: float
    biases: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class EvaluationData:
    """The configuration-independent inputs of scoring (picklable, for worker processes)."""

    model: bytes
    layers: tuple[Layer, ...]
    statistics: Statistics
    sizes: dict[str, LayerSize]
    batches: tuple[dict[str, np.ndarray], ...]
    labels: np.ndarray | None
    metric: Metric
    options: PlanOptions
    cost: str
    confidence: float = 0.9
    threads: int = 0
    # What the first Evaluator measures, for the others (worker processes) to reuse: the FP32
    # outputs and scoring time.
    reference: np.ndarray | None = None
    fp32_seconds: float | None = None


class Evaluator:
    """Scores configurations; `reference` holds the FP32 outputs, `fp32_seconds` the time
    scoring the FP32 model takes (the yardstick of an evaluation's cost): the median of three
    scorings, the first of which also warms onnxruntime up. What it measures goes into
    `data`, which worker processes get, so that they measure nothing again."""

    def __init__(self, data: EvaluationData) -> None:
        self.model = onnx.load_from_string(data.model)
        corrector = bias_corrector(self.model, data.statistics, data.options)
        self.planner = Planner(list(data.layers), data.statistics, data.options, corrector)
        self.values = QuantizedValues()
        self._prefix: SharedPrefix | None = None
        if data.reference is None:
            timings = []
            for _ in range(FP32_TIMINGS):
                start = time.perf_counter()
                reference = self.outputs_of(data.model, data)
                timings.append(time.perf_counter() - start)
            data = replace(data, reference=reference, fp32_seconds=median(timings))
        self.data = data
        self.reference, self.fp32_seconds = data.reference, data.fp32_seconds
        self.fp32_score = data.metric(self.reference, data.labels, self.reference)

    def share_prefix(self, layer: str | None) -> None:
        """Until told otherwise, the configurations scored differ only from layer `layer` on
        (one knob's trials): the values before it are computed once and reused (see
        `rcompile.search.prefix`). The values kept for the previous layer stay, for a later
        layer to start from. None stops it."""
        if layer is None:
            self._prefix = None
        elif self._prefix is None:
            self._prefix = SharedPrefix(layer)
        else:
            self._prefix.layer = layer

    def evaluate(self, configuration: Configuration) -> Evaluation:
        start = time.perf_counter()
        plan = self.planner.plan(configuration.scheme, configuration.overrides)
        biases = self.planner.corrected_biases(plan)
        model = with_biases(self.model, biases) if biases else self.model
        rewritten = evaluation_form(model, plan, self.values)
        if self._prefix is not None:
            outputs, _ = self._prefix.outputs(rewritten, list(self.data.batches), self._session)
        else:
            model = rewritten.model.SerializeToString()
            outputs = self.outputs_of(model, self.data, DISABLED_OPTIMIZERS)
        seconds = time.perf_counter() - start
        data = self.data
        return Evaluation(
            configuration,
            plan,
            data.metric(outputs, data.labels, self.reference),
            plan_cost(plan, data.sizes, data.cost),
            seconds,
            drop_bound(data.metric, outputs, data.labels, self.reference, data.confidence),
            divergence(outputs, self.reference),
            biases,
        )

    def _session(self, model: bytes):
        return _session(model, self.data, DISABLED_OPTIMIZERS).run

    @staticmethod
    def outputs_of(
        model: bytes, data: EvaluationData, disabled_optimizers: tuple[str, ...] = ()
    ) -> np.ndarray:
        """The model's first output over the validation batches."""
        session = _session(model, data, disabled_optimizers)
        return np.concatenate([session.run(None, batch)[0] for batch in data.batches])


def _session(
    model: bytes, data: EvaluationData, disabled_optimizers: tuple[str, ...]
) -> ort.InferenceSession:
    return open_session(
        model, threads=data.threads, disabled_optimizers=disabled_optimizers, shared_arena=True
    )
