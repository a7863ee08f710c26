"""The number formats of rcompile, each a frozen value with a NumPy reference quantizer.

`DFP` (dynamic fixed point), `MiniFloat` (mini floating point), `Pow2` (power-of-two
weights) and `APoT` (two-term power-of-two weights, for weights only: it has no runtime
quantizer op). Each has `name` (parsed back by `parse_format`), `bit_width`, `max`, `min` and
`quantize(x, seed=None)`, the definition that the ONNX functions and CUDA kernels match
bit for bit.
"""

from rcompile.formats.apot import APoT
from rcompile.formats.dfp import DFP
from rcompile.formats.minifloat import MiniFloat
from rcompile.formats.names import FORMAT_GRAMMAR, Format, parse_format
from rcompile.formats.pow2 import Pow2

__all__ = ["DFP", "FORMAT_GRAMMAR", "APoT", "Format", "MiniFloat", "Pow2", "parse_format"]
