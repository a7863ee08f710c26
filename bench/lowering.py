"""The two lowerings of one plan: `sim` (bit-true) and `qdq` (deployment), against FP32.

For EfficientNet-Lite0 (../shared, skipped when absent) and LeNet-5 (models/), compiled
with dfp8: latency of each lowering relative to FP32 in onnxruntime CPU (2 threads; batch 32
for EfficientNet-Lite0, 256 for LeNet-5; median of 15 ratios, runs alternating with FP32's),
top-1 on the held-out images, and what `rcompile verify` finds: values that differ from the
reference datapath at each optimisation level. Where qemu-x86_64 is installed, LeNet-5's
verify runs again on an emulated AVX2-only CPU (QEMU's Haswell: no AVX-512, no VNNI).

    .venv/bin/python bench/lowering.py            # prints the Markdown section
    .venv/bin/python bench/lowering.py --write    # and replaces it in BENCHMARKS.md
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from compile import Case, cases, latency_ratio
from sections import arguments, markers, publish

import rcompile
from rcompile.api import load_source
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.exporter import finish_model, write_model
from rcompile.lowering import lower
from rcompile.sessions import open_session
from rcompile.verify import verify

BEGIN, END = markers("lowering.py")
THREADS = 2
VERIFY_SAMPLES = 32


def top1(model: onnx.ModelProto, data) -> float:
    session = open_session(model)
    hits = sum(
        int(np.sum(session.run(None, b.inputs)[0].argmax(1) == b.labels)) for b in data.batches(64)
    )
    return hits / data.count


def deviations(model: onnx.ModelProto, data) -> str:
    """`verify`'s differing values per optimisation level, e.g. `0 / 0 / 12 / 12 of 32,000`."""
    result = verify(model, data, VERIFY_SAMPLES, 8, "bench")
    runs = [d for d in result.deviations if d.provider == "CPUExecutionProvider"]
    worst = max(d.max_steps for d in runs)
    text = " / ".join(f"{d.differing:,}" for d in runs) + f" of {runs[0].values:,}"
    return text + (f", by up to {worst:g} steps" if worst else "")


def emulated(model_path: Path, data_path: Path) -> str | None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        return None
    command = [
        qemu,
        "-cpu",
        "Haswell",
        sys.executable,
        "-m",
        "rcompile",
        "verify",
        str(model_path),
        "--data",
        str(data_path),
        "--count",
        "200",
        "--json",
    ]
    run = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1200)
    runs = json.loads(run.stdout)["runs"]
    return " / ".join(f"{r['differing']:,}" for r in runs) + f" of {runs[0]['values']:,}"


def run_case(case: Case, work: Path) -> dict:
    source = load_source(case.model)[0]
    preprocessing = parse_preprocessing(case.preprocess)
    data = open_data(case.test, input_specs(source), preprocessing)
    result = rcompile.compile(case.model, "dfp8", case.calib, preprocessing=preprocessing)
    inputs = next(iter(data.batches(case.timing_batch))).inputs
    rows = {"FP32": {"top1": top1(source, data), "latency": 1.0, "verify": ""}}
    for target in ("sim", "qdq"):
        model = result.model if target == "sim" else lower(source, result.plan, "qdq").model
        model = finish_model(model, {**_metadata(result.model), "rcompile.target": target})
        path = write_model(model, work / f"{case.name}_{target}.onnx")
        row = {
            "top1": top1(model, data),
            "latency": latency_ratio(path, case.model, inputs, threads=THREADS),
            "verify": deviations(model, data),
        }
        if case.name == "LeNet-5":
            row["emulated"] = emulated(path, case.test)
        rows[f"dfp8 {target}"] = row
    return {"rows": rows, "samples": data.count}


def _metadata(model: onnx.ModelProto) -> dict:
    return {p.key: p.value for p in model.metadata_props if p.key != "rcompile.version"}


def section(results: dict) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        BEGIN,
        "## The two lowerings (`bench/lowering.py`)",
        "",
        "Command: `.venv/bin/python bench/lowering.py --write`. Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores ({cpu}), Python "
        f"{platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}.",
        f"dfp8, per channel. Latency: one batch on {THREADS} onnxruntime threads relative to FP32",
        "(median of 15 ratios, runs alternating with FP32's). `verify`: values that differ from",
        f"the reference datapath on the first {VERIFY_SAMPLES} held-out samples at DISABLE_ALL /",
        "BASIC / EXTENDED / ALL on this CPU; for LeNet-5 also on 200 test images under QEMU's",
        "Haswell (AVX2, no AVX-512 or VNNI), where onnxruntime's fused u8s8 kernels saturate.",
        "",
    ]
    for name, case in results.items():
        lines += [
            f"### {name} (top-1 on {case['samples']} held-out samples)",
            "",
            "| model | top-1 | latency vs FP32 | `verify` here | `verify` on AVX2 (QEMU) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label, row in case["rows"].items():
            emulated_text = row.get("emulated") or ("" if label == "FP32" else "not run")
            lines.append(
                f"| {label} | {100 * row['top1']:.2f} % | {row['latency']:.2f} "
                f"| {row['verify']} | {emulated_text if name == 'LeNet-5' else ''} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = arguments(__doc__)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results = {case.name: run_case(case, work) for case in cases(work)}
    text = section(results)
    publish("lowering.py", text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
