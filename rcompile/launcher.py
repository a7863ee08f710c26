"""The `rcompile` command's entry point: imports the CLI (seconds of onnx, onnxruntime and
typer) only once Ctrl-C is answered the way the CLI answers it."""

from __future__ import annotations

import sys

INTERRUPTED = 130


def run() -> None:
    try:
        from rcompile.cli import main
    except KeyboardInterrupt:
        print("rcompile: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    sys.exit(main())
