"""Typed errors. A `UserError` is the user's to fix: the CLI prints its message as one line and
exits with status 1. Anything else escaping the library is a bug of ours (status 2)."""

import sys


class UserError(Exception):
    """A problem with the user's input; the message names it and, where possible, the fix."""


class ModelImportError(UserError):
    """The model file cannot be read, checked or converted."""


class CalibrationError(UserError):
    """The calibration or evaluation data cannot be used with the model."""


class ReferenceError(UserError):
    """The model cannot be run by the reference datapath."""


class SchemeError(UserError):
    """The quantization scheme or a per-layer override is not valid."""


def warn(message: str) -> None:
    """Tell the user, on one line of stderr, about something rcompile worked around."""
    print(f"rcompile: warning: {message}", file=sys.stderr)
