"""Quantized parameters, kept across the lowerings of one model (a search lowers it hundreds
of times)."""

from __future__ import annotations

import numpy as np

from rcompile.formats import Format
from rcompile.graph import Constants
from rcompile.passes.store_weights import quantize_values


class QuantizedValues:
    """The planner hands out one formats tuple per layer rule it has seen, so entries are
    found by tensor and formats identity: each tensor is quantized once per rule. The formats
    are kept alive here, so an identity is never reused."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[tuple[Format, ...], np.ndarray]] = {}

    def __len__(self) -> int:
        """How many quantized tensors are kept."""
        return len(self._entries)

    def __call__(
        self,
        constants: Constants,
        name: str,
        formats: tuple[Format, ...],
        axis: int | None,
        flat: bool = False,
    ) -> np.ndarray:
        """`name`'s values quantized to `formats` along `axis` (`flat`: as a vector)."""
        key = (name, id(formats))
        if key not in self._entries:
            values = constants(name).astype(np.float32)
            values = values.reshape(-1) if flat else values
            quantized = quantize_values(values, formats, axis)
            quantized.flags.writeable = False
            self._entries[key] = (formats, quantized)
        return self._entries[key][1]
