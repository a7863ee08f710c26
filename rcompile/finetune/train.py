"""Fine-tuning with full-precision shadow weights (Ristretto's third pillar).

The quantized forward pass runs in PyTorch; the gradient passes the quantizers straight
through to FP32 shadow weights, which the optimiser updates; the plan (every format and
parameter) never changes. Adam with a cosine learning-rate schedule, seeded shuffling, and
early stopping on validation top-1 (the best epoch's weights are kept). Deterministic on the
CPU for a seed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from rcompile.data import Dataset
from rcompile.errors import CalibrationError, SchemeError
from rcompile.finetune.graph import QuantizedGraph, float_arrays
from rcompile.formats import APoT
from rcompile.progress import progress_bar


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 10
    lr: float = 3e-4
    batch_size: int = 64
    seed: int = 0
    stochastic_rounding: bool = False
    patience: int = 3


@dataclass(frozen=True)
class Epoch:
    epoch: int
    loss: float
    val_top1: float


def in_memory(data: Dataset, label: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All samples and labels of a dataset (decoded once; training revisits them)."""
    if not data.has_labels:
        raise CalibrationError(f"{data.source}: fine-tuning needs labels for the {label} data")
    batches = list(data.batches(256))
    names = batches[0].inputs.keys()
    inputs = {name: np.concatenate([b.inputs[name] for b in batches]) for name in names}
    return inputs, np.concatenate([b.labels for b in batches]).astype(np.int64)


def top1(
    graph: QuantizedGraph, inputs: dict[str, np.ndarray], labels: np.ndarray, batch: int
) -> float:
    graph.weight_seed = None
    hits = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            part = {k: v[start : start + batch] for k, v in inputs.items()}
            hits += int(
                (graph(float_arrays(part)).argmax(1).numpy() == labels[start : start + batch]).sum()
            )
    return 100.0 * hits / len(labels)


def train(
    model: onnx.ModelProto, train_data, val_data, options: TrainOptions, show_progress: bool = False
) -> tuple[QuantizedGraph, list[Epoch], int]:
    """Train the shadow weights; return the graph holding the best epoch's weights, the
    history and the best epoch (0: the weights as they came)."""
    torch.manual_seed(options.seed)
    torch.use_deterministic_algorithms(True)
    graph = QuantizedGraph(model)
    if options.stochastic_rounding and any(
        isinstance(f, APoT) for shadow in graph.shadows for f in shadow.formats
    ):
        raise SchemeError(
            "two-term power-of-two weights round to the nearest level only; "
            "fine-tune them without --stochastic-rounding"
        )
    inputs, labels = train_data
    val_inputs, val_labels = val_data
    optimizer = torch.optim.Adam(graph.weights.parameters(), lr=options.lr)
    steps_per_epoch = math.ceil(len(labels) / options.batch_size)
    total = options.epochs * steps_per_epoch
    shuffler = np.random.default_rng(options.seed)
    best_score = top1(graph, val_inputs, val_labels, options.batch_size)
    best_state, best_epoch, history, step = copy.deepcopy(graph.weights.state_dict()), 0, [], 0
    with progress_bar("fine-tuning", total, show_progress) as advance:
        for epoch in range(1, options.epochs + 1):
            order = shuffler.permutation(len(labels))
            losses = []
            for start in range(0, len(labels), options.batch_size):
                chosen = order[start : start + options.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                graph.weight_seed = (
                    options.seed * 1_000_003 + step if options.stochastic_rounding else None
                )
                logits = graph(float_arrays({k: v[chosen] for k, v in inputs.items()}))
                loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels[chosen]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
                advance(1)
            score = top1(graph, val_inputs, val_labels, options.batch_size)
            history.append(Epoch(epoch, float(np.mean(losses)), score))
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = copy.deepcopy(graph.weights.state_dict())
            elif epoch - best_epoch >= options.patience:
                break
    graph.weights.load_state_dict(best_state)
    return graph, history, best_epoch
