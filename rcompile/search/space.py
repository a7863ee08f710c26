"""The configurations the search scores, built as overrides on an all-FP32 base, so that a
configuration names exactly what it quantizes (Ristretto scores one group at a time with
everything else in full precision)."""

from __future__ import annotations

from dataclasses import dataclass

from rcompile.passes.layers import Layer
from rcompile.plan import Override
from rcompile.scheme import FP32, DFPRule, Pow2Rule, Rule, Scheme

# The base of every configuration: FP32, with per-layer overrides saying what is quantized.
MIXED = Scheme("mixed", FP32, FP32)
CONV_OPS = ("Conv", "ConvTranspose")


@dataclass(frozen=True)
class LayerWidths:
    """One layer's choice: a weight rule (or None: FP32) and an activation rule (or None)."""

    weights: Rule | None
    activations: Rule | None

    def override(self, node: str) -> Override:
        return Override(
            node,
            weights=self.weights or FP32,
            input=self.activations or FP32,
            output=self.activations or FP32,
        )

    @property
    def label(self) -> str:
        return f"w:{_name(self.weights)} a:{_name(self.activations)}"


def _name(rule: Rule | None) -> str:
    return "fp32" if rule is None else rule.name


def conv_layers(layers: list[Layer]) -> list[Layer]:
    return [layer for layer in layers if layer.op_type in CONV_OPS and layer.weight]


def fc_layers(layers: list[Layer]) -> list[Layer]:
    return [layer for layer in layers if layer.op_type not in CONV_OPS and layer.weight]


def overrides(assignment: dict[str, LayerWidths]) -> tuple[Override, ...]:
    """Overrides for an assignment of node -> widths, in a fixed (sorted) order."""
    return tuple(assignment[node].override(node) for node in sorted(assignment))


def uniform(layers: list[Layer], conv: Rule | None, fc: Rule | None, activations: Rule | None):
    """Ristretto's combined network: one weight rule per group, one activation rule."""
    return {
        layer.node: LayerWidths(conv if layer.op_type in CONV_OPS else fc, activations)
        for layer in layers
    }


def weight_bits(rule: Rule | None) -> int:
    if isinstance(rule, DFPRule | Pow2Rule):
        return rule.bits
    return 32 if rule is None or rule.format is None else rule.format.bit_width
