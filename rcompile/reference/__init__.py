"""The reference datapath: the meaning of a compiled model.

NumPy, integer codes and exact (int64) accumulators for every planned layer, the format's
rounding and saturation on its output, float32 for the ops outside the layer model. The
ONNX lowerings, the ONNX function bodies and the CUDA kernels are tested against it;
`rcompile verify` compares a model's onnxruntime runs with it; `onnx.reference` runs the
`ai.rcompile` quantizer ops with the kernels in `rcompile.reference.ops`.
"""

from rcompile.reference.datapath import Reference, ReferenceError
from rcompile.reference.ops import QUANTIZERS

__all__ = ["QUANTIZERS", "Reference", "ReferenceError"]
