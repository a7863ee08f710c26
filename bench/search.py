"""Bit-width search benchmark: `rcompile search` on LeNet-5 and EfficientNet-Lite0.

Each model's labelled data is split three ways: calibration, a search set (the metric the
search keeps within the margin) and a kept-aside set the search never sees, on which the
chosen model is scored honestly. Ristretto's mode and the per-layer mode run in one process;
the per-layer mode again with 2 local worker processes and on a local Ray instance with 2
actors (when ray is installed), which must choose the same model. Reported: widths chosen,
top-1 on both sets, the upper bound of the drop the search judged, total parameter bits
against uniform dfp8, evaluations, wall time, and the cost of one evaluation relative to one
FP32 evaluation of the search set.

    .venv/bin/python bench/search.py [--write]
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from sections import arguments, markers, publish

import rcompile
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.formats import parse_format
from rcompile.search import search

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BEGIN, END = markers("search.py")
MARGIN = 1.0
# (mode, worker processes, Ray address)
RUNS = [("ristretto", 1, None), ("layerwise", 1, None), ("layerwise", 2, None)]
if importlib.util.find_spec("ray") is not None:
    RUNS.append(("layerwise", 2, "local"))


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    calib: Path
    search_set: Path
    kept: Path
    preprocess: str
    split: str


def lenet(work: Path) -> Case:
    test = np.load(ROOT / "models" / "mnist_test.npz")
    for name, part in (("search", slice(0, 500)), ("kept", slice(500, 1000))):
        np.savez(work / f"mnist_{name}.npz", input=test["input"][part], labels=test["labels"][part])
    return Case(
        "LeNet-5",
        ROOT / "models" / "lenet5.onnx",
        ROOT / "models" / "mnist_calib.npz",
        work / "mnist_search.npz",
        work / "mnist_kept.npz",
        "unit",
        "calibration: 500 training images; search: test images 0-499; kept aside: 500-999",
    )


def efficientnet(work: Path) -> Case | None:
    images = SHARED / "data" / "imagenet-sample-dev"
    model = SHARED / "models" / "efficientnet_lite0.onnx"
    if not (images.is_dir() and model.is_file()):
        return None
    files = sorted(images.glob("*.jpg"))
    folders = {"calib": files[:100], "search": files[100:300], "kept": files[300:500]}
    for name, chosen in folders.items():
        (work / name).mkdir()
        for file in chosen:
            os.symlink(file, work / name / file.name)
    return Case(
        "EfficientNet-Lite0",
        model,
        work / "calib",
        work / "search",
        work / "kept",
        "inception",
        "calibration: sorted images 0-99; search: 100-299; kept aside: 300-499",
    )


def top1(model: onnx.ModelProto | Path, data_path: Path, preprocess: str) -> float:
    loaded = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    data = open_data(data_path, input_specs(loaded), parse_preprocessing(preprocess))
    session = ort.InferenceSession(loaded.SerializeToString(), providers=["CPUExecutionProvider"])
    hits = sum(
        int(np.sum(session.run(None, b.inputs)[0].argmax(1) == b.labels)) for b in data.batches(50)
    )
    return 100 * hits / data.count


def widths(plan: dict) -> str:
    """How many weight tensors and activation tensors got each family and width."""
    weights = Counter(_kind(layer["weights"][0]) for layer in plan["layers"] if layer["weights"])
    activations = Counter(
        _kind(name) for layer in plan["layers"] for name in (*layer["inputs"], layer["output"])
    )
    return "; ".join(
        ", ".join(f"{count}x {kind}" for kind, count in sorted(counter.items())) + f" {role}"
        for counter, role in ((weights, "weights"), (activations, "activations"))
    )


def _kind(name: str) -> str:
    if name == "fp32":
        return name
    fmt = parse_format(name)
    family = type(fmt).__name__.lower()
    return f"{family}{fmt.bit_width}"


def run(case: Case) -> list[dict]:
    preprocessing = parse_preprocessing(case.preprocess)
    uniform = rcompile.compile(case.model, "dfp8", case.calib, preprocessing=preprocessing)
    uniform_bits = uniform.report.totals()["parameter_memory_bits"]
    fp32_kept = top1(case.model, case.kept, case.preprocess)
    results = []
    for mode, jobs, ray in RUNS:
        start = time.perf_counter()
        found = search(
            case.model,
            case.calib,
            case.search_set,
            MARGIN,
            mode=mode,
            preprocessing=preprocessing,
            jobs=jobs,
            ray=ray,
        )
        seconds = time.perf_counter() - start
        report = found.result.report.as_dict()
        details = report["search"]
        results.append(
            {
                "mode": mode,
                "workers": f"{jobs} Ray actors" if ray else f"{jobs} process" + "es" * (jobs > 1),
                "widths": widths(found.result.plan.as_dict()),
                "fp32_search": details["fp32_score"],
                "search": details["chosen_score"],
                "bound": details["chosen_drop_bound"],
                "fp32_kept": fp32_kept,
                "kept": top1(found.result.model, case.kept, case.preprocess),
                "bits": report["totals"]["parameter_memory_bits"] / uniform_bits,
                "evaluations": details["evaluations"],
                "seconds": seconds,
                "ratio": details["evaluation_cost_vs_fp32"],
                "model": found.result.model.SerializeToString(),
            }
        )
    return results


def section(results: dict[str, tuple[Case, list[dict]]]) -> str:
    lines = [
        BEGIN,
        "## Bit-width search (`bench/search.py`)",
        "",
        "Command: `.venv/bin/python bench/search.py --write`. Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} "
        f"on {os.cpu_count()} cores ({platform.machine()}), onnxruntime {ort.__version__}. Margin "
        f"{MARGIN:g} point of top-1, judged on the 0.9 upper confidence bound of the drop on the "
        "search set (paired bootstrap); scheme dfp; cost: parameter memory; default budget "
        '(200). "bound" is that upper bound for the chosen model; "bits vs dfp8" its '
        'parameter memory over uniform per-channel dfp8\'s; "evaluation cost" one '
        "candidate's scoring time over one FP32 scoring of the search set (median and maximum); "
        '"same model" whether the written model is byte for byte the one-process per-layer '
        "run's.",
        "",
    ]
    for name, (case, rows) in results.items():
        reference = next(r["model"] for r in rows if r["mode"] == "layerwise")
        lines += [
            f"### {name} ({case.split})",
            "",
            "| mode | workers | widths chosen | top-1 search (FP32) | bound | "
            "top-1 kept aside (FP32) | bits vs dfp8 | evaluations | wall time | "
            "evaluation cost vs FP32 | same model |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            same = "yes" if row["model"] == reference else "no"
            lines.append(
                f"| {row['mode']} | {row['workers']} | {row['widths']} "
                f"| {row['search']:.2f} % ({row['fp32_search']:.2f} %) | {row['bound']:.2f} "
                f"| {row['kept']:.2f} % ({row['fp32_kept']:.2f} %) | {row['bits']:.3f} "
                f"| {row['evaluations']} | {row['seconds']:.0f} s "
                f"| {row['ratio']['median']:.2f} median, {row['ratio']['max']:.2f} max "
                f"| {same if row['mode'] == 'layerwise' else '-'} |"
            )
        lines.append("")
    return "\n".join([*lines, END])


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--only", choices=("lenet", "efficientnet"), help="run one model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cases = [] if args.only == "efficientnet" else [lenet(work)]
        if args.only != "lenet":
            cases.append(efficientnet(work))
        results = {c.name: (c, run(c)) for c in cases if c is not None}
    text = section(results)
    publish("search.py", text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
