"""Third-party models: rcompile against onnxruntime's `quantize_static` on the four models of
../shared/models/corpus/ (skipped when absent), with real-looking inputs made here, seeded:

- PP-OCRv4 rec and the PP-OCR direction classifier read text lines rendered with Pillow
  (words of the recogniser's own dictionary; half the classifier's lines upside down);
- PP-OCRv4 det reads pages of such lines;
- YOLOv8n reads ImageNet dev images (../shared/data/imagenet-sample-dev) resized to 320x320.

Each model is calibrated on its first CALIBRATION inputs and scored on the next EVALUATION.
Per row: compile wall time and peak resident memory of the tool's process, the written file
against FP32's, fidelity to FP32 with a task metric (rec: share of lines whose CTC string
equals FP32's; det: IoU of the text maps thresholded at 0.3; cls: top-1 agreement; YOLO:
IoU of the boxes at FP32's 20 most confident anchors) and the first output's SQNR. Last,
EfficientNet-Lite0's peak memory when calibrated on 100 and on 400 images.

    .venv/bin/python bench/corpus.py            # prints the Markdown section
    .venv/bin/python bench/corpus.py --write    # and replaces it in BENCHMARKS.md
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont
from sections import arguments, machine, markers, publish

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "models" / "corpus"
IMAGENET = SHARED / "data" / "imagenet-sample-dev"
BEGIN, END = markers("corpus.py")
CALIBRATION, EVALUATION = 64, 64
WORDS = ("invoice", "total", "2026", "Main Street", "rcompile", "ONNX", "quantized", "47.50")


@dataclass(frozen=True)
class Model:
    name: str
    file: str
    inputs: Callable[[int, int], np.ndarray]  # (count, seed) -> model input
    fidelity: Callable[[np.ndarray, np.ndarray], float]  # (FP32 output, quantized) -> share
    metric: str


def text_line(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
    font = ImageFont.load_default(size=int(height * rng.uniform(0.55, 0.8)))
    line = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
    ink = tuple(int(v) for v in rng.integers(0, 80, 3))
    ImageDraw.Draw(line).text((int(rng.integers(2, 12)), height // 8), words, fill=ink, font=font)
    return line


def normalised(images: list[Image.Image]) -> np.ndarray:
    """(x / 255 - 0.5) / 0.5, NCHW float32: PaddleOCR's preprocessing."""
    array = np.stack([np.asarray(image, np.float32) for image in images]) / 255.0
    return ((array - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)


def rec_inputs(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return normalised([text_line(rng, 48, 320) for _ in range(count)])


def cls_inputs(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lines = [text_line(rng, 48, 192) for _ in range(count)]
    return normalised([line.rotate(180) if i % 2 else line for i, line in enumerate(lines)])


def det_inputs(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(count):
        page = Image.new("RGB", (320, 320), (250, 250, 245))
        for row in range(int(rng.integers(3, 7))):
            line = text_line(rng, 32, 280)
            page.paste(line, (int(rng.integers(0, 30)), 10 + row * 50))
        pages.append(page)
    return normalised(pages)


def yolo_inputs(count: int, seed: int) -> np.ndarray:
    files = sorted(IMAGENET.glob("*.jpg"))
    start = 0 if seed == 0 else CALIBRATION
    images = [Image.open(f).convert("RGB").resize((320, 320)) for f in files[start : start + count]]
    return (np.stack([np.asarray(i, np.float32) for i in images]) / 255.0).transpose(0, 3, 1, 2)


def ctc_strings(output: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC: the best class per time step, repeats merged, blanks (0) dropped."""
    best = output.argmax(-1)
    strings = []
    for row in best:
        merged = [c for i, c in enumerate(row) if i == 0 or c != row[i - 1]]
        strings.append(tuple(int(c) for c in merged if c != 0))
    return strings


def same_strings(reference: np.ndarray, quantized: np.ndarray) -> float:
    pairs = zip(ctc_strings(reference), ctc_strings(quantized), strict=True)
    return float(np.mean([a == b for a, b in pairs]))


def map_iou(reference: np.ndarray, quantized: np.ndarray) -> float:
    a, b = reference > 0.3, quantized > 0.3
    union = np.logical_or(a, b).sum(axis=tuple(range(1, a.ndim)))
    inter = np.logical_and(a, b).sum(axis=tuple(range(1, a.ndim)))
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def top1_agreement(reference: np.ndarray, quantized: np.ndarray) -> float:
    return float(np.mean(reference.argmax(1) == quantized.argmax(1)))


def box_iou(reference: np.ndarray, quantized: np.ndarray, anchors: int = 20) -> float:
    """YOLOv8 output (N, 4 + classes, A): IoU of the (cx, cy, w, h) boxes at FP32's most
    confident anchors."""
    ious = []
    for ref, q in zip(reference, quantized, strict=True):
        best = np.argsort(-ref[4:].max(0))[:anchors]
        for a in best:
            ious.append(_iou(ref[:4, a], q[:4, a]))
    return float(np.mean(ious))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    def corners(box):
        cx, cy, w, h = box
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    ax0, ay0, ax1, ay1 = corners(a)
    bx0, by0, bx1, by1 = corners(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 1.0


MODELS = (
    Model("PP-OCRv4 rec", "ppocrv4_rec.onnx", rec_inputs, same_strings, "same CTC string"),
    Model("PP-OCRv4 det", "ppocrv4_det.onnx", det_inputs, map_iou, "text-map IoU"),
    Model("PP-OCR cls", "ppocr_mobile_cls.onnx", cls_inputs, top1_agreement, "top-1 agreement"),
    Model("YOLOv8n", "yolov8n_320.onnx", yolo_inputs, box_iou, "box IoU"),
)

# A child that quantizes with onnxruntime's quantize_static from an .npz of inputs.
ORT_QUANTIZE = """
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
model, data, output = sys.argv[1:4]
x = np.load(data)["x"]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.batches = iter([{"%s": x[i : i + 8]} for i in range(0, len(x), 8)])
    def get_next(self):
        return next(self.batches, None)
quantize_static(model, output, Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0], file=sys.stderr)
"""

# A child that runs the rcompile command line and reports its own peak resident memory (the
# kernel's per-process figure from wait4 includes the parent's at fork time).
RCOMPILE = """
import sys
from rcompile.cli import main
status = main(sys.argv[1:])
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0], file=sys.stderr)
sys.exit(status)
"""


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident MiB (the last line of its stderr, in KiB) of a child
    process; fails loudly if it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed: {result.stderr[-500:]}")
    return seconds, int(result.stderr.strip().splitlines()[-1]) // 1024


def outputs(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {name: x[i : i + 8]})[0] for i in range(0, len(x), 8)])


def sqnr(reference: np.ndarray, quantized: np.ndarray) -> float:
    noise = np.sum((quantized.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


def run_model(model: Model, work: Path) -> list[list[str]]:
    source = CORPUS / model.file
    name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    calib, test = model.inputs(CALIBRATION, 0), model.inputs(EVALUATION, 1)
    np.savez(work / "calib.npz", **{name: calib})
    np.savez(work / "calib_x.npz", x=calib)
    reference = outputs(source, name, test)
    fp32_bytes = source.stat().st_size
    rows = [["FP32", "", "", f"{fp32_bytes / 1e6:.2f} MB", "1.00", "1.000", ""]]
    variants = [
        (f"rcompile {scheme} {target}", scheme, target)
        for scheme, target in (
            ("dfp8", "sim"),
            ("dfp8", "qdq"),
            ("dfp16", "sim"),
            ("fp8e4m3", "sim"),
            ("pow2", "sim"),
            ("apot", "sim"),
        )
    ]
    for label, scheme, target in variants:
        path = work / f"{scheme}-{target}.onnx"
        command = [sys.executable, "-c", RCOMPILE, str(source), "-o", str(path)]
        command += ["--scheme", scheme, "--target", target, "--calib", str(work / "calib.npz")]
        rows.append(_row(label, timed(command), path, fp32_bytes, name, test, reference, model))
    path = work / "ort.onnx"
    command = [sys.executable, "-c", ORT_QUANTIZE % name, str(source), str(work / "calib_x.npz")]
    rows.append(
        _row(
            "onnxruntime quantize_static int8 per-channel",
            timed([*command, str(path)]),
            path,
            fp32_bytes,
            name,
            test,
            reference,
            model,
        )
    )
    return rows


def _row(label, cost, path, fp32_bytes, name, test, reference, model: Model) -> list[str]:
    seconds, mib = cost
    got = outputs(path, name, test)
    size = path.stat().st_size
    return [
        label,
        f"{seconds:.1f}",
        f"{mib:,}",
        f"{size / 1e6:.2f} MB",
        f"{size / fp32_bytes:.2f}",
        f"{model.fidelity(reference, got):.3f}",
        f"{sqnr(reference, got):.1f}",
    ]


def calibration_memory(work: Path) -> list[list[str]]:
    """EfficientNet-Lite0 compiled at batch 32 on 100 and on 400 ImageNet dev images: the
    whole process's peak resident memory (calibration holds at most a fixed budget of
    observed tensors, so it should not grow with the images)."""
    model = SHARED / "models" / "efficientnet_lite0.onnx"
    rows = []
    for count in (100, 400):
        command = [sys.executable, "-c", RCOMPILE, str(model), "-o", str(work / "e.onnx")]
        command += ["--calib", str(IMAGENET), "--calib-count", str(count), "--batch-size", "32"]
        seconds, mib = timed(command)
        rows.append([str(count), f"{seconds:.1f}", f"{mib:,}"])
    return rows


def section(results: dict[str, list[list[str]]], memory: list[list[str]]) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [
        BEGIN,
        "## Third-party models (`bench/corpus.py`)",
        "",
        f"Command: `.venv/bin/python bench/corpus.py --write`. Measured {now} on "
        f"{machine()}, onnxruntime {ort.__version__}. "
        f"Calibrated on {CALIBRATION} inputs, scored on {EVALUATION} others (inputs made by "
        "the script: rendered text lines and pages for the OCR models, ImageNet dev images "
        "for YOLOv8n). Compile time and peak memory are the tool's whole process; fidelity "
        "is to FP32 on the scored inputs. The qdq and onnxruntime rows run onnxruntime's "
        "fused int8 kernels, whose results depend on the CPU; the sim rows do not.",
    ]
    for title, rows in results.items():
        metric = next(m.metric for m in MODELS if m.name == title)
        lines += [
            "",
            f"### {title} (fidelity: {metric})",
            "",
            "| model | compile s | peak MiB | file | vs FP32 | fidelity | SQNR dB |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    lines += [
        "",
        "### Calibration memory: EfficientNet-Lite0, dfp8, batch 32",
        "",
        "| calibration images | compile s | peak MiB |",
        "| --- | --- | --- |",
        *("| " + " | ".join(row) + " |" for row in memory),
    ]
    return "\n".join([*lines, "", END])


def main() -> int:
    parser = arguments(__doc__)
    args = parser.parse_args()
    if not CORPUS.is_dir() or not IMAGENET.is_dir():
        print(f"skipped: {CORPUS} or {IMAGENET} not found", file=sys.stderr)
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for model in MODELS:
            work = Path(folder) / model.file
            work.mkdir()
            results[model.name] = run_model(model, work)
            print(f"{model.name}: done", file=sys.stderr)
        memory = calibration_memory(Path(folder))
    text = section(results, memory)
    publish("corpus.py", text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
