"""Batches a model accepts: models exported with a fixed batch dimension (common for
Caffe conversions) get batches of exactly that size."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from rcompile.data import Batch, Dataset, input_specs


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The batch dimension the model's inputs fix, or None when it is dynamic."""
    sizes = {spec.shape[spec.batch_axis] for spec in input_specs(model) if spec.shape}
    fixed = [size for size in sizes if isinstance(size, int) and size > 0]
    return fixed[0] if len(fixed) == 1 and len(sizes) == 1 else None


def model_batches(
    model: onnx.ModelProto, data: Dataset, batch_size: int, limit: int | None = None
) -> Iterator[Batch]:
    """`data` in batches of `batch_size`, or of the model's fixed batch size; with a fixed
    size above 1, a last partial batch is left out (the model cannot take it)."""
    fixed = fixed_batch_size(model)
    for batch in data.batches(fixed or batch_size, limit):
        if fixed is not None and batch.size != fixed:
            return
        yield batch
