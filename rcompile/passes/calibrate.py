"""Analysis: the value ranges that the plan chooses formats from.

Activation ranges come from one onnxruntime run per calibration batch over a copy of the
model whose outputs are exactly the tensors to be quantized; running minima and maxima (and,
where activation fitting reads them, magnitude histograms of 4096 counts a tensor,
`rcompile.histogram`) are all that is kept, so memory does not grow with the data, and
batches run in parts whose observed tensors fit a fixed budget, so it does not grow with the
batch size either.
Weight ranges (per output channel) come straight from the initializers. NaN or inf
anywhere is an error naming the tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from rcompile.batching import fixed_batch_size
from rcompile.data import input_specs
from rcompile.errors import CalibrationError, ModelImportError
from rcompile.graph import constant_value
from rcompile.histogram import MagnitudeHistogram
from rcompile.passes.layers import Layer
from rcompile.sessions import open_session

# What one calibration run may return at once: the observed tensors of its samples.
OBSERVED_BYTES = 256 * 2**20


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
    """Everything the plan needs: activation and weight ranges, how many samples the
    activation ranges come from, the activations' magnitude histograms, and the per-channel
    means of the tensors bias correction reads (`rcompile.passes.bias_correction`)."""

    activations: dict[str, Range]
    weights: dict[str, WeightRange]
    samples: int
    means: dict[str, np.ndarray] = field(default_factory=dict)
    histograms: dict[str, MagnitudeHistogram] = field(default_factory=dict)


@dataclass(frozen=True)
class Observed:
    """What calibration runs give: ranges, the sample count, per-channel means and
    magnitude histograms."""

    ranges: dict[str, Range]
    samples: int
    means: dict[str, np.ndarray]
    histograms: dict[str, MagnitudeHistogram]


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
            if name == layer.bias:
                value = value.reshape(-1)
            if not np.all(np.isfinite(value)):
                raise ModelImportError(f"parameter '{name}' of layer '{layer.node}' has NaN or inf")
            ranges[name] = weight_range(value, axis)
    return ranges


def weight_range(value: np.ndarray, axis: int | None) -> WeightRange:
    overall = Range(float(value.min(initial=0.0)), float(value.max(initial=0.0)))
    if axis is None or value.ndim == 0:
        channels = value.reshape(1, -1)
    else:
        channels = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    maxima = np.abs(channels).max(axis=1, initial=0.0)
    return WeightRange(overall, tuple(float(v) for v in maxima), channels)


def activation_ranges(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Iterable[dict[str, np.ndarray]],
    budget: int = OBSERVED_BYTES,
    held: dict[str, np.ndarray] | None = None,
    channel_axes: dict[str, int] | None = None,
    histograms: bool = False,
) -> Observed:
    """Run the model on every batch: each tensor's range (and with `histograms` its
    magnitude histogram), the sample count, and for each tensor of `channel_axes` the mean of
    every channel along its axis (over samples and positions, summed in float64).

    Every observed tensor of a run is held at once (onnxruntime returns them together), so
    batches run in parts: one sample first, to measure what a sample's tensors take, then
    as many samples as fit in `budget` bytes. Memory stays the session's plus the budget,
    whatever the batch size and the number of samples; the ranges are the same. `held`
    inputs (held constant) go whole into every run."""
    session = _observing_session(model, tensors)
    axes = {spec.name: spec.batch_axis for spec in input_specs(model)}
    ranges: dict[str, Range] = {}
    counted = {name: MagnitudeHistogram() for name in tensors} if histograms else {}
    sums: dict[str, tuple[np.ndarray, int]] = {}
    channel_axes = channel_axes or {}
    dynamic = fixed_batch_size(model) is None
    samples, part = 0, 1
    for batch in batches:
        count = _count(batch, axes)
        if not tensors:  # nothing to observe (no layer in the main graph)
            samples += count
            continue
        step, start = part if dynamic else count, 0
        while start < count:
            feeds = {**_part(batch, axes, count, start, step), **(held or {})}
            outputs = session.run(tensors, feeds)
            done = min(step, count - start)
            start, samples = start + done, samples + done
            if dynamic:  # a fixed batch size runs whole
                per_sample = sum(value.nbytes for value in outputs) / done
                part = step = max(1, int(budget // max(per_sample, 1)))
            for name, value in zip(tensors, outputs, strict=True):
                observed = _range_of(name, value)
                ranges[name] = ranges[name].merged(observed) if name in ranges else observed
                if name in counted:
                    counted[name].add(value)
                if name in channel_axes:
                    sums[name] = _channel_sums(value, channel_axes[name], sums.get(name))
            del outputs
    if samples == 0:
        raise CalibrationError("the calibration data holds no samples")
    means = {name: total / max(count, 1) for name, (total, count) in sums.items()}
    return Observed(ranges, samples, means, counted)


def _channel_sums(value: np.ndarray, axis: int, before) -> tuple[np.ndarray, int]:
    """Running per-channel sums of `value` along `axis`, and how many values each holds."""
    moved = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    total, count = moved.sum(axis=1, dtype=np.float64), moved.shape[1]
    if before is None:
        return total, count
    return before[0] + total, before[1] + count


def _count(batch: dict[str, np.ndarray], axes: dict[str, int]) -> int:
    sizes = [value.shape[axes.get(name, 0)] for name, value in batch.items() if value.ndim]
    return max(sizes, default=1)


def _part(batch: dict[str, np.ndarray], axes: dict[str, int], count: int, start: int, size: int):
    """Samples `start` to `start + size` of the batch, on each input's batch axis (views, no
    copies); an input without a batch axis of the batch's length (held constant) goes whole
    into every part."""
    part = {}
    for name, value in batch.items():
        axis = axes.get(name, 0)
        if value.ndim and value.shape[axis] == count:
            value = value[(slice(None),) * axis + (slice(start, start + size),)]
        part[name] = value
    return part


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
    return open_session(observed)


def batch_inputs(batches: Iterable) -> Iterator[dict[str, np.ndarray]]:
    """The input dictionaries of data-loader batches."""
    for batch in batches:
        yield batch.inputs
