"""Fine-tuning of an rcompile model with full-precision shadow weights, taught by the FP32
model it was compiled from (needs PyTorch: the `finetune` extra). See docs/finetune.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from rcompile.api import load_source
from rcompile.data import Preprocessing, input_specs, open_data
from rcompile.data.specs import format_shape
from rcompile.errors import CalibrationError, ModelImportError
from rcompile.exporter import finish_model, rcompile_entries
from rcompile.finetune.device import torch_device
from rcompile.finetune.export import write_weights
from rcompile.finetune.graph import QuantizedGraph, read_plan
from rcompile.finetune.refit import Refit, check_refittable, refit_activations
from rcompile.finetune.rounding import LayerRounding, learn_rounding
from rcompile.finetune.train import Epoch, Samples, TrainOptions, hold_out, in_memory, train
from rcompile.origin import find_teacher, source_record
from rcompile.score import predictions, score

__all__ = ["Epoch", "FinetuneResult", "TrainOptions", "finetune"]


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned model; the validation score before and after, measured with
    onnxruntime on the written model (`metric`: top-1 against labels, or top-1 agreement
    with the FP32 teacher), the epochs and the best one, what learned rounding did per
    layer, and the activation formats `refit_activations` changed. The options and the
    teacher's SHA-256 make the run repeatable; they are reported beside the model, not in
    it, so the file keeps its size."""

    model: onnx.ModelProto
    options: TrainOptions
    metric: str
    before: float
    after: float
    history: list[Epoch]
    best_epoch: int
    teacher: str
    teacher_sha256: str
    validation: str
    device: str
    rounding: list[LayerRounding]
    refits: list[Refit]

    def as_dict(self) -> dict:
        return {
            "teacher": self.teacher,
            "teacher_sha256": self.teacher_sha256,
            "options": asdict(self.options),
            "validation": self.validation,
            "device": self.device,
            "metric": self.metric,
            "val_before": self.before,
            "val_after": self.after,
            "best_epoch": self.best_epoch,
            "history": [asdict(epoch) for epoch in self.history],
            "rounding": [asdict(layer) for layer in self.rounding],
            "refit_activations": [asdict(change) for change in self.refits],
        }


def read_quantized(path: str | Path) -> onnx.ModelProto:
    """An rcompile model from disk (it must carry its plan)."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as error:
        raise ModelImportError(
            f"{path}: not an ONNX model ({str(error).splitlines()[0]})"
        ) from error
    read_plan(model)
    return model


def finetune(
    model: str | Path,
    train_data: str | Path,
    val_data: str | Path | None = None,
    options: TrainOptions | None = None,
    preprocessing: Preprocessing | None = None,
    show_progress: bool = False,
    teacher: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tune `model` (written by rcompile) on `train_data` (labels optional), taught by
    `teacher` (by default the FP32 model it was compiled from): learned rounding layer by
    layer, then end-to-end training stopping early on `val_data` (by default a held-out
    share of `train_data`); return the model with the same plan and storage, and new
    weights (with `options.refit_activations`, activation fractional lengths re-chosen
    too: see `rcompile.finetune.refit`)."""
    options = options or TrainOptions()
    device = torch_device(options.device)
    options = replace(options, device=str(device))
    quantized = read_quantized(model)
    if options.refit_activations:
        check_refittable(quantized)
    teacher_path = Path(teacher) if teacher is not None else find_teacher(quantized, Path(model))
    imported = load_source(teacher_path)
    source = imported.model
    specs = input_specs(quantized)
    for spec in specs:
        if spec.batch_axis:
            raise CalibrationError(
                f"fine-tuning feeds samples on axis 0, but input '{spec.name}' of shape "
                f"{format_shape(spec.shape)} takes them on axis {spec.batch_axis}"
            )
    samples = in_memory(open_data(train_data, specs, preprocessing))
    if val_data is None:
        training, validation = hold_out(samples, options.holdout, options.seed)
        validation_label = f"{len(validation)} of {len(samples)} training samples held out"
    else:
        training, validation = samples, in_memory(open_data(val_data, specs, preprocessing))
        validation_label = str(val_data)
    student = QuantizedGraph(quantized).to_device(device)
    fp32 = QuantizedGraph(source, plan=False).to_device(device)
    student.start_from(fp32)
    rounding = (
        learn_rounding(
            student,
            fp32,
            training.inputs,
            options.rounding_steps,
            options.batch_size,
            options.seed,
            show_progress,
        )
        if options.rounding_steps
        else []
    )
    augment = options.augment and Path(train_data).is_dir()
    history, best_epoch = train(
        student, fp32, training, validation, options, augment, show_progress
    )
    values = {name: t.cpu().numpy() for name, t in student.quantized_weights().items()}
    tuned = finish_model(write_weights(quantized, values), rcompile_entries(quantized))
    refits = []
    if options.refit_activations:
        tuned, refits = refit_activations(
            tuned,
            imported,
            values,
            student.shadows,
            training,
            options.temperature,
            options.batch_size,
            show_progress,
        )
    reference = None if validation.labels is not None else _scores(source, validation, options)
    metric = "top-1" if validation.labels is not None else "agreement"
    return FinetuneResult(
        tuned,
        options,
        metric,
        _score(_scores(quantized, validation, options), validation, reference),
        _score(_scores(tuned, validation, options), validation, reference),
        history,
        best_epoch,
        str(teacher_path),
        source_record(teacher_path)["sha256"],
        validation_label,
        str(device),
        rounding,
        refits,
    )


def _scores(model: onnx.ModelProto, samples: Samples, options: TrainOptions) -> np.ndarray:
    return predictions(model, samples.dataset("validation"), options.batch_size)


def _score(scores: np.ndarray, samples: Samples, reference: np.ndarray | None) -> float:
    result = score(scores, samples.labels, reference)
    return 100.0 * (result.top1 if samples.labels is not None else result.agreement)
