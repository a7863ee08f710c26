"""The search procedures.

Ristretto's (the baseline): score the FP32 model; then the CONV weights at 16, 8, 4 and 2
bits with everything else FP32; the same for the FC weights and for the layer activations;
combine the smallest widths that stay within the margin and score the combination (widening
the group that lost most while it does not). Mini float: exponent bits from the calibrated
range, then the fewest total bits. Power of two: 4-bit power-of-two weights with 8-bit
activations.

Beyond Ristretto: every integer width (bisection per group), and a per-layer search that
measures each layer's sensitivity alone and then lowers the least sensitive layers first
while the whole network stays within the margin, minimising the chosen cost; with
`families="all"` a layer may also switch to power-of-two weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from rcompile.formats import MiniFloat
from rcompile.passes.calibrate import Statistics
from rcompile.passes.layers import Layer
from rcompile.scheme import DFPRule, FixedRule, Scheme, parse_scheme
from rcompile.search.bisection import smallest_passing, upcoming
from rcompile.search.evaluator import Configuration, Evaluation
from rcompile.search.runner import Runner
from rcompile.search.space import (
    MIXED,
    LayerWidths,
    conv_layers,
    fc_layers,
    overrides,
    uniform,
)

RISTRETTO_WIDTHS = (16, 8, 4, 2)
MINIFLOAT_WIDTHS = (16, 8, 4)
MAX_WIDTH = 16


@dataclass
class Sweep:
    """One group scored at several widths, and the smallest width within the margin."""

    title: str
    scores: dict[int, float] = field(default_factory=dict)
    chosen: int | None = None


@dataclass
class Outcome:
    """What a procedure found: its sweeps (for the summary) and its chosen evaluation."""

    sweeps: list[Sweep]
    chosen: Evaluation | None
    assignment: dict[str, LayerWidths] | None = None


def _sweep(
    runner: Runner,
    title: str,
    make: Callable[[int], Configuration],
    widths: tuple[int, ...],
    every_width: bool,
) -> Sweep:
    sweep = Sweep(title)
    if every_width:
        return _bisect(runner, sweep, make)
    runner.prefetch([make(width) for width in widths])
    for width in widths:  # widest first; narrower ones only while the wider passed
        evaluation = runner.one(make(width))
        sweep.scores[width] = evaluation.score
        if not runner.passes(evaluation):
            break
        sweep.chosen = width
    return sweep


def _bisect(runner: Runner, sweep: Sweep, make: Callable[[int], Configuration]) -> Sweep:
    """The smallest integer width in [2, 16] within the margin, assuming accuracy does not
    fall as the width grows."""
    runner.prefetch([make(MAX_WIDTH)] + [make(w) for w in upcoming(2, MAX_WIDTH, runner.width - 1)])
    evaluation = runner.one(make(MAX_WIDTH))
    sweep.scores[MAX_WIDTH] = evaluation.score
    if not runner.passes(evaluation):
        return sweep
    sweep.chosen, scored = smallest_passing(runner, 2, MAX_WIDTH, make)
    sweep.scores.update({width: e.score for width, e in scored.items()})
    return sweep


def ristretto_dfp(runner: Runner, layers: list[Layer], every_width: bool = False) -> Outcome:
    """Ristretto's dynamic fixed point procedure (with `every_width`, bisection per group).
    With workers, the groups' first candidates are scored together."""
    groups = [
        (members, title, role)
        for members, title, role in (
            (conv_layers(layers), "CONV weights", "weights"),
            (fc_layers(layers), "FC weights", "weights"),
            (layers, "layer activations", "activations"),
        )
        if members
    ]
    makers = [partial(_group_candidate, *group) for group in groups]
    first = (MAX_WIDTH, (2 + MAX_WIDTH) // 2) if every_width else RISTRETTO_WIDTHS
    runner.prefetch([make(width) for make in makers for width in first])
    sweeps = {
        title: _sweep(runner, title, make, RISTRETTO_WIDTHS, every_width)
        for (_, title, _), make in zip(groups, makers, strict=True)
    }
    present = list(sweeps.values())
    if any(s.chosen is None for s in present):
        return Outcome(present, None)
    ordered = [sweeps.get(title) for title in ("CONV weights", "FC weights", "layer activations")]
    return _combine(runner, layers, ordered, every_width)


def _group_candidate(members: list[Layer], title: str, role: str, width: int) -> Configuration:
    """A group's weights or activations at `width` bits, the rest of the network FP32."""
    rule = DFPRule(width)
    widths = LayerWidths(rule, None) if role == "weights" else LayerWidths(None, rule)
    return Configuration(
        f"{title} {width}-bit",
        MIXED,
        overrides({layer.node: widths for layer in members}),
        final=False,
    )


def _combine(runner: Runner, layers: list[Layer], sweeps, every_width: bool) -> Outcome:
    conv, fc, activations = sweeps
    widths = {id(s): s.chosen for s in sweeps if s is not None}
    present = [s for s in sweeps if s is not None]
    while True:
        rule = {key: DFPRule(value) for key, value in widths.items()}
        assignment = uniform(
            layers,
            rule.get(id(conv)),
            rule.get(id(fc)),
            rule[id(activations)],
        )
        label = "combined " + ", ".join(f"{s.title} {widths[id(s)]}-bit" for s in present)
        evaluation = runner.one(Configuration(label, MIXED, overrides(assignment)))
        if runner.passes(evaluation):
            return Outcome(present, evaluation, assignment)
        widenable = [s for s in present if widths[id(s)] < MAX_WIDTH]
        if not widenable:
            return Outcome(present, None)
        # The group that lost most at its width alone (bisection may not have scored the
        # width it has been widened to: then its own chosen width's score stands in).
        worst = min(widenable, key=lambda s: s.scores.get(widths[id(s)], s.scores[s.chosen]))
        widths[id(worst)] = _wider(widths[id(worst)], every_width)


def _wider(width: int, every_width: bool) -> int:
    if every_width:
        return width + 1
    return min(w for w in RISTRETTO_WIDTHS if w > width)


def ristretto_minifloat(runner: Runner, statistics: Statistics) -> Outcome:
    """Exponent bits from the calibrated range (weights and activations), then the fewest
    total bits within the margin, as Ristretto does for its mini floats."""
    largest = max(
        [r.max_abs for r in statistics.activations.values()]
        + [w.overall.max_abs for w in statistics.weights.values()]
    )

    def make(width: int) -> Configuration:
        fmt = MiniFloat.for_range(width, largest)
        rule = FixedRule(fmt)
        return Configuration(f"mini float {fmt.name}", Scheme(fmt.name, rule, rule))

    sweep = _sweep(runner, "mini float", make, MINIFLOAT_WIDTHS, every_width=False)
    chosen = _last_passing(runner, "mini float") if sweep.chosen else None
    return Outcome([sweep], chosen)


def ristretto_pow2(runner: Runner) -> Outcome:
    """Power-of-two weights (4-bit codes) with 8-bit dynamic fixed point activations."""
    evaluation = runner.one(Configuration("pow2 weights, 8-bit activations", parse_scheme("pow2")))
    sweep = Sweep(
        "power-of-two weights", {4: evaluation.score}, 4 if runner.passes(evaluation) else None
    )
    return Outcome([sweep], evaluation if runner.passes(evaluation) else None)


def _last_passing(runner: Runner, prefix: str) -> Evaluation | None:
    candidates = [
        e for e in runner.history if e.configuration.label.startswith(prefix) and runner.passes(e)
    ]
    return candidates[-1] if candidates else None
