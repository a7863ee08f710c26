"""The statistics the search judges candidates by: the paired bootstrap's upper bound of the
drop against FP32 (seeded, never below the drop measured, shrinking with more samples), the
continuous divergence of the outputs, and the speculative bisection that scores the next
candidates in parallel while asking for the same widths in the same order as plain
bisection."""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest

from rcompile.search.bisection import smallest_passing, upcoming
from rcompile.search.confidence import divergence, drop_bound
from rcompile.search.metrics import BUILT_IN, Metric
from rcompile.search.runner import BudgetSpent, Runner

TOP1, AGREEMENT = BUILT_IN["top1"], BUILT_IN["agreement"]


def classifier(count: int, flipped: int, seed: int = 0):
    """Logits for `count` samples whose FP32 class is the label, and a candidate whose
    class differs from FP32's on the first `flipped` samples."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(count, 10)).astype(np.float32)
    labels = reference.argmax(1)
    candidate = reference.copy()
    rows = np.arange(flipped)
    candidate[rows, (labels[rows] + 1) % 10] = reference[rows].max(1) + 1
    return candidate, labels, reference


def test_no_flips_bound_the_drop_at_zero() -> None:
    candidate, labels, reference = classifier(200, 0)
    assert drop_bound(TOP1, candidate, labels, reference, 0.9) == 0.0
    assert drop_bound(AGREEMENT, candidate, None, reference, 0.99) == 0.0


def test_two_flips_in_200_bound_the_drop_above_one_point() -> None:
    """A drop of 1 point measured on two images is not evidence of a drop within 1 point."""
    candidate, labels, reference = classifier(200, 2)
    assert TOP1(reference, labels, reference) - TOP1(candidate, labels, reference) == 1.0
    bound = drop_bound(TOP1, candidate, labels, reference, 0.9)
    assert 1.0 < bound < 3.0
    assert drop_bound(TOP1, candidate, labels, reference, 0.5) == pytest.approx(1.0)


def test_the_bound_tightens_with_more_samples_and_higher_confidence_widens_it() -> None:
    small = drop_bound(TOP1, *classifier(200, 2), 0.9)
    large = drop_bound(TOP1, *classifier(2000, 20), 0.9)
    assert large < small
    assert drop_bound(TOP1, *classifier(200, 2), 0.99) > small


def test_the_bound_is_seeded_and_paired() -> None:
    """Flips FP32 also gets wrong cancel: the pair is scored on the same draw."""
    candidate, labels, reference = classifier(300, 6)
    first = drop_bound(TOP1, candidate, labels, reference, 0.9)
    assert drop_bound(TOP1, candidate, labels, reference, 0.9) == first
    wrong_anyway = labels.copy()
    wrong_anyway[:6] = (labels[:6] + 2) % 10  # FP32 is wrong on the flipped samples too
    assert drop_bound(TOP1, candidate, wrong_anyway, reference, 0.9) == 0.0


def test_a_users_metric_is_bootstrapped_by_calling_it_on_resamples() -> None:
    calls = []

    def mean_agreement(outputs, labels, reference) -> float:
        calls.append(len(outputs))
        return 100.0 * float(np.mean(outputs.argmax(1) == reference.argmax(1)))

    metric = Metric("mine:mean_agreement", False, function=mean_agreement)
    candidate, _, reference = classifier(200, 2)
    bound = drop_bound(metric, candidate, None, reference, 0.9)
    assert bound == pytest.approx(drop_bound(AGREEMENT, candidate, None, reference, 0.9), abs=0.6)
    assert len(calls) > 100 and set(calls) == {200}


def test_a_bound_is_never_below_the_drop_measured() -> None:
    def identity_only(outputs, labels, reference) -> float:
        return 100.0 if outputs is reference else 0.0

    metric = Metric("mine:identity_only", False, function=identity_only)
    candidate, _, reference = classifier(50, 0)
    assert drop_bound(metric, candidate, None, reference, 0.9) == 100.0


def test_divergence_is_kl_for_classifiers_and_noise_over_signal_otherwise() -> None:
    candidate, _, reference = classifier(100, 3)
    assert divergence(reference, reference) == pytest.approx(0.0, abs=1e-12)
    moved = divergence(candidate, reference)
    assert moved > divergence(reference + 1e-3, reference) >= 0
    shifted = reference + 5.0  # softmax does not see a constant shift
    assert divergence(shifted, reference) == pytest.approx(0.0, abs=1e-9)
    probabilities = np.exp(reference) / np.exp(reference).sum(1, keepdims=True)
    assert divergence(probabilities, probabilities) == pytest.approx(0.0, abs=1e-12)
    signal = np.ones((4, 3, 5, 5), np.float32)
    assert divergence(signal * 1.1, signal) == pytest.approx(0.01)


# --- speculative bisection ---------------------------------------------------------------


@pytest.mark.parametrize(("low", "high", "count"), [(2, 16, 1), (2, 16, 3), (2, 8, 7), (5, 5, 4)])
def test_upcoming_lists_the_decision_tree_breadth_first(low, high, count) -> None:
    widths = upcoming(low, high, count)
    assert len(widths) <= count
    if low < high:
        assert widths[0] == (low + high) // 2
    if (low, high, count) == (2, 16, 3):
        assert widths == [9, 5, 13]
    assert upcoming(5, 5, count) == []


class Workers:
    """Scores widths 'in parallel' (in order here), counting the rounds."""

    def __init__(self, count: int, scorer) -> None:
        self.count, self.scorer, self.rounds = count, scorer, 0

    def map(self, configurations):
        self.rounds += 1
        return [self.scorer(c) for c in configurations]

    def close(self) -> None:
        pass


class Candidate(NamedTuple):
    width: int
    final: bool = True

    @property
    def label(self) -> str:
        return f"{self.width}-bit"


def width_runner(needed: int, workers: int | None, budget: int | None = None):
    def scorer(candidate: Candidate):
        bound = 0.0 if candidate.width >= needed else 5.0
        return SimpleNamespace(
            drop_bound=bound, divergence=0.0, cost=candidate.width, configuration=candidate
        )

    evaluator = SimpleNamespace(evaluate=scorer)
    pool = Workers(workers, scorer) if workers else None
    return Runner(evaluator, 1.0, pool, budget=budget), pool


@pytest.mark.parametrize("needed", range(2, 18))
@pytest.mark.parametrize("workers", [2, 3, 4, 8])
def test_parallel_bisection_asks_what_serial_bisection_asks(needed, workers) -> None:
    serial, _ = width_runner(needed, None)
    parallel, pool = width_runner(needed, workers)
    found, scored = smallest_passing(serial, 2, 16, Candidate)
    assert found == min(max(needed, 2), 16)
    assert smallest_passing(parallel, 2, 16, Candidate) == (found, scored)
    assert [e.configuration for e in parallel.history] == [e.configuration for e in serial.history]
    assert pool.rounds <= len(serial.history)
    if workers >= 3 and len(serial.history) >= 2:
        assert pool.rounds < len(serial.history)


def test_prefetched_candidates_never_asked_for_do_not_count() -> None:
    runner, _ = width_runner(4, 4, budget=2)
    runner.prefetch([Candidate(width) for width in (9, 10, 11, 12)])
    assert runner.history == []
    runner.one(Candidate(9))
    runner.one(Candidate(12))
    with pytest.raises(BudgetSpent):
        runner.one(Candidate(10))
    assert [e.configuration.width for e in runner.history] == [9, 12]


def test_dense_outputs_score_one_number_per_sample() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(6, 4, 5, 5))
    noisy = reference + 0.1 * rng.normal(size=reference.shape)
    for name in ("agreement", "fidelity"):
        points = BUILT_IN[name].per_sample(noisy, None, reference)
        assert points.shape == (6,) and np.all((points >= 0) & (points <= 100))
        assert np.all(BUILT_IN[name].per_sample(reference, None, reference) == 100.0)
    energy = np.sum((noisy - reference) ** 2, axis=(1, 2, 3)) / np.sum(reference**2, axis=(1, 2, 3))
    assert BUILT_IN["fidelity"].per_sample(noisy, None, reference) == pytest.approx(
        100 * (1 - energy)
    )
    assert 0 < drop_bound(BUILT_IN["fidelity"], noisy, None, reference, 0.9) < 5
