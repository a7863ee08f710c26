"""Fine-tuning of an rcompile model with full-precision shadow weights (needs PyTorch: the
`finetune` extra). See docs/finetune.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from rcompile.data import Preprocessing, input_specs, open_data
from rcompile.data.specs import format_shape
from rcompile.errors import CalibrationError, ModelImportError
from rcompile.exporter import finish_model
from rcompile.finetune.export import write_weights
from rcompile.finetune.graph import read_plan
from rcompile.finetune.train import Epoch, TrainOptions, in_memory, train
from rcompile.score import predictions, score

__all__ = ["Epoch", "FinetuneResult", "TrainOptions", "finetune"]


@dataclass(frozen=True)
class FinetuneResult:
    model: onnx.ModelProto
    before: float
    after: float
    history: list[Epoch]
    best_epoch: int

    def as_dict(self) -> dict:
        return {
            "val_top1_before": self.before,
            "val_top1_after": self.after,
            "best_epoch": self.best_epoch,
            "history": [asdict(epoch) for epoch in self.history],
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
    val_data: str | Path,
    options: TrainOptions | None = None,
    preprocessing: Preprocessing | None = None,
    show_progress: bool = False,
) -> FinetuneResult:
    """Fine-tune `model` (written by rcompile) on `train_data`, stopping early on `val_data`;
    return the model with the same plan and new weights, and top-1 on `val_data` before and
    after (measured with onnxruntime)."""
    options = options or TrainOptions()
    quantized = read_quantized(model)
    specs = input_specs(quantized)
    for spec in specs:
        if spec.batch_axis:
            raise CalibrationError(
                f"fine-tuning feeds samples on axis 0, but input '{spec.name}' of shape "
                f"{format_shape(spec.shape)} takes them on axis {spec.batch_axis}"
            )
    train_set = open_data(train_data, specs, preprocessing)
    val_set = open_data(val_data, specs, preprocessing)
    training, validation = in_memory(train_set, "training"), in_memory(val_set, "validation")
    before = _top1(quantized, val_set, options.batch_size)
    graph, history, best_epoch = train(quantized, training, validation, options, show_progress)
    values = {name: tensor.numpy() for name, tensor in graph.quantized_weights().items()}
    metadata = {p.key: p.value for p in quantized.metadata_props if p.key != "rcompile.version"}
    metadata["rcompile.finetune"] = {**asdict(options), "best_epoch": best_epoch}
    tuned = finish_model(write_weights(quantized, values), metadata)
    return FinetuneResult(
        tuned, before, _top1(tuned, val_set, options.batch_size), history, best_epoch
    )


def _top1(model: onnx.ModelProto, data, batch_size: int) -> float:
    return 100.0 * score(predictions(model, data, batch_size), data.labels).top1
