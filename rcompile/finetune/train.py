"""Fine-tuning with full-precision shadow weights (Ristretto's third pillar), taught by the
FP32 model.

The quantized forward pass runs in PyTorch; the gradient passes the quantizers straight
through to FP32 shadow weights, which the optimiser updates; the plan (every format and
parameter) never changes. The loss is distillation from the FP32 model, so no labels are
needed: the KL divergence between the two models' softened outputs (for a classifier; the
normalised squared error for other outputs), optionally plus the normalised squared error
of every quantized layer's output, plus cross-entropy where the training data has labels.
Adam with a cosine learning-rate schedule, seeded shuffling and augmentation, and early
stopping on the validation data (the best epoch's weights are kept). Deterministic on the
CPU for a seed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rcompile.data import Dataset
from rcompile.errors import CalibrationError, SchemeError, UserError
from rcompile.finetune.augment import random_resized_crops
from rcompile.finetune.graph import QuantizedGraph, float_arrays
from rcompile.formats import APoT
from rcompile.progress import progress_bar


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 10
    lr: float = 0.001
    batch_size: int = 32
    seed: int = 0
    stochastic_rounding: bool = False
    patience: int = 3
    temperature: float = 1.0
    feature_loss: float = 0.0
    holdout: float = 0.2
    augment: bool = True
    device: str = "cpu"
    rounding_steps: int = 300
    refit_activations: bool = False

    def __post_init__(self) -> None:
        if not (self.epochs or self.rounding_steps):
            raise UserError("nothing to train: --epochs and --rounding-steps are both 0")


@dataclass(frozen=True)
class Epoch:
    """One epoch's mean training loss, and the validation score (top-1 against labels, else
    top-1 agreement with the FP32 model, in %) and distillation loss."""

    epoch: int
    loss: float
    val_score: float
    val_loss: float


@dataclass(frozen=True)
class Samples:
    """Samples held in memory (training revisits them), with labels where the data has them."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def dataset(self, label: str) -> Dataset:
        """The samples as a dataset, for scoring with onnxruntime."""
        return Dataset(label, len(self), lambda a, b: {k: v[a:b] for k, v in self.inputs.items()})

    def take(self, indices: np.ndarray) -> Samples:
        labels = None if self.labels is None else self.labels[indices]
        return Samples({name: value[indices] for name, value in self.inputs.items()}, labels)


def in_memory(data) -> Samples:
    """All samples (and labels) of a dataset, decoded once."""
    batches = list(data.batches(256))
    names = batches[0].inputs.keys()
    inputs = {name: np.concatenate([b.inputs[name] for b in batches]) for name in names}
    labels = (
        np.concatenate([b.labels for b in batches]).astype(np.int64) if data.has_labels else None
    )
    return Samples(inputs, labels)


def hold_out(samples: Samples, share: float, seed: int) -> tuple[Samples, Samples]:
    """A seeded `share` of the samples for validation (at least one), the rest for training."""
    count = len(samples)
    held = max(1, round(share * count))
    if held >= count:
        raise CalibrationError(
            f"holding out {share:g} of {count} training samples leaves none to train on; "
            "give more samples, a smaller --holdout, or --val"
        )
    order = np.random.default_rng(seed).permutation(count)
    return samples.take(np.sort(order[held:])), samples.take(np.sort(order[:held]))


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) of the outputs softened by `temperature`, times its square (so
    the gradient's scale does not depend on it), for (samples, classes) outputs; the squared
    error relative to the teacher's mean square for any other output."""
    if student.dim() == 2 and student.shape[1] > 1:
        return (
            F.kl_div(
                F.log_softmax(student / temperature, dim=1),
                F.log_softmax(teacher / temperature, dim=1),
                log_target=True,
                reduction="batchmean",
            )
            * temperature**2
        )
    return relative_error(student, teacher)


def relative_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student, teacher) / teacher.square().mean().clamp(min=1e-12)


class Trainer:
    """The student (the quantized model, shadow weights training) and its FP32 teacher."""

    def __init__(self, student: QuantizedGraph, teacher: QuantizedGraph, options: TrainOptions):
        self.student, self.teacher, self.options = student, teacher, options
        self.device = torch.device(options.device)
        self.observed = tuple(
            name
            for name in dict.fromkeys(s.layer for s in student.shadows)
            if options.feature_loss and name in teacher.layer_outputs
        )

    def loss(self, inputs: dict[str, torch.Tensor], labels: np.ndarray | None) -> torch.Tensor:
        with torch.no_grad():
            teacher, teacher_layers = self.teacher(inputs, self._names(self.teacher))
        student, student_layers = self.student(inputs, self._names(self.student))
        loss = distillation_loss(student, teacher, self.options.temperature)
        if self.observed:
            layers = [
                relative_error(student_layers[s], teacher_layers[t])
                for s, t in zip(self._names(self.student), self._names(self.teacher), strict=True)
            ]
            loss = loss + self.options.feature_loss * torch.stack(layers).mean()
        if labels is not None:
            loss = loss + F.cross_entropy(student, torch.from_numpy(labels).to(self.device))
        return loss

    def _names(self, graph: QuantizedGraph) -> tuple[str, ...]:
        return tuple(graph.layer_outputs[name] for name in self.observed)

    def evaluate(self, val: Samples) -> tuple[float, float]:
        """Validation score (top-1 against labels, else agreement with the teacher, in %)
        and mean distillation loss."""
        self.student.weight_seed = None
        hits, losses, batch = 0, [], self.options.batch_size
        with torch.no_grad():
            for start in range(0, len(val), batch):
                part = val.take(np.arange(start, min(start + batch, len(val))))
                inputs = float_arrays(part.inputs, self.device)
                student, teacher = self.student(inputs), self.teacher(inputs)
                target = (
                    torch.from_numpy(part.labels).to(self.device)
                    if part.labels is not None
                    else teacher.argmax(1)
                )
                hits += int((student.argmax(1) == target).sum()) if student.dim() == 2 else 0
                losses.append(
                    float(distillation_loss(student, teacher, self.options.temperature)) * len(part)
                )
        return 100.0 * hits / len(val), sum(losses) / len(val)


def _better(epoch: Epoch, best: Epoch, labelled: bool) -> bool:
    """Labelled validation: higher top-1, then lower loss. Without labels, lower loss: the
    KL divergence from the teacher ranks epochs on few samples, where agreement (top-1
    flips) is mostly noise."""
    if labelled:
        return (epoch.val_score, -epoch.val_loss) > (best.val_score, -best.val_loss)
    return epoch.val_loss < best.val_loss


def train(
    student: QuantizedGraph,
    teacher: QuantizedGraph,
    train_data: Samples,
    val_data: Samples,
    options: TrainOptions,
    augment: bool,
    show_progress: bool = False,
) -> tuple[list[Epoch], int]:
    """Train the student's shadow weights; leave it holding the best epoch's weights (see
    `_better`); return the history (epoch 0: the weights as they came) and
    the best epoch."""
    torch.manual_seed(options.seed)
    torch.use_deterministic_algorithms(True)
    if options.stochastic_rounding and any(
        isinstance(f, APoT) for shadow in student.shadows for f in shadow.formats
    ):
        raise SchemeError(
            "two-term power-of-two weights round to the nearest level only; "
            "fine-tune them without --stochastic-rounding"
        )
    trainer = Trainer(student, teacher, options)
    optimizer = torch.optim.Adam(student.weights.parameters(), lr=options.lr)
    steps_per_epoch = math.ceil(len(train_data) / options.batch_size)
    total = options.epochs * steps_per_epoch
    rng = np.random.default_rng(options.seed)
    history = [Epoch(0, math.nan, *trainer.evaluate(val_data))]
    best_state, best_epoch, step = copy.deepcopy(student.weights.state_dict()), 0, 0
    with progress_bar("fine-tuning", total, show_progress) as advance:
        for epoch in range(1, options.epochs + 1):
            order = rng.permutation(len(train_data))
            losses = []
            for start in range(0, len(train_data), options.batch_size):
                part = train_data.take(order[start : start + options.batch_size])
                inputs = float_arrays(part.inputs, trainer.device)
                if augment:
                    inputs = random_resized_crops(inputs, rng)
                for group in optimizer.param_groups:
                    group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                student.weight_seed = (
                    options.seed * 1_000_003 + step if options.stochastic_rounding else None
                )
                loss = trainer.loss(inputs, part.labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
                advance(1)
            history.append(Epoch(epoch, float(np.mean(losses)), *trainer.evaluate(val_data)))
            if _better(history[-1], history[best_epoch], val_data.labels is not None):
                best_epoch, best_state = epoch, copy.deepcopy(student.weights.state_dict())
            elif epoch - best_epoch >= options.patience:
                break
    student.weights.load_state_dict(best_state)
    return history, best_epoch
