"""Runs evaluations, keeps every one the search used, and shows progress: the candidate
being scored and the best configuration so far.

With workers (`rcompile.search.workers`), the procedures `prefetch` the candidates they may
ask for next, which the workers score in parallel; a candidate counts (towards the budget
and in the history) only when the procedure asks for it with `one`, so the history, the
budget and the choice are the same with any number of workers."""

from __future__ import annotations

from collections.abc import Callable

from rcompile.search.evaluator import Configuration, Evaluation, Evaluator

# The bootstrap's quantile of a drop that is exactly the margin can come out a rounding
# error above it.
TOLERANCE = 1e-9


class BudgetSpent(Exception):
    """The search has made as many evaluations as it may."""


class Runner:
    """Scores configurations; one passes when the upper confidence bound of its drop against
    FP32 is within `margin`. At most `budget` evaluations."""

    def __init__(
        self,
        evaluator: Evaluator,
        margin: float,
        workers=None,
        report: Callable[[str, Evaluation | None], None] = lambda label, best: None,
        budget: int | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.margin = margin
        self.budget = budget
        self.history: list[Evaluation] = []
        self._workers = workers
        self._report = report
        self._ready: dict[Configuration, Evaluation] = {}

    @property
    def width(self) -> int:
        """How many candidates are worth scoring at once."""
        return self._workers.count if self._workers is not None else 1

    def passes(self, evaluation: Evaluation) -> bool:
        return evaluation.drop_bound <= self.margin + TOLERANCE

    @property
    def best(self) -> Evaluation | None:
        """The cheapest final configuration within the margin so far (ties: the smaller
        bound of the drop, then the outputs closest to FP32's, then the earlier one)."""
        passing = [e for e in self.history if e.configuration.final and self.passes(e)]
        return min(passing, key=lambda e: (e.cost, e.drop_bound, e.divergence), default=None)

    def prefetch(self, configurations: list[Configuration]) -> None:
        """Score in parallel what the search may ask for next (nothing without workers)."""
        if self._workers is None:
            return
        wanted = [c for c in dict.fromkeys(configurations) if c not in self._ready]
        if len(wanted) < 2:
            return
        self._report(f"{len(wanted)} candidates in parallel", self.best)
        self._ready.update(zip(wanted, self._workers.map(wanted), strict=True))

    def ready(self, configuration: Configuration) -> bool:
        return configuration in self._ready

    def one(self, configuration: Configuration) -> Evaluation:
        """The evaluation of `configuration`, counted. Raises BudgetSpent before going over
        the budget."""
        if self.budget is not None and len(self.history) >= self.budget:
            raise BudgetSpent
        evaluation = self._ready.pop(configuration, None)
        if evaluation is None:
            self._report(configuration.label, self.best)
            evaluation = self.evaluator.evaluate(configuration)
        self.history.append(evaluation)
        return evaluation

    def many(self, configurations: list[Configuration]) -> list[Evaluation]:
        """Score every configuration, in parallel where there are workers; results in the
        order given. Raises BudgetSpent before scoring any when they would go over it."""
        if self.budget is not None and len(self.history) + len(configurations) > self.budget:
            raise BudgetSpent
        self.prefetch(configurations)
        return [self.one(configuration) for configuration in configurations]

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
