"""End-to-end benchmark: rcompile against onnxruntime's `quantize_static` on real models.

For LeNet-5 (models/) and EfficientNet-Lite0 (../shared, skipped when absent): top-1 of the
FP32 model, of rcompile's schemes and of quantize_static int8 (QDQ, MinMax, per tensor and
per channel) on the same images; compile wall time of both tools in the same run; output
file sizes; inference time of every model as a ratio to FP32 in onnxruntime CPU.

    .venv/bin/python bench/compile.py            # prints the Markdown section
    .venv/bin/python bench/compile.py --write    # and replaces it in BENCHMARKS.md
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from sections import arguments, machine, markers, publish

import rcompile
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.exporter import write_model
from rcompile.plan import PlanOptions

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BEGIN, END = markers("compile.py")


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    calib: Path
    test: Path
    preprocess: str
    timing_batch: int


@dataclass(frozen=True)
class Row:
    label: str
    top1: float
    compile_s: float | None
    size: int
    latency_ratio: float


class ArrayReader(CalibrationDataReader):
    """quantize_static's calibration reader over rcompile's data loader (same decoding)."""

    def __init__(self, path: Path, model: onnx.ModelProto, preprocess: str, batch: int) -> None:
        data = open_data(path, input_specs(model), parse_preprocessing(preprocess))
        self._batches = iter(data.batches(batch))

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else batch.inputs


def cases(work: Path) -> list[Case]:
    models = ROOT / "models"
    found = [
        Case(
            "LeNet-5",
            models / "lenet5.onnx",
            models / "mnist_calib.npz",
            models / "mnist_test.npz",
            "unit",
            256,
        )
    ]
    images = SHARED / "data" / "imagenet-sample-dev"
    efficientnet = SHARED / "models" / "efficientnet_lite0.onnx"
    if images.is_dir() and efficientnet.is_file():
        files = sorted(images.glob("*.jpg"))
        calib, test = work / "calib", work / "test"
        for folder, chosen in ((calib, files[:100]), (test, files[100:])):
            folder.mkdir()
            for file in chosen:
                os.symlink(file, folder / file.name)
        found.append(Case("EfficientNet-Lite0", efficientnet, calib, test, "inception", 32))
    return found


def top1(model_path: Path, case: Case) -> float:
    model = onnx.load(str(model_path))
    data = open_data(case.test, input_specs(model), parse_preprocessing(case.preprocess))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    hits = 0
    for batch in data.batches(64):
        hits += int(np.sum(session.run(None, batch.inputs)[0].argmax(1) == batch.labels))
    return hits / data.count


def latency_ratio(
    model_path: Path, fp32_path: Path, inputs: dict, repeats: int = 15, threads: int = 0
) -> float:
    """Median over alternating runs of (model time / FP32 time): interleaving keeps a change
    in the machine's load from landing on one side only. `threads`: onnxruntime's intra-op
    threads (0: its default, every core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for p in (model_path, fp32_path)
    ]
    for session in sessions:
        for _ in range(3):
            session.run(None, inputs)
    ratios = []
    for _ in range(repeats):
        times = []
        for session in sessions:
            start = time.perf_counter()
            session.run(None, inputs)
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)


def timing_inputs(case: Case) -> dict:
    model = onnx.load(str(case.model))
    data = open_data(case.test, input_specs(model), parse_preprocessing(case.preprocess))
    return next(iter(data.batches(case.timing_batch))).inputs


def run_case(case: Case, work: Path) -> list[Row]:
    outputs: list[tuple[str, Path, float | None]] = [("FP32", case.model, None)]
    uncorrected = PlanOptions(bias_correction=False)
    per_tensor = PlanOptions(per_channel=False)
    variants = [  # label, scheme, options, target
        ("rcompile dfp16", "dfp16", PlanOptions(), "sim"),
        ("rcompile dfp8 per-channel", "dfp8", PlanOptions(), "sim"),
        ("rcompile dfp8 per-channel, no bias correction", "dfp8", uncorrected, "sim"),
        ("rcompile dfp8 per-tensor", "dfp8", per_tensor, "sim"),
        (
            "rcompile dfp8 per-tensor, no bias correction",
            "dfp8",
            replace(per_tensor, bias_correction=False),
            "sim",
        ),
        (
            "rcompile dfp8 per-tensor, equalized",
            "dfp8",
            replace(per_tensor, equalization=True),
            "sim",
        ),
        ("rcompile fp8e4m3 (scaled)", "fp8e4m3", PlanOptions(), "sim"),
        ("rcompile fp8e4m3 (scaled), target qdq", "fp8e4m3", PlanOptions(), "qdq"),
        ("rcompile fp8e4m3 scaled, no bias correction", "fp8e4m3", uncorrected, "sim"),
        ("rcompile fp8e4m3:unscaled, no bias correction", "fp8e4m3:unscaled", uncorrected, "sim"),
        ("rcompile pow2 (4-bit weights, dfp8 activations)", "pow2", PlanOptions(), "sim"),
        (
            "rcompile apot (6-bit two-term power-of-two weights, dfp8 activations)",
            "apot",
            PlanOptions(),
            "sim",
        ),
    ]
    preprocessing = parse_preprocessing(case.preprocess)
    for label, scheme, options, target in variants:
        path = work / f"{case.name}-{len(outputs)}.onnx"
        start = time.perf_counter()
        result = rcompile.compile(
            case.model,
            scheme,
            case.calib,
            options=options,
            preprocessing=preprocessing,
            target=target,
        )
        write_model(result.model, path)
        outputs.append((label, path, time.perf_counter() - start))
    fp32 = onnx.load(str(case.model))
    for per_channel in (False, True):
        label = f"onnxruntime quantize_static int8 {'per-channel' if per_channel else 'per-tensor'}"
        path = work / f"{case.name}-ort-{per_channel}.onnx"
        start = time.perf_counter()
        reader = ArrayReader(case.calib, fp32, case.preprocess, 32)
        quantize_static(
            str(case.model),
            str(path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
        )
        outputs.append((label, path, time.perf_counter() - start))
    inputs = timing_inputs(case)
    return [
        Row(
            label,
            top1(path, case),
            seconds,
            path.stat().st_size,
            latency_ratio(path, case.model, inputs),
        )
        for label, path, seconds in outputs
    ]


def section(results: dict[str, list[Row]], counts: dict[str, str]) -> str:
    lines = [
        BEGIN,
        "## End to end (`bench/compile.py`)",
        "",
        "Command: `.venv/bin/python bench/compile.py --write`. Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {machine()}, Python "
        f"{platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}.",
        "Compile time is the whole tool run from files (calibration, rewrite, export) relative to",
        "onnxruntime's `quantize_static` (per tensor) in the same run; latency is one batch in",
        "onnxruntime CPU relative to the FP32 model (median of 15 ratios, runs alternating",
        "with FP32's).",
        "",
    ]
    for name, rows in results.items():
        fp32 = rows[0].top1
        peer = next(r.compile_s for r in rows if r.label.endswith("int8 per-tensor"))
        lines += [
            f"### {name} ({counts[name]})",
            "",
            "| model | top-1 | drop (points) | compile time vs quantize_static "
            "| file size | latency vs FP32 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            compile_ratio = ""
            if row.compile_s is not None:
                compile_ratio = f"{row.compile_s / peer:.2f} ({row.compile_s:.1f} s)"
            lines.append(
                f"| {row.label} | {100 * row.top1:.2f} % | {100 * (fp32 - row.top1):+.2f} "
                f"| {compile_ratio} | {row.size / 1e6:.3f} MB | {row.latency_ratio:.2f} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = arguments(__doc__)
    args = parser.parse_args()
    counts = {
        "LeNet-5": "calibration: 500 training images; scored on the 1,000 test images",
        "EfficientNet-Lite0": "calibration: the first 100 images of imagenet-sample-dev; "
        "scored on the other 400",
    }
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results = {case.name: run_case(case, work) for case in cases(work)}
    text = section(results, counts)
    publish("compile.py", text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
