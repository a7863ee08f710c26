"""Score: top-1 and top-5 accuracy against labels, and top-1 agreement with a reference
model, of any model on a dataset, streamed in batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from rcompile.batching import model_batches
from rcompile.data import Dataset
from rcompile.errors import CalibrationError
from rcompile.progress import progress_bar
from rcompile.sessions import open_session


@dataclass(frozen=True)
class Scores:
    samples: int
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def predictions(
    model: onnx.ModelProto,
    data: Dataset,
    batch_size: int,
    label: str = "scoring",
    show_progress: bool = False,
) -> np.ndarray:
    """The first output's class scores for every sample, as an (N, classes) array."""
    session = open_session(model)
    outputs = []
    with progress_bar(label, data.count, show_progress) as advance:
        for batch in model_batches(model, data, batch_size):
            scores = session.run(None, batch.inputs)[0]
            if scores.ndim != 2 or scores.shape[0] != batch.size:
                raise CalibrationError(
                    f"the model's first output has shape {list(scores.shape)}; scoring needs "
                    "(samples, classes)"
                )
            outputs.append(scores)
            advance(len(scores))
    return np.concatenate(outputs)


def check_labels_fit(labels: np.ndarray, classes: int) -> None:
    """Labels outside the model's classes would score nonsense."""
    outside = labels[(labels < 0) | (labels >= classes)]
    if outside.size:
        raise CalibrationError(
            f"labels must be class indices 0 to {classes - 1} of the model's output; "
            f"{outside.size} of {len(labels)} are not (the first: {int(outside[0])})"
        )


def score(
    scores: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None = None
) -> Scores:
    """Top-1/top-5 against labels where there are labels; agreement with `reference` scores."""
    result = {"samples": len(scores)}
    if labels is not None:
        labels = labels[: len(scores)]
        check_labels_fit(labels, scores.shape[1])
        top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        result["top1"] = float(np.mean(top5[:, 0] == labels))
        result["top5"] = float(np.mean(np.any(top5 == labels[:, None], axis=1)))
    if reference is not None:
        result["agreement"] = float(np.mean(scores.argmax(1) == reference.argmax(1)))
    return Scores(**result)
