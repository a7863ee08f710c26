"""Analysis and rewrite passes. A rewrite pass takes a model and returns a `PassResult` with a
new model (the input is never mutated) and whether anything changed."""

from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool
