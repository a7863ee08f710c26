"""Verify: run a compiled model at every onnxruntime optimisation level, on every provider
there is, and through the reference datapath, and count per output how many values differ
from the reference and by how many steps of the output's format."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from rcompile.batching import model_batches
from rcompile.data import Dataset
from rcompile.exporter import rcompile_entries
from rcompile.graph import initializers, producers
from rcompile.onnx_ops import DOMAIN, format_of
from rcompile.progress import progress_bar
from rcompile.reference import Reference
from rcompile.sessions import LEVELS, open_session, providers


@dataclass(frozen=True)
class Deviation:
    """One output of one run against the reference: `differing` of `values` differ, by up
    to `max_steps` steps; `by_steps` counts them by their distance (1, 2, ... steps)."""

    provider: str
    level: str
    output: str
    values: int
    differing: int
    max_steps: float
    by_steps: dict[str, int]


@dataclass(frozen=True)
class Verification:
    """What `verify` found; `target` is the model's (sim models must be exact)."""

    model: str
    target: str
    samples: int
    deviations: tuple[Deviation, ...]

    @property
    def exact(self) -> bool:
        return all(d.differing == 0 for d in self.deviations)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "target": self.target,
            "samples": self.samples,
            "exact": self.exact,
            "runs": [asdict(d) for d in self.deviations],
        }


def verify(
    model: onnx.ModelProto,
    data: Dataset,
    count: int | None,
    batch_size: int,
    label: str,
    show_progress: bool = False,
) -> Verification:
    """Compare `model`'s onnxruntime runs with its reference datapath on `data`."""
    reference = Reference(model)
    runs = [(provider, level) for provider in providers() for level in LEVELS]
    sessions = {run: open_session(model, run[1], run[0]) for run in runs}
    steps = _output_steps(model)
    names = [value.name for value in model.graph.output]
    totals = {(run, name): _Tally() for run in runs for name in names}
    samples = 0
    total = min(count, data.count) if count else data.count
    with progress_bar("verifying", total, show_progress) as advance:
        for batch in model_batches(model, data, batch_size, count):
            expected = reference.run(batch.inputs)
            for run, session in sessions.items():
                for name, want, got in zip(
                    names, expected, session.run(None, batch.inputs), strict=True
                ):
                    totals[(run, name)].add(want, got, steps.get(name))
            size = batch.size
            samples += size
            advance(size)
    deviations = tuple(
        totals[(run, name)].deviation(run[0], run[1], name) for run in runs for name in names
    )
    return Verification(label, _target(model), samples, deviations)


class _Tally:
    def __init__(self) -> None:
        self.values = 0
        self.differing = 0
        self.max_steps = 0.0
        self.by_steps: dict[str, int] = {}

    def add(self, expected: np.ndarray, actual: np.ndarray, step) -> None:
        expected, actual = np.asarray(expected), np.asarray(actual)
        self.values += expected.size
        differ = ~_same(expected, actual)
        if not differ.any():
            return
        self.differing += int(differ.sum())
        distance = _steps(expected[differ], actual[differ], step)
        self.max_steps = max(self.max_steps, float(distance.max()))
        for value, number in zip(*np.unique(distance, return_counts=True), strict=True):
            key = f"{value:g}"
            self.by_steps[key] = self.by_steps.get(key, 0) + int(number)

    def deviation(self, provider: str, level: str, output: str) -> Deviation:
        return Deviation(
            provider, level, output, self.values, self.differing, self.max_steps, self.by_steps
        )


def _same(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Bit equality (any NaN matches any NaN)."""
    if expected.dtype.kind != "f":
        return expected == actual
    bits = np.dtype(f"u{expected.dtype.itemsize}")
    return (expected.view(bits) == actual.view(bits)) | (np.isnan(expected) & np.isnan(actual))


def _steps(expected: np.ndarray, actual: np.ndarray, step: float | None) -> np.ndarray:
    """How many steps apart: of the output's format where it has a uniform step (DFP),
    else units in the last place of float32."""
    if step is not None:
        return np.abs(actual.astype(np.float64) - expected.astype(np.float64)) / step
    if expected.dtype != np.float32:
        return np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    ordered = [_ordered(v) for v in (expected, actual)]
    return np.abs(ordered[1] - ordered[0]).astype(np.float64)


def _ordered(values: np.ndarray) -> np.ndarray:
    """float32 bit patterns as integers in the order of the values (so ulps subtract)."""
    bits = values.view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _output_steps(model: onnx.ModelProto) -> dict[str, float]:
    """The step of each graph output that a DFP quantizer writes (by its node in `sim`,
    by its DequantizeLinear's scale in `qdq`)."""
    made_by = producers(model.graph)
    constants = initializers(model.graph)
    steps = {}
    for value in model.graph.output:
        node = made_by.get(value.name)
        if node is not None and node.op_type == "Clip":
            node = made_by.get(node.input[0])
        if node is None:
            continue
        if node.domain == DOMAIN and node.op_type == "QuantizeDFP":
            steps[value.name] = format_of(node).step
        elif node.op_type == "DequantizeLinear" and node.input[1] in constants:
            scale = constants[node.input[1]]
            if scale.size == 1:
                steps[value.name] = float(scale)
    return steps


def _target(model: onnx.ModelProto) -> str:
    return rcompile_entries(model).get("rcompile.target", "sim")
