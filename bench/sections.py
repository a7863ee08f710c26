"""BENCHMARKS.md holds one section per benchmark script between HTML comment markers; each
script replaces its own section and leaves the others alone."""

from __future__ import annotations

import argparse
import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def markers(script: str) -> tuple[str, str]:
    return f"<!-- bench/{script}:begin -->", f"<!-- bench/{script}:end -->"


def replace_section(script: str, text: str) -> None:
    """Put `text` (which starts and ends with the script's markers) into BENCHMARKS.md."""
    begin, end = markers(script)
    current = BENCHMARKS.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(current):
        BENCHMARKS.write_text(pattern.sub(lambda _: text, current))
    else:
        BENCHMARKS.write_text(f"{current}\n{text}\n")


def arguments(doc: str) -> argparse.ArgumentParser:
    """A bench script's command line: its docstring's first line, and `--write`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    return parser


def publish(script: str, text: str, write: bool) -> None:
    """Print a script's section, and with `write` put it into BENCHMARKS.md."""
    print(text)
    if write:
        replace_section(script, text)


def machine() -> str:
    """`2 cores (AMD EPYC, x86_64, AVX2 without VNNI)`: the CPU, and the vector extensions
    that pick onnxruntime's integer kernels (on AVX2 without VNNI they saturate sums of
    product pairs, so fused int8 models score differently there)."""
    model, flags = platform.processor() or "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    parts = [model, platform.machine()]
    if "avx2" in flags:
        vnni = {"avx512_vnni", "avx_vnni"} & flags
        parts.append("AVX2 with VNNI" if vnni else "AVX2 without VNNI")
    return f"{os.cpu_count()} cores ({', '.join(parts)})"
