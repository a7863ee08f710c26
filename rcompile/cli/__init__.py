"""The command-line interface: a thin typer layer over the Python API.

    rcompile net.onnx -o net_q.onnx --scheme dfp8 --calib images/
    rcompile inspect net.onnx
    rcompile eval net_q.onnx --data val/ --reference net.onnx
    rcompile verify net_q.onnx --data images/

Exit status: 0 success, 1 a user error (one line on stderr; --debug shows the traceback),
2 an internal error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
import traceback

import typer

from rcompile.cli import compile, finetune, inspect, search, vectors, verify  # noqa: F401 - registers the commands
from rcompile.cli.app import app
from rcompile.errors import UserError
from rcompile.launcher import INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0, 1 user error, 2 internal error)."""
    args = (sys.argv[1:] if argv is None else argv) or ["--help"]
    debug = "--debug" in args
    try:
        status = app(args=args, prog_name="rcompile", standalone_mode=False)
    except (UserError, typer.TyperException) as error:
        if debug:
            traceback.print_exc()
        message = error.format_message() if isinstance(error, typer.TyperException) else str(error)
        print(f"rcompile: error: {message}", file=sys.stderr)
        return 1
    except (typer.Abort, KeyboardInterrupt):
        status = INTERRUPTED
    except Exception as error:  # a bug of ours: say so, and how to see it
        if debug:
            traceback.print_exc()
        first_line = (str(error).strip().splitlines() or [""])[0]
        print(
            f"rcompile: internal error: {type(error).__name__}: {first_line} (run with --debug "
            "for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 2
    if status == INTERRUPTED:  # typer turns Ctrl-C into this exit status
        print("rcompile: interrupted", file=sys.stderr)
    return status if isinstance(status, int) else 0
