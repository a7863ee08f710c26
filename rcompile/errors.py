"""Typed errors. A `UserError` is the user's to fix: the CLI prints its message as one line and
exits with status 1. Anything else escaping the library is a bug of ours (status 2)."""


class UserError(Exception):
    """A problem with the user's input; the message names it and, where possible, the fix."""


class ModelImportError(UserError):
    """The model file cannot be read, checked or converted."""


class CalibrationError(UserError):
    """The calibration or evaluation data cannot be used with the model."""


class SchemeError(UserError):
    """The quantization scheme or a per-layer override is not valid."""
