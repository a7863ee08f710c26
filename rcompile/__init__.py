"""rcompile: compile FP32 ONNX models into bit-true models of fixed-point, mini-float and
power-of-two accelerators."""

__version__ = "0.1.0"

__all__ = ["CompileResult", "__version__", "compile"]


def __getattr__(name: str):
    """`compile` and `CompileResult` load the pipeline (onnx, onnxruntime) on first use, so
    that the command line starts, and answers Ctrl-C, before those imports."""
    if name in ("compile", "CompileResult"):
        from rcompile import api

        return getattr(api, name)
    raise AttributeError(f"module 'rcompile' has no attribute {name!r}")
