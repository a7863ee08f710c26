"""A dataset is a count, optional labels, and a way to read any run of samples.

Sources differ only in how they read samples `[start, stop)`; batching, `limit` and labels
are the same for all of them, so they live here once. Nothing is read until `batches` asks for
it, and only one batch is held at a time, so memory is bounded by the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from rcompile.errors import CalibrationError

Reader = Callable[[int, int], dict[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Batch:
    """`size` consecutive samples: one array per model input, in the model's layout (samples
    on its batch axis), and their class indices when the data has labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    size: int


@dataclass(frozen=True, eq=False)
class Dataset:
    """Calibration or evaluation data for one model, read lazily in batches.

    `source` names the data in messages; `read(start, stop)` returns samples `[start, stop)`
    already cast to the model's dtypes and checked; `labels`, when present, holds `count`
    integer class indices; `held` the inputs held constant (`rcompile.data.held`), which
    every batch carries whole, after the samples."""

    source: str
    count: int
    read: Reader
    labels: np.ndarray | None = None
    held: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        """Whether accuracy can be scored on this data (not only agreement with FP32)."""
        return self.labels is not None

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """The first `limit` samples (all when None) in order, `batch_size` at a time; the
        last batch holds what is left. The same files always give the same batches."""
        if batch_size < 1:
            raise CalibrationError(f"batch size must be at least 1, got {batch_size}")
        if limit is not None and limit < 1:
            raise CalibrationError(f"the number of samples to use must be at least 1, got {limit}")
        total = self.count if limit is None else min(limit, self.count)
        return self._iterate(batch_size, total)

    def _iterate(self, batch_size: int, total: int) -> Iterator[Batch]:
        # A separate generator so that `batches` checks its arguments when called, not when
        # the first batch is asked for.
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            labels = None if self.labels is None else self.labels[start:stop]
            yield Batch({**self.read(start, stop), **self.held}, labels, stop - start)


def subset(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The samples at `indices` (increasing), read in runs of consecutive samples."""
    read = dataset.read

    def picked(start: int, stop: int) -> dict[str, np.ndarray]:
        chosen = indices[start:stop]
        breaks = np.flatnonzero(np.diff(chosen) != 1) + 1
        runs = [read(int(run[0]), int(run[-1]) + 1) for run in np.split(chosen, breaks)]
        return {name: np.concatenate([run[name] for run in runs]) for name in runs[0]}

    labels = None if dataset.labels is None else dataset.labels[indices]
    return replace(dataset, count=len(indices), read=picked, labels=labels)


def in_model_layout(dataset: Dataset, inputs) -> Dataset:
    """`dataset` (samples first) with each input's samples moved to its batch axis
    (`InputSpec.batch_axis`), as the model takes them."""
    axes = {spec.name: spec.batch_axis for spec in inputs if spec.batch_axis}
    if not axes:
        return dataset
    read = dataset.read

    def moved(start: int, stop: int) -> dict[str, np.ndarray]:
        samples = read(start, stop)
        return {
            k: np.ascontiguousarray(np.moveaxis(v, 0, axes[k])) if k in axes else v
            for k, v in samples.items()
        }

    return replace(dataset, read=moved)


def with_held(dataset: Dataset, held: dict[str, np.ndarray]) -> Dataset:
    """`dataset` with `held` inputs added to every batch."""
    return replace(dataset, held={**dataset.held, **held})


def check_labels(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    """Labels are one integer class index per sample; anything else would score nonsense."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CalibrationError(
            f"{source}: 'labels' must be a 1-D array of integer class indices, "
            f"got dtype {labels.dtype} with shape {labels.shape}"
        )
    if len(labels) != count:
        raise CalibrationError(
            f"{source}: 'labels' has {len(labels)} entries but the data has {count} samples; "
            "give one label per sample"
        )
    return labels.astype(np.int64)
