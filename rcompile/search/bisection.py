"""The smallest width that passes, by bisection, assuming a wider width never does worse.

With workers, each round also scores the candidates the next rounds would ask for along
both outcomes (the top of the bisection's decision tree, breadth first, as many as there are
workers), so that a round costs one parallel step instead of one evaluation per level. The
decisions are those of plain bisection: the same widths are asked for in the same order."""

from __future__ import annotations

from collections.abc import Callable

from rcompile.search.evaluator import Configuration, Evaluation
from rcompile.search.runner import Runner


def smallest_passing(
    runner: Runner, low: int, high: int, make: Callable[[int], Configuration]
) -> tuple[int, dict[int, Evaluation]]:
    """The smallest width in [low, high] that passes, `high` being known to pass (it is not
    scored), and the evaluation of every width scored."""
    scored: dict[int, Evaluation] = {}
    while low < high:
        middle = (low + high) // 2
        if not runner.ready(make(middle)):
            runner.prefetch([make(width) for width in upcoming(low, high, runner.width)])
        evaluation = runner.one(make(middle))
        scored[middle] = evaluation
        if runner.passes(evaluation):
            high = middle
        else:
            low = middle + 1
    return high, scored


def upcoming(low: int, high: int, count: int) -> list[int]:
    """The first `count` widths bisection of [low, high] may ask for, breadth first: the
    middle, then the middles it leads to if that passes and if it fails, and so on."""
    widths: list[int] = []
    intervals = [(low, high)]
    while intervals and len(widths) < count:
        start, stop = intervals.pop(0)
        if start >= stop:
            continue
        middle = (start + stop) // 2
        widths.append(middle)
        intervals += [(start, middle), (middle + 1, stop)]
    return widths
