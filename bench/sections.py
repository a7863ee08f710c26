"""BENCHMARKS.md holds one section per benchmark script between HTML comment markers; each
script replaces its own section and leaves the others alone."""

from __future__ import annotations

import argparse
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
