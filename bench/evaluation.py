"""What one search evaluation costs, by kind of candidate, on LeNet-5 and EfficientNet-Lite0.

The search's per-evaluation cost depends on how the evaluation form runs a candidate:
weight-only probes run as FP32 (float constants), candidates of 8 bits or fewer fuse into
onnxruntime's integer kernels (where the evaluator timed them faster than float ones, which
it does once per model), and wider widths and probes with FP32 weights and quantized
activations run float convolutions with the blocked rounding. Each row scores one
configuration with the search's evaluator right after one FP32 scoring of the same data, five
times, and reports the median of the five ratios: these shared machines change speed from one
second to the next, and a ratio of neighbouring timings drifts least. Same data splits as
bench/search.py.

    .venv/bin/python bench/evaluation.py [--write]
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime as ort
from search import Case, efficientnet, lenet
from sections import arguments, markers, publish

from rcompile.api import load_source
from rcompile.data import parse_preprocessing
from rcompile.plan import Override
from rcompile.scheme import parse_rule, parse_scheme
from rcompile.search import prepare_evaluator
from rcompile.search.evaluator import Configuration, Evaluator

BEGIN, END = markers("evaluation.py")
REPEATS = 5
FP32 = parse_rule("fp32")
ACTIVATIONS_FP32 = Override("*", input=FP32, output=FP32)
BLOCKED = "float, blocked rounding"
# (label, what onnxruntime makes of it, scheme, overrides)
CANDIDATES = (
    (
        "CONV weights dfp8, rest FP32",
        "float, as FP32",
        "dfp8",
        (ACTIVATIONS_FP32, Override("Gemm", weights=FP32)),
    ),
    ("activations dfp8, weights FP32", BLOCKED, "dfp8", (Override("*", weights=FP32),)),
    ("dfp8", BLOCKED, "dfp8", ()),
    ("dfp:w8a6", BLOCKED, "dfp:w8a6", ()),
    ("dfp:w10a6", BLOCKED, "dfp:w10a6", ()),
    ("dfp:w16a8", BLOCKED, "dfp:w16a8", ()),
    ("dfp16", BLOCKED, "dfp16", ()),
)


def run(case: Case) -> tuple[float, list[tuple[str, str, float]]]:
    source, _ = load_source(case.model)
    evaluator, _ = prepare_evaluator(
        source, case.calib, case.search_set, preprocessing=parse_preprocessing(case.preprocess)
    )
    rows = []
    for label, kind, scheme, overrides in CANDIDATES:
        configuration = Configuration(label, parse_scheme(scheme), overrides)
        ratios = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            Evaluator.outputs_of(evaluator.data.model, evaluator.data)
            fp32_seconds = time.perf_counter() - start
            ratios.append(evaluator.evaluate(configuration).seconds / fp32_seconds)
        rows.append((label, kind, statistics.median(ratios)))
    return evaluator.fp32_seconds, rows


def section(results: dict[str, tuple[float, list]]) -> str:
    lines = [
        BEGIN,
        "## Cost of one search evaluation (`bench/evaluation.py`)",
        "",
        "Command: `.venv/bin/python bench/evaluation.py --write`. Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores "
        f"({platform.machine()}), onnxruntime {ort.__version__}. One configuration scored by "
        "the search's evaluator (plan, rewrite in the evaluation form, session, run) over the "
        "FP32 scoring (session, run) of the search set just before it; the median of "
        f"{REPEATS} such ratios. Search sets as in bench/search.py.",
        "",
        "| model | candidate | how it runs | cost vs FP32 |",
        "| --- | --- | --- | --- |",
    ]
    for name, (fp32_seconds, rows) in results.items():
        for label, kind, ratio in rows:
            lines.append(f"| {name} (FP32 {fp32_seconds:.3f} s) | {label} | {kind} | {ratio:.2f} |")
    return "\n".join([*lines, "", END])


def main() -> int:
    parser = arguments(__doc__)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cases = [case for case in (lenet(work), efficientnet(work)) if case is not None]
        results = {case.name: run(case) for case in cases}
    text = section(results)
    publish("evaluation.py", text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
