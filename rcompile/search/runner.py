"""Runs evaluations, serially or in worker processes (`--jobs`), keeps every result, and
shows progress: the candidate being scored and the best configuration so far."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from rcompile.search.evaluator import Configuration, Evaluation, EvaluationData, Evaluator
from rcompile.sessions import current_provider, use_provider

_WORKER: Evaluator | None = None


def _start_worker(data: EvaluationData, provider: str) -> None:
    global _WORKER
    use_provider(provider)
    _WORKER = Evaluator(data)


def _evaluate_in_worker(configuration: Configuration) -> Evaluation:
    return _WORKER.evaluate(configuration)


class BudgetSpent(Exception):
    """The search has made as many evaluations as it may."""


class Runner:
    """Scores configurations against `threshold` (the lowest acceptable metric value), at
    most `budget` of them."""

    def __init__(
        self,
        evaluator: Evaluator,
        threshold: float,
        jobs: int = 1,
        report: Callable[[str, Evaluation | None], None] = lambda label, best: None,
        budget: int | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.threshold = threshold
        self.budget = budget
        self.history: list[Evaluation] = []
        self._report = report
        self._pool = None
        if jobs > 1:
            self._pool = ProcessPoolExecutor(
                jobs, initializer=_start_worker, initargs=(evaluator.data, current_provider())
            )

    def passes(self, evaluation: Evaluation) -> bool:
        return evaluation.score >= self.threshold

    @property
    def best(self) -> Evaluation | None:
        """The cheapest final configuration within the margin so far (ties: higher score,
        then the earlier one)."""
        passing = [e for e in self.history if e.configuration.final and self.passes(e)]
        return min(passing, key=lambda e: (e.cost, -e.score), default=None)

    def one(self, configuration: Configuration) -> Evaluation:
        return self.many([configuration])[0]

    def many(self, configurations: list[Configuration]) -> list[Evaluation]:
        """Score every configuration; results in the order given. Raises BudgetSpent before
        going over the budget."""
        if self.budget is not None and len(self.history) + len(configurations) > self.budget:
            raise BudgetSpent
        if self._pool is None or len(configurations) == 1:
            results = []
            for configuration in configurations:
                self._report(configuration.label, self.best)
                results.append(self._record(self.evaluator.evaluate(configuration)))
            return results
        self._report(f"{len(configurations)} candidates in parallel", self.best)
        evaluated = list(self._pool.map(_evaluate_in_worker, configurations))
        return [self._record(evaluation) for evaluation in evaluated]

    def _record(self, evaluation: Evaluation) -> Evaluation:
        self.history.append(evaluation)
        return evaluation

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
