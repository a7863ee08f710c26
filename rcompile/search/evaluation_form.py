"""The form of a candidate that the search scores: the written sim model's values with fewer
passes over the data, for a session that disables onnxruntime's WeightBiasQuantization
(`DISABLED_OPTIMIZERS`).

- Layers with FP32 weights keep QuantizeLinear/DequantizeLinear input quantizers instead of
  the float-arithmetic ones (six elementwise passes each).
- Quantized parameters are float constants, the bias inside the layer: onnxruntime runs its
  fastest convolutions only on constant weights, and no layer fuses into integer kernels,
  whose results depend on the CPU.
- A narrow output that a clamp alone reads within its range is not clipped to its width.
- As in sim models, an input already on its format's grid is not quantized again, and a
  clamp of values within its bounds becomes an Identity.

The products and their sum are float32 arithmetic: bit for bit the sim model's, and so the
reference datapath's, where float32 sums every product exactly (each partial sum within
2**24 steps of the product grid, as with narrow widths). A sim model sums the other layers
wider (`rcompile.lowering.wide_layers`), so there the two may differ in the last bits;
tests compare both with the reference.
"""

from __future__ import annotations

import onnx

from rcompile.lowering.rewrite import Form, Rewritten, rewrite
from rcompile.lowering.values import QuantizedValues
from rcompile.onnx_ops.specialise import specialise
from rcompile.plan import Plan

# onnxruntime's WeightBiasQuantization rounds the float weights of a layer fed by a
# DequantizeLinear to int8.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)

EVALUATION = Form(
    elide=True,
    float_parameters=True,
    unclipped_clamped_outputs=True,
    linear_float_layer_inputs=True,
)


def evaluation_form(
    model: onnx.ModelProto, plan: Plan, values: QuantizedValues | None = None
) -> Rewritten:
    """`model` with `plan` applied in the evaluation form, its quantizers' bodies folded in
    (`specialise`): onnxruntime builds each candidate's session faster."""
    rewritten = rewrite(model, plan, EVALUATION, values)
    specialise(rewritten.model)
    return rewritten
