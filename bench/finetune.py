"""Fine-tuning benchmark: accuracy before and after `rcompile finetune`, and training time.

LeNet-5 at dfp4 and at pow2: trained on the 4,000 training images, early-stopped on test
images 0-499, scored on test images 500-999 (never trained on or selected on).
EfficientNet-Lite0 at per-tensor dfp8 (where post-training quantization loses most): sorted
images 0-99 calibrate, 0-299 train, 300-399 early-stop, 400-499 are scored.

    .venv/bin/python bench/finetune.py [--write] [--only lenet|efficientnet]
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sections import arguments, markers, publish

import rcompile
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.exporter import write_model
from rcompile.finetune import TrainOptions, finetune
from rcompile.plan import PlanOptions
from rcompile.score import predictions, score

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BEGIN, END = markers("finetune.py")


def top1(model: onnx.ModelProto | Path, data: Path, preprocess: str | None) -> float:
    loaded = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    preprocessing = parse_preprocessing(preprocess) if preprocess else None
    dataset = open_data(data, input_specs(loaded), preprocessing)
    return 100 * score(predictions(loaded, dataset, 64), dataset.labels).top1


def case(
    work: Path,
    name: str,
    model: Path,
    scheme: str,
    options: PlanOptions,
    calib: Path,
    train: Path,
    val: Path,
    scored: Path,
    preprocess: str | None,
    train_options: TrainOptions,
) -> dict:
    preprocessing = parse_preprocessing(preprocess) if preprocess else None
    compiled = rcompile.compile(model, scheme, calib, options=options, preprocessing=preprocessing)
    path = write_model(compiled.model, work / f"{name}-{scheme}.onnx")
    start = time.perf_counter()
    result = finetune(path, train, val, train_options, preprocessing)
    seconds = time.perf_counter() - start
    return {
        "name": name,
        "scheme": scheme + ("" if options.per_channel else " per-tensor"),
        "fp32": top1(model, scored, preprocess),
        "before": top1(compiled.model, scored, preprocess),
        "after": top1(result.model, scored, preprocess),
        "epochs": f"{len(result.history)} (best {result.best_epoch})",
        "seconds": seconds,
        "options": train_options,
    }


def lenet(work: Path) -> list[dict]:
    test = np.load(ROOT / "models" / "mnist_test.npz")
    for part, rows in (("val", slice(0, 500)), ("scored", slice(500, 1000))):
        np.savez(work / f"mnist_{part}.npz", input=test["input"][rows], labels=test["labels"][rows])
    common = dict(
        model=ROOT / "models" / "lenet5.onnx",
        calib=ROOT / "models" / "mnist_calib.npz",
        train=ROOT / "models" / "mnist_train.npz",
        val=work / "mnist_val.npz",
        scored=work / "mnist_scored.npz",
        preprocess=None,
        train_options=TrainOptions(),
    )
    return [
        case(work, "LeNet-5", scheme=s, options=PlanOptions(), **common) for s in ("dfp4", "pow2")
    ]


def efficientnet(work: Path) -> list[dict]:
    images = SHARED / "data" / "imagenet-sample-dev"
    model = SHARED / "models" / "efficientnet_lite0.onnx"
    if not (images.is_dir() and model.is_file()):
        return []
    files = sorted(images.glob("*.jpg"))
    parts = {
        "calib": files[:100],
        "train": files[:300],
        "val": files[300:400],
        "scored": files[400:],
    }
    for part, chosen in parts.items():
        (work / part).mkdir()
        for file in chosen:
            os.symlink(file, work / part / file.name)
    options = TrainOptions(epochs=4, lr=1e-4, batch_size=32, patience=2)
    return [
        case(
            work,
            "EfficientNet-Lite0",
            model,
            "dfp8",
            PlanOptions(per_channel=False),
            work / "calib",
            work / "train",
            work / "val",
            work / "scored",
            "inception",
            options,
        )
    ]


def section(rows: list[dict]) -> str:
    lines = [
        BEGIN,
        "## Fine-tuning (`bench/finetune.py`)",
        "",
        "Command: `.venv/bin/python bench/finetune.py --write`. Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores ({platform.machine()}), "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}. Top-1 on images that were "
        "neither trained on nor used for early stopping (see the script's docstring for the "
        "splits), measured with onnxruntime on the written models.",
        "",
        "| model | scheme | FP32 | before fine-tuning | after | epochs | lr | training time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['scheme']} | {r['fp32']:.2f} % | {r['before']:.2f} % "
            f"| {r['after']:.2f} % | {r['epochs']} | {r['options'].lr:g} | {r['seconds']:.0f} s |"
        )
    return "\n".join([*lines, "", END])


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--only", choices=("lenet", "efficientnet"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        rows = [] if args.only == "efficientnet" else lenet(work)
        if args.only != "lenet":
            rows += efficientnet(work)
    text = section(rows)
    publish("finetune.py", text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
