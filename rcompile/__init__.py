"""rcompile: compile FP32 ONNX models into bit-true models of fixed-point, mini-float and
power-of-two accelerators."""

__version__ = "0.1.0"

from rcompile.api import CompileResult, compile

__all__ = ["CompileResult", "__version__", "compile"]
