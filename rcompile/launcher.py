"""The `rcompile` command's entry point: imports the CLI (seconds of onnx, onnxruntime and
typer) only once Ctrl-C is answered the way the CLI answers it."""

from __future__ import annotations

import os
import sys

INTERRUPTED = 130


def run() -> None:
    try:
        from rcompile.cli import main
    except KeyboardInterrupt:
        print("rcompile: interrupted", file=sys.stderr)
        _leave(INTERRUPTED)
    status = main()
    if status == INTERRUPTED:
        _leave(status)
    sys.exit(status)


def _leave(status: int) -> None:
    """Exit at once after Ctrl-C was answered: Python's own exit once ended the process by
    SIGINT (status -2 instead of 130) after the message was printed, on a loaded machine
    (why was not found; Python re-raises an interrupt it counts as unhandled)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
