"""Per-layer mixed precision, beyond Ristretto's uniform widths.

1. Sensitivity: each knob (a layer's weights, or its activations) is lowered alone, with the
   rest of the network FP32, and how far the outputs move is measured: the divergence of
   `rcompile.search.confidence` (KL divergence of the class distributions, or noise over
   signal), which ranks layers on a few hundred samples where top-1 flips are noise.
2. Greedy allocation: from Ristretto's uniform solution (with the weights cost, activations
   at 8 bits or more, since they cost nothing there), the knobs are visited from the least
   sensitive (per bit of cost saved) to the most, and each is lowered to the smallest width
   (bisection) at which the whole network stays within the margin. With `mixed_families`, a
   layer whose weights stay above 4 bits also tries 4-bit power-of-two weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rcompile.passes.layers import Layer
from rcompile.scheme import DFPRule, Pow2Rule
from rcompile.search.bisection import smallest_passing
from rcompile.search.cost import LayerSize
from rcompile.search.evaluator import Configuration, Evaluation
from rcompile.search.runner import Runner
from rcompile.search.space import MIXED, LayerWidths, overrides, weight_bits

MIN_WIDTH = 2
FREE_ACTIVATION_BITS = 8
POW2_BITS = 4


@dataclass(frozen=True)
class Knob:
    node: str
    role: str  # "weights" or "activations"

    @property
    def label(self) -> str:
        return f"{self.node} {self.role}"


def knobs_for(layers: list[Layer], cost: str) -> list[Knob]:
    """The knobs that move the chosen cost."""
    roles = {"weights": ("weights",), "activations": ("activations",)}.get(
        cost, ("weights", "activations")
    )
    return [
        Knob(layer.node, role)
        for layer in layers
        for role in roles
        if role == "activations" or layer.weight
    ]


def _get(widths: LayerWidths, knob: Knob):
    return widths.weights if knob.role == "weights" else widths.activations


def _set(assignment: dict[str, LayerWidths], knob: Knob, rule) -> dict[str, LayerWidths]:
    updated = dict(assignment)
    field = "weights" if knob.role == "weights" else "activations"
    updated[knob.node] = replace(assignment[knob.node], **{field: rule})
    return updated


def _configuration(label: str, assignment, final: bool = True) -> Configuration:
    return Configuration(label, MIXED, overrides(assignment), final)


def sensitivities(
    runner: Runner, knobs: list[Knob], start: dict[str, LayerWidths]
) -> dict[Knob, float]:
    """How far the outputs move when a knob alone goes to half its uniform width, everything
    else FP32."""
    configurations = []
    for knob in knobs:
        width = max(MIN_WIDTH, weight_bits(_get(start[knob.node], knob)) // 2)
        alone = {knob.node: LayerWidths(None, None)}
        alone = _set(alone, knob, DFPRule(width))
        label = f"sensitivity {knob.label} {width}-bit"
        configurations.append(_configuration(label, alone, final=False))
    evaluations = runner.many(configurations)
    return {knob: e.divergence for knob, e in zip(knobs, evaluations, strict=True)}


def allocate(
    runner: Runner,
    layers: list[Layer],
    start: dict[str, LayerWidths],
    sizes: dict[str, LayerSize],
    cost: str,
    mixed_families: bool,
) -> tuple[dict[str, LayerWidths], Evaluation | None]:
    """Lower knobs greedily from the uniform assignment `start` (which is within the margin)."""
    if cost == "weights":
        start = _free_activations(runner, start)
    knobs = knobs_for(layers, cost)
    sensitivity = sensitivities(runner, knobs, start)

    def order(knob: Knob) -> tuple[float, float, str]:
        size = sizes[knob.node]
        bits_saved_per_step = size.weights if knob.role == "weights" else size.outputs
        return (sensitivity[knob] / max(bits_saved_per_step, 1), -bits_saved_per_step, knob.label)

    assignment, best = dict(start), None
    try:
        for knob in sorted(knobs, key=order):
            # Every trial of a knob computes the same values before the knob's layer.
            runner.evaluator.share_prefix(knob.node)
            assignment, found = _lowest(runner, assignment, knob)
            best = found or best
            if mixed_families and knob.role == "weights":
                assignment, found = _try_pow2(runner, assignment, knob)
                best = found or best
    finally:
        runner.evaluator.share_prefix(None)
    return assignment, best


def _free_activations(runner: Runner, start: dict[str, LayerWidths]) -> dict[str, LayerWidths]:
    """Where activations cost nothing, the narrowest uniform activations that pass are no
    saving and leave the weights less room: start from at least FREE_ACTIVATION_BITS (when
    that passes), as Ristretto's dfp8 has."""
    widened = {
        node: replace(widths, activations=DFPRule(FREE_ACTIVATION_BITS))
        if isinstance(widths.activations, DFPRule)
        and widths.activations.bits < FREE_ACTIVATION_BITS
        else widths
        for node, widths in start.items()
    }
    if widened == start:
        return start
    label = f"start: activations at {FREE_ACTIVATION_BITS}-bit"
    evaluation = runner.one(_configuration(label, widened))
    return widened if runner.passes(evaluation) else start


def _lowest(runner: Runner, assignment, knob: Knob):
    """Bisect the knob's width between MIN_WIDTH and its current width."""
    current = _get(assignment[knob.node], knob)
    if not isinstance(current, DFPRule):
        return assignment, None

    def make(width: int) -> Configuration:
        trial = _set(assignment, knob, DFPRule(width))
        return _configuration(f"lower {knob.label} to {width}-bit", trial)

    width, scored = smallest_passing(runner, MIN_WIDTH, current.bits, make)
    if width == current.bits:
        return assignment, None
    return _set(assignment, knob, DFPRule(width)), scored[width]


def _try_pow2(runner: Runner, assignment, knob: Knob):
    current = _get(assignment[knob.node], knob)
    if not isinstance(current, DFPRule) or current.bits <= POW2_BITS:
        return assignment, None
    trial = _set(assignment, knob, Pow2Rule(POW2_BITS))
    evaluation = runner.one(_configuration(f"{knob.label} as power of two", trial))
    return (trial, evaluation) if runner.passes(evaluation) else (assignment, None)
