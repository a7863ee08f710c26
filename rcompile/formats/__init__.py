"""The three number formats of rcompile, each a frozen value with a NumPy reference quantizer.

`DFP` (dynamic fixed point), `MiniFloat` (mini floating point) and `Pow2` (power-of-two
weights). Each has `name` (parsed back by `parse_format`), `bit_width`, `max`, `min` and
`quantize(x, seed=None)`, the definition that the ONNX functions and CUDA kernels match
bit for bit.
"""

from rcompile.formats.dfp import DFP
from rcompile.formats.minifloat import MiniFloat
from rcompile.formats.names import FORMAT_GRAMMAR, Format, parse_format
from rcompile.formats.pow2 import Pow2

__all__ = ["DFP", "FORMAT_GRAMMAR", "Format", "MiniFloat", "Pow2", "parse_format"]
