"""Fine-tuning benchmark: accuracy before and after `rcompile finetune`, the time of learned
rounding and of an epoch of end-to-end training.

Every model is first rounded layer by layer (learned rounding, the default steps), then
trains by distillation from its FP32 model, first on unlabelled data, then on labelled data
(distillation plus cross-entropy); early stopping on a seeded fifth of the training data;
scored with onnxruntime on the written model, on samples used for neither.

- LeNet-5 at dfp4 and pow2: calibrated on models/mnist_calib.npz, trained on the 4,000
  images of models/mnist_train.npz (without, then with labels), scored on the 1,000 test
  images.
- EfficientNet-Lite0 (../shared) at dfp:w4a8, pow2 and per-tensor dfp8: sorted images 0-99
  calibrate and are the unlabelled training set; images 100-399 are the labelled one; images
  400-499 are scored. 100 images leave about 4 points of standard error, so models trained
  on the unlabelled images are also scored on all 400 images 100-499, which they never saw.

    .venv/bin/python bench/finetune.py [--write] [--only lenet|efficientnet] [--device D]
        [--schemes dfp:w4a8,...] [--unlabelled-only | --labelled-only]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sections import arguments, machine, markers, publish

import rcompile
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.exporter import write_model
from rcompile.finetune import TrainOptions, finetune
from rcompile.plan import PlanOptions
from rcompile.score import predictions, score

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BEGIN, END = markers("finetune.py")
EFFICIENTNET_EPOCHS = 10


@dataclass(frozen=True)
class Case:
    """One model and scheme: where it calibrates, trains (unlabelled and labelled) and is
    scored, how it trains, and the larger set the unlabelled rows are also scored on."""

    name: str
    model: Path
    scheme: str
    per_channel: bool
    calib: Path
    unlabelled: Path
    labelled: Path
    scored: Path
    unseen: Path | None
    preprocess: str | None
    options: TrainOptions


def top1(model: onnx.ModelProto | Path, data: Path, preprocess: str | None) -> float:
    loaded = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    preprocessing = parse_preprocessing(preprocess) if preprocess else None
    dataset = open_data(data, input_specs(loaded), preprocessing)
    return 100 * score(predictions(loaded, dataset, 50), dataset.labels).top1


def run(work: Path, case: Case, training: tuple[str, ...]) -> list[dict]:
    preprocessing = parse_preprocessing(case.preprocess) if case.preprocess else None
    compiled = rcompile.compile(
        case.model,
        case.scheme,
        case.calib,
        options=PlanOptions(per_channel=case.per_channel),
        preprocessing=preprocessing,
    )
    label = case.scheme + ("" if case.per_channel else " per-tensor")
    path = write_model(compiled.model, work / f"{case.name}-{label.replace(' ', '-')}.onnx")
    fp32, before = (
        top1(case.model, case.scored, case.preprocess),
        top1(path, case.scored, case.preprocess),
    )
    unseen = (
        (top1(case.model, case.unseen, case.preprocess), top1(path, case.unseen, case.preprocess))
        if case.unseen
        else None
    )
    rows = []
    for data in (getattr(case, part) for part in training):
        labelled = open_data(data, input_specs(compiled.model), preprocessing).has_labels
        labels = "yes" if labelled else "none"
        start = time.perf_counter()
        result = finetune(path, data, None, case.options, preprocessing, teacher=case.model)
        seconds = time.perf_counter() - start
        rounding = sum(layer.seconds for layer in result.rounding)
        epochs = len(result.history) - 1
        tuned = work / "tuned.onnx"
        write_model(result.model, tuned)
        rows.append(
            {
                "name": case.name,
                "scheme": label,
                "train": f"{data.name} (labels: {labels})",
                "fp32": fp32,
                "before": before,
                "after": top1(result.model, case.scored, case.preprocess),
                "unseen": (*unseen, top1(result.model, case.unseen, case.preprocess))
                if unseen and not labelled
                else None,
                "epochs": f"{epochs} (best {result.best_epoch})",
                "rounding": rounding,
                "per_epoch": (seconds - rounding) / max(epochs, 1),
                "device": result.device,
                "bytes": (path.stat().st_size, tuned.stat().st_size),
                "options": case.options,
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def lenet(work: Path, device: str) -> list[Case]:
    train = np.load(ROOT / "models" / "mnist_train.npz")
    np.save(work / "mnist_train_unlabelled.npy", train["input"])
    options = TrainOptions(epochs=10, device=device)
    return [
        Case(
            "LeNet-5",
            ROOT / "models" / "lenet5.onnx",
            scheme,
            True,
            ROOT / "models" / "mnist_calib.npz",
            work / "mnist_train_unlabelled.npy",
            ROOT / "models" / "mnist_train.npz",
            ROOT / "models" / "mnist_test.npz",
            None,
            None,
            options,
        )
        for scheme in ("dfp4", "pow2")
    ]


def efficientnet(work: Path, device: str) -> list[Case]:
    images = SHARED / "data" / "imagenet-sample-dev"
    model = SHARED / "models" / "efficientnet_lite0.onnx"
    if not (images.is_dir() and model.is_file()):
        return []
    files = sorted(images.glob("*.jpg"))
    parts = {
        "calib": files[:100],
        "labelled": files[100:400],
        "scored": files[400:],
        "unseen": files[100:],
    }
    for part, chosen in parts.items():
        (work / part).mkdir()
        for file in chosen:
            os.symlink(file, work / part / file.name)
    # The same 100 images under names without the class-index prefix: no labels.
    (work / "unlabelled").mkdir()
    for index, file in enumerate(parts["calib"]):
        os.symlink(file, work / "unlabelled" / f"image{index:03d}.jpg")
    options = TrainOptions(
        epochs=EFFICIENTNET_EPOCHS, lr=0.001, batch_size=16, patience=4, device=device
    )
    return [
        Case(
            "EfficientNet-Lite0",
            model,
            scheme,
            per_channel,
            work / "calib",
            work / "unlabelled",
            work / "labelled",
            work / "scored",
            work / "unseen",
            "inception",
            options,
        )
        for scheme, per_channel in (("dfp:w4a8", True), ("pow2", True), ("dfp8", False))
    ]


def section(rows: list[dict], command_line: list[str]) -> str:
    lines = [
        BEGIN,
        "## Fine-tuning (`bench/finetune.py`)",
        "",
        f"Command: `.venv/bin/python bench/finetune.py {' '.join(command_line)}`. Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {machine()}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}. Distillation from the FP32 model (plus cross-entropy "
        "where the training data has labels), early stopping on a held-out fifth of the "
        "training data; top-1 on samples that were neither trained on nor used for early "
        "stopping, measured with onnxruntime on the written models (see the script's "
        "docstring for the splits). The written file's size is the compiled one's.",
        "",
        "| model | scheme | trained on | FP32 | before | after | FP32 / before / after on "
        "images 100-499 | rounding | epochs | lr | per epoch | device | bytes before → after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        unseen = " / ".join(f"{v:.1f} %" for v in r["unseen"]) if r["unseen"] else "n/a"
        lines.append(
            f"| {r['name']} | {r['scheme']} | {r['train']} | {r['fp32']:.1f} % | "
            f"{r['before']:.1f} % | {r['after']:.1f} % | {unseen} | "
            f"{r['options'].rounding_steps} steps, {r['rounding']:.0f} s | "
            f"{r['epochs']} | {r['options'].lr:g} | "
            f"{r['per_epoch']:.1f} s | {r['device']} | {r['bytes'][0]:,} → {r['bytes'][1]:,} |"
        )
    return "\n".join([*lines, "", END])


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--only", choices=("lenet", "efficientnet"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--schemes", help="comma-separated schemes to run (default: all)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--unlabelled-only", action="store_true", help="skip the labelled sets")
    only.add_argument("--labelled-only", action="store_true", help="skip the unlabelled sets")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cases = [] if args.only == "efficientnet" else lenet(work, args.device)
        if args.only != "lenet":
            cases += efficientnet(work, args.device)
        if args.schemes:
            cases = [case for case in cases if case.scheme in args.schemes.split(",")]
        skipped = {"unlabelled": args.labelled_only, "labelled": args.unlabelled_only}
        training = tuple(part for part, skip in skipped.items() if not skip)
        rows = [row for case in cases for row in run(work, case, training)]
    publish("finetune.py", section(rows, sys.argv[1:]), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
