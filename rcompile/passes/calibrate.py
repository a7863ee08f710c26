"""Analysis: the value ranges that the plan chooses formats from.

Activation ranges come from one onnxruntime run per calibration batch over a copy of the
model whose outputs are exactly the tensors to be quantized; running minima and maxima are
all that is kept, so memory does not grow with the data. Weight ranges (per output channel)
come straight from the initializers. NaN or inf anywhere is an error naming the tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from rcompile.errors import CalibrationError, ModelImportError
from rcompile.graph import constant_value
from rcompile.passes.layers import Layer


@dataclass(frozen=True)
class Range:
    """The observed minimum and maximum of a tensor."""

    min: float
    max: float

    @property
    def max_abs(self) -> float:
        return max(abs(self.min), abs(self.max))

    def merged(self, other: Range) -> Range:
        return Range(min(self.min, other.min), max(self.max, other.max))


@dataclass(frozen=True, eq=False)
class WeightRange:
    """A parameter tensor's range overall, its largest magnitude per output channel, and its
    values split by output channel (one row per channel)."""

    overall: Range
    channel_max_abs: tuple[float, ...]
    channels: np.ndarray


@dataclass(frozen=True)
class Statistics:
    """Everything the plan needs: activation ranges with an evenly spread sample of each
    activation's values (for choosing ranges by quantization error), and weight ranges."""

    activations: dict[str, Range]
    weights: dict[str, WeightRange]
    samples: int
    values: dict[str, np.ndarray] = field(default_factory=dict)


def activation_tensors(layers: list[Layer]) -> list[str]:
    """Every tensor a quantizer will sit on, each once, in graph order."""
    names: dict[str, None] = {}
    for layer in layers:
        names.update(dict.fromkeys(layer.inputs))
        names[layer.output] = None
    return list(names)


def weight_ranges(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, WeightRange]:
    """Per-tensor and per-channel ranges of every layer's weight and bias."""
    ranges: dict[str, WeightRange] = {}
    for layer in layers:
        for name, axis in ((layer.weight, layer.weight_axis), (layer.bias, 0)):
            if name is None or name in ranges:
                continue
            value = constant_value(model.graph, name).astype(np.float32)
            if not np.all(np.isfinite(value)):
                raise ModelImportError(f"parameter '{name}' of layer '{layer.node}' has NaN or inf")
            ranges[name] = _weight_range(value, axis)
    return ranges


def _weight_range(value: np.ndarray, axis: int | None) -> WeightRange:
    overall = Range(float(value.min(initial=0.0)), float(value.max(initial=0.0)))
    if axis is None or value.ndim == 0:
        channels = value.reshape(1, -1)
    else:
        channels = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    maxima = np.abs(channels).max(axis=1, initial=0.0)
    return WeightRange(overall, tuple(float(v) for v in maxima), channels)


SAMPLE_PER_BATCH = 4096
SAMPLE_LIMIT = 65536


def activation_ranges(
    model: onnx.ModelProto, tensors: list[str], batches: Iterable[dict[str, np.ndarray]]
) -> tuple[dict[str, Range], dict[str, np.ndarray], int]:
    """Run the model on every batch; return each tensor's range, an evenly spread sample of
    its values (at most SAMPLE_LIMIT, deterministic), and the number of samples seen."""
    session = _observing_session(model, tensors)
    ranges: dict[str, Range] = {}
    values: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    samples = 0
    for batch in batches:
        outputs = session.run(tensors, batch)
        samples += len(next(iter(batch.values())))
        for name, value in zip(tensors, outputs, strict=True):
            observed = _range_of(name, value)
            ranges[name] = ranges[name].merged(observed) if name in ranges else observed
            values[name].append(_spread(value.ravel(), SAMPLE_PER_BATCH))
            if sum(part.size for part in values[name]) > 2 * SAMPLE_LIMIT:
                values[name] = [_spread(np.concatenate(values[name]), SAMPLE_LIMIT)]
    if samples == 0:
        raise CalibrationError("the calibration data holds no samples")
    sampled = {name: _spread(np.concatenate(parts), SAMPLE_LIMIT) for name, parts in values.items()}
    return ranges, sampled, samples


def _spread(values: np.ndarray, count: int) -> np.ndarray:
    """At most `count` values taken at evenly spaced positions."""
    if values.size <= count:
        return values.astype(np.float32, copy=True)
    return values[np.linspace(0, values.size - 1, count).astype(np.int64)].astype(np.float32)


def _range_of(name: str, value: np.ndarray) -> Range:
    if value.size == 0:
        return Range(0.0, 0.0)
    low, high = float(value.min()), float(value.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise CalibrationError(
            f"tensor '{name}' holds NaN or inf on the calibration data; check the input scaling"
        )
    return Range(low, high)


def _observing_session(model: onnx.ModelProto, tensors: list[str]) -> ort.InferenceSession:
    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    existing = {value.name for value in observed.graph.output}
    for name in tensors:
        if name not in existing:
            observed.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        observed.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def batch_inputs(batches: Iterable) -> Iterator[dict[str, np.ndarray]]:
    """The input dictionaries of data-loader batches."""
    for batch in batches:
        yield batch.inputs
