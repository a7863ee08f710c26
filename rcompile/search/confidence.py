"""How far a candidate may really fall behind FP32, and how far its outputs moved.

A margin of 1 point on 200 images is two images: whether a candidate scores 1 point under
FP32 on them says little about the next 200. So a candidate passes only when the upper
confidence bound of its drop is within the margin. The bound comes from a paired bootstrap:
the samples are drawn with replacement, FP32 and the candidate are scored on the same draw,
and the drop's `confidence` quantile over the draws is the bound. The draws are seeded and
the same for every candidate, so two candidates are compared on the same resamples.

Top-1 flips are too coarse to rank layers on a few hundred samples; `divergence` is a
continuous measure of how far the outputs moved: the mean KL divergence KL(FP32 || candidate)
of the softmax for (samples, classes) outputs, else the noise energy over the signal energy
(the inverse of the output SQNR).
"""

from __future__ import annotations

import numpy as np

from rcompile.search.metrics import Metric

SEED = 0
RESAMPLES = 1000
# A user's metric is called once per draw on the resampled outputs, so it gets fewer draws.
USER_RESAMPLES = 200
# Draws are made this many sample indices at a time, to bound memory on large sets.
DRAW_BLOCK = 1 << 22


def drop_bound(
    metric: Metric,
    outputs: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray,
    confidence: float,
) -> float:
    """The `confidence` upper bound of FP32's metric minus the candidate's, in points; never
    below the drop measured on the samples themselves."""
    count = len(outputs)
    observed = metric(reference, labels, reference) - metric(outputs, labels, reference)
    if metric.per_sample is not None:
        differences = metric.per_sample(reference, labels, reference) - metric.per_sample(
            outputs, labels, reference
        )
        drops = np.concatenate(
            [differences[draw].mean(axis=1) for draw in _draws(count, RESAMPLES)]
        )
    else:
        drops = np.array(
            [
                metric(reference[draw], _take(labels, draw), reference[draw])
                - metric(outputs[draw], _take(labels, draw), reference[draw])
                for block in _draws(count, USER_RESAMPLES)
                for draw in block
            ]
        )
    return max(observed, float(np.quantile(drops, confidence)))


def _draws(count: int, resamples: int):
    """The seeded bootstrap draws, `resamples` rows of `count` indices, in blocks of rows."""
    rng = np.random.default_rng(SEED)
    rows = max(1, DRAW_BLOCK // max(count, 1))
    for start in range(0, resamples, rows):
        yield rng.integers(0, count, size=(min(rows, resamples - start), count))


def _take(labels: np.ndarray | None, draw: np.ndarray) -> np.ndarray | None:
    return None if labels is None else labels[draw]


def divergence(outputs: np.ndarray, reference: np.ndarray) -> float:
    """How far the outputs moved from FP32's: mean KL(FP32 || candidate) of the class
    distributions for (samples, classes) outputs (softmax of logits; outputs that are already
    probabilities are taken as they are), else noise energy over signal energy."""
    outputs, reference = outputs.astype(np.float64), reference.astype(np.float64)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        target, candidate = _log_distribution(reference), _log_distribution(outputs)
        return float(np.mean(np.sum(np.exp(target) * (target - candidate), axis=1)))
    signal = float(np.sum(reference**2))
    return float(np.sum((outputs - reference) ** 2)) / max(signal, np.finfo(np.float64).tiny)


def _log_distribution(values: np.ndarray) -> np.ndarray:
    if np.all(values >= 0) and np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        return np.log(np.maximum(values, 1e-12))
    shifted = values - values.max(axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
