"""The hardware report: per layer, the formats, MACs, parameters, multiplier widths and
memory in bits; totals against FP32; accuracy when data was given; software versions.

The report is data (`as_dict`, with `schema_version`); `render_markdown` formats it for
people. See docs/report.md for every field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import metadata

import numpy as np

import rcompile
from rcompile.formats import DFP, APoT, Format, MiniFloat
from rcompile.formats.rounding import rounding_suffix

SCHEMA_VERSION = 1
FP32_BITS = 32
# Weight family -> (shifts, adders) that one product costs instead of a multiplier.
SHIFT_ADD_COST = {"pow2": (1, 0), "apot": (2, 1)}


def describe_format(fmt: Format | None) -> dict:
    """A format as data: its canonical name, family, bit width and parameters (FP32: None)."""
    if fmt is None:
        return {"name": "fp32", "family": "fp32", "bits": FP32_BITS}
    if isinstance(fmt, DFP):
        family = "dfp"
        parameters = {"fl": fmt.fl, "signed": fmt.signed, "rounding": fmt.rounding}
    elif isinstance(fmt, MiniFloat):
        family = "minifloat"
        parameters = {
            "exp_bits": fmt.exp_bits,
            "mant_bits": fmt.mant_bits,
            "variant": fmt.variant,
            "rounding": fmt.rounding,
            "exponent_bias": fmt.bias,
            # The effective exponents: of the smallest normal and of the largest value.
            "exponent_range": [fmt.emin, fmt.emax],
        }
    elif isinstance(fmt, APoT):
        family = "apot"
        parameters = {
            "exp_min": fmt.exp_min,
            "exp_max": fmt.exp_max,
            "levels": len(fmt.levels),
            "rounding": "nearest",
        }
    else:
        family = "pow2"
        parameters = {
            "exp_min": fmt.exp_min,
            "exp_max": fmt.exp_max,
            "zero": fmt.zero,
            "rounding": "log-nearest",
        }
    return {
        "name": fmt.name,
        "family": family,
        "bits": fmt.bit_width,
        **parameters,
    }


def describe_formats(formats: tuple[Format, ...]) -> dict | None:
    """One format, or a per-channel set summarised by family, width and the range of fl;
    None for a tensor kept FP32."""
    if not formats:
        return None
    if len(formats) == 1 or len(set(formats)) == 1:
        return {**describe_format(formats[0]), "per_channel": len(formats) > 1}
    first = describe_format(formats[0])
    summary = {
        "family": first["family"],
        "bits": max(f.bit_width for f in formats),
        "per_channel": True,
        "channels": len(formats),
    }
    if all(isinstance(f, DFP) for f in formats):
        low, high = min(f.fl for f in formats), max(f.fl for f in formats)
        summary.update(
            fl=[f.fl for f in formats],
            signed=formats[0].signed,
            rounding=formats[0].rounding,
            name=f"dfp{summary['bits']}f{low}..{high}{rounding_suffix(formats[0].rounding)}",
        )
    elif len({replace(f, exponent_bias=None) for f in formats if isinstance(f, MiniFloat)}) == 1:
        biases = [f.bias for f in formats]
        base = replace(formats[0], exponent_bias=None, rounding="even").name
        summary.update(
            formats=[f.name for f in formats],
            exponent_bias=biases,
            exponent_range=[min(f.emin for f in formats), max(f.emax for f in formats)],
            name=f"{base}b{min(biases)}..{max(biases)}{rounding_suffix(formats[0].rounding)}",
        )
    else:
        summary.update(
            formats=[f.name for f in formats], name=f"{first['family']}{summary['bits']}"
        )
    return summary


@dataclass(frozen=True)
class LayerRow:
    """One quantized layer of the report."""

    node: str
    op_type: str
    input_shapes: tuple[tuple[int, ...] | None, ...]
    weight_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    macs: int | None
    parameters: int
    inputs: tuple[dict, ...]
    output: dict
    weights: dict | None
    bias: dict | None
    parameter_memory_bits: int
    activation_input_bits: int | None
    activation_output_bits: int | None
    accumulator: dict

    @property
    def multiplier(self) -> dict:
        """Operand widths of the layer's multipliers, and what a product costs: a
        power-of-two weight is a shift, a two-term one two shifts and an adder."""
        weight_bits = self.weights["bits"] if self.weights else FP32_BITS
        if self.weight_shape is None:  # a product of two activations
            weight_bits = self.inputs[-1]["bits"]
        family = self.weights["family"] if self.weights else None
        shifts, adders = SHIFT_ADD_COST.get(family, (0, 0))
        return {
            "weight_bits": weight_bits,
            "activation_bits": self.inputs[0]["bits"],
            "kind": "shift-add" if family == "apot" else "shift" if shifts else "multiply",
            "shifts": shifts,
            "adders": adders,
        }

    def as_dict(self) -> dict:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "input_shapes": [list(s) if s else None for s in self.input_shapes],
            "weight_shape": list(self.weight_shape) if self.weight_shape else None,
            "output_shape": list(self.output_shape) if self.output_shape else None,
            "macs": self.macs,
            "parameters": self.parameters,
            "formats": {
                "inputs": list(self.inputs),
                "output": self.output,
                "weights": self.weights,
                "bias": self.bias,
            },
            "multiplier": self.multiplier,
            "accumulator": self.accumulator,
            "parameter_memory_bits": self.parameter_memory_bits,
            "activation_buffer_bits": {
                "input": self.activation_input_bits,
                "output": self.activation_output_bits,
            },
        }


@dataclass(frozen=True)
class Report:
    """The whole report. `accuracy` is filled when evaluation data was given."""

    model: str
    scheme: str
    options: dict
    calibration: dict
    layers: tuple[LayerRow, ...]
    unquantized: dict[str, int]
    skipped: tuple[str, ...] = ()
    accuracy: dict | None = None
    extra: dict = field(default_factory=dict)
    target: str = "sim"

    def totals(self) -> dict:
        parameters = sum(row.parameters for row in self.layers)
        memory = sum(row.parameter_memory_bits for row in self.layers)
        macs = [row.macs for row in self.layers]
        outputs = [row.activation_output_bits for row in self.layers]
        known_outputs = [bits for bits in outputs if bits is not None]
        fp32_outputs = [
            math.prod(row.output_shape) * FP32_BITS for row in self.layers if row.output_shape
        ]
        return {
            "layers": len(self.layers),
            "macs": sum(macs) if None not in macs else None,
            "bit_operations": _bit_operations(self.layers),
            "parameters": parameters,
            "parameter_memory_bits": memory,
            "fp32_parameter_memory_bits": parameters * FP32_BITS,
            "parameter_compression": round(parameters * FP32_BITS / memory, 3) if memory else None,
            "activation_output_bits": sum(known_outputs),
            "fp32_activation_output_bits": sum(fp32_outputs),
            "largest_activation_output_bits": max(known_outputs, default=0),
        }

    def as_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "scheme": self.scheme,
            "target": self.target,
            "options": self.options,
            "calibration": self.calibration,
            "totals": self.totals(),
            "accuracy": self.accuracy,
            "layers": [row.as_dict() for row in self.layers],
            "skipped_layers": list(self.skipped),
            "unquantized_ops": dict(sorted(self.unquantized.items())),
            "software": software_versions(),
            **self.extra,
        }


def _bit_operations(rows: tuple[LayerRow, ...]) -> int | None:
    total = 0
    for row in rows:
        if row.macs is None:
            return None
        multiplier = row.multiplier
        total += row.macs * multiplier["weight_bits"] * multiplier["activation_bits"]
    return total


def software_versions() -> dict[str, str]:
    versions = {"rcompile": rcompile.__version__, "numpy": np.__version__}
    for package in ("onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
