"""Learned rounding, layer by layer (AdaRound: Nagel et al. 2020, "Up or Down? Adaptive
Rounding for Post-Training Quantization").

Rounding every weight to its nearest value minimises each weight's own error, not the error
of the layer's output. Training the whole network on a hundred images overfits them; asking
each weight only whether it goes to the format value below or above it, so that the layer
reproduces its FP32 output from the input the quantized network really gives it, does not
(each layer's answer is fitted on every output position of every image).

For each layer of the plan, in graph order:

1. the student's input to the layer (the layers before it already rounded, activations
   quantized) and the FP32 teacher's output of the layer, on every training sample, from one
   forward pass of each model over all samples;
2. per weight a share h in [0, 1] (a rectified sigmoid) of the way from the value below to
   the value above (`rcompile.finetune.neighbours`); Adam lowers the squared error of the
   layer's output (summed over channels, averaged over samples and positions) plus
   `REGULARISATION` times the sum of 1 - |2h - 1|^beta, with beta annealed from 20 to 2 after
   a warm-up, which drives every h to 0 or 1;
3. each weight takes the value below or above (h >= 1/2).

Biases stay as compiled (bias correction set them for the expected error); end-to-end
training afterwards moves them. Matching each channel's mean error on the training images
instead was tried and hurt: on EfficientNet-Lite0 it lowered every layer's own error but
grew the distillation loss from 0.38 to 5.5 through the last blocks.

Rounding each inverted-residual block's three layers together against the block's output
(BRECQ: Li et al. 2021) was tried too and left out: on EfficientNet-Lite0 dfp:w4a8, 400
steps, 80 unlabelled images, it scored 77.0 % top-1 on 400 unseen images where layer by layer
scored 78.2 % with the same steps and images, and it took 53 minutes on 2 CPU cores, most of
them in the backward passes through the first blocks' 112 x 112 maps (layer by layer: about
6 minutes at the default 300 steps).

Stored codes, formats and storage types stay as they are: both choices are values of the
weight's format within the bounds its stored codes hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from rcompile.finetune.graph import QuantizedGraph, Shadow, Step, along, float_arrays
from rcompile.finetune.neighbours import neighbours_per_channel
from rcompile.progress import progress_bar

STRETCH = (-0.1, 1.1)
"""The sigmoid is stretched to this interval and clipped to [0, 1], so h reaches 0 and 1."""

REGULARISATION = 0.01
LEARNING_RATE = 0.01
WARM_UP = 0.2
"""The share of each layer's steps before the regulariser starts."""

BETA = (20.0, 2.0)


@dataclass(frozen=True)
class LayerRounding:
    """What learned rounding did to one layer: its weights, how many took the other value
    than the nearest one, the output error on the training samples (relative to the
    teacher's mean square) with nearest rounding and with the learned one, and the time."""

    layer: str
    weights: int
    changed: int
    error_nearest: float
    error_learned: float
    seconds: float


def learn_rounding(
    student: QuantizedGraph,
    teacher: QuantizedGraph,
    inputs: dict[str, np.ndarray],
    steps: int,
    batch_size: int,
    seed: int,
    show_progress: bool = False,
) -> list[LayerRounding]:
    """Round the student's weights layer by layer (see the module's docstring); the student
    is left holding the chosen values as its shadow weights."""
    torch.use_deterministic_algorithms(True)
    by_layer = {
        (s.layer, s.role): (s, w) for s, w in zip(student.shadows, student.weights, strict=True)
    }
    layers = [
        step.node.name
        for step in student.steps
        if (step.node.name, "weights") in by_layer and step.node.name in teacher.layer_outputs
    ]
    device = next(iter(student.constants.values())).device
    tensors = float_arrays(inputs, device)
    quantized, fp32 = _Run(student, tensors), _Run(teacher, tensors)
    results = []
    with progress_bar("learning rounding", len(layers) * steps, show_progress) as advance:
        for index, layer in enumerate(layers):
            layer_steps = student.layer_steps(layer)
            x = quantized.value(layer_steps[0].node.input[0])
            y = fp32.value(teacher.layer_outputs[layer])
            weights = by_layer[(layer, "weights")]
            bias = by_layer.get((layer, "bias"))
            rounder = _LayerRounder(student, layer_steps, weights, bias, x, y)
            results.append(rounder.learn(steps, batch_size, seed + index, advance))
            quantized.refresh(weights[0])
    return results


class _Run:
    """A forward pass over all samples at once, advanced step by step on demand and freeing
    each value after its last use: one pass of each model serves every layer."""

    def __init__(self, graph: QuantizedGraph, inputs: dict[str, torch.Tensor]) -> None:
        self.graph, self.next = graph, 0
        with torch.no_grad():
            self.values = graph.start_values(inputs, None)
        self.last_use = {}
        for index, step in enumerate(graph.steps):
            for name in step.node.input:
                self.last_use[name] = index

    def value(self, name: str) -> torch.Tensor:
        with torch.no_grad():
            while name not in self.values:
                step = self.graph.steps[self.next]
                inputs = [self.values[n] if n else None for n in step.node.input]
                self.values.update(zip(step.node.output, step(inputs), strict=False))
                for n in step.node.input:
                    if self.last_use.get(n) == self.next and n not in self.graph.constants:
                        self.values.pop(n, None)
                self.next += 1
        return self.values[name]

    def refresh(self, shadow: Shadow) -> None:
        """Take the graph's current value of this shadow tensor."""
        with torch.no_grad():
            for other, weight in zip(self.graph.shadows, self.graph.weights, strict=True):
                if other is shadow:
                    self.values[shadow.value] = self.graph.quantized_value(shadow, weight, None)


class _LayerRounder:
    """One layer's rounding problem: its weights' two choices, its cached input and target."""

    def __init__(
        self,
        graph: QuantizedGraph,
        steps: list[Step],
        weights: tuple[Shadow, torch.nn.Parameter],
        bias: tuple[Shadow, torch.nn.Parameter] | None,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> None:
        self.graph, self.steps, self.x, self.y = graph, steps, x, y
        self.shadow, self.parameter = shadow, parameter = weights
        self.bias = bias
        self.channel = 1 if steps[0].node.op_type in ("Conv", "ConvTranspose") else -1
        axis = shadow.axis % max(parameter.dim(), 1)
        with torch.no_grad():
            unit = graph.unit_tensor(shadow)
            value = parameter * unit
            below, above = neighbours_per_channel(value, shadow.formats, axis)
            if shadow.limits is not None:
                low, high = (along(limit, value, axis) for limit in shadow.limits)
                below = torch.minimum(torch.maximum(below, low), high)
                above = torch.minimum(torch.maximum(above, low), high)
            self.value, self.below, self.gap = value, below, above - below
            self.nearest = graph.quantized_value(shadow, parameter, None)
            share = torch.where(self.gap > 0, (value - below) / self.gap.clamp(min=1e-30), 0.0)
            low, high = STRETCH
            share = ((share.clamp(0, 1) - low) / (high - low)).clamp(1e-4, 1 - 1e-4)
            self.logits = torch.nn.Parameter(torch.log(share / (1 - share)))
            self.bias_value = (
                graph.quantized_value(bias[0], bias[1], None) if bias is not None else None
            )

    def _share(self) -> torch.Tensor:
        low, high = STRETCH
        return torch.clamp(torch.sigmoid(self.logits) * (high - low) + low, 0.0, 1.0)

    def _output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        known = {self.steps[0].node.input[0]: x, self.shadow.value: weight}
        if self.bias is not None:
            known[self.bias[0].value] = self.bias_value
        for step in self.steps:
            inputs = [
                known[n] if n in known else self.graph.constants[n] if n else None
                for n in step.node.input
            ]
            known.update(zip(step.node.output, step(inputs), strict=False))
        return known[self.steps[-1].node.output[0]]

    def _error(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target).square().sum(self.channel).mean()

    def _batched(self, weight: torch.Tensor, batch: int):
        """The layer's output with `weight` and its target, a batch of samples at a time."""
        with torch.no_grad():
            for start in range(0, len(self.x), batch):
                part = slice(start, start + batch)
                yield self._output(self.x[part], weight), self.y[part]

    def _relative(self, weight: torch.Tensor, batch: int) -> float:
        error = sum(float(self._error(o, t)) * len(t) for o, t in self._batched(weight, batch))
        scale = float(self.y.square().sum(self.channel).mean())
        return error / len(self.x) / max(scale, 1e-30)

    def learn(self, steps: int, batch: int, seed: int, advance) -> LayerRounding:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam([self.logits], lr=LEARNING_RATE)
        warm = int(WARM_UP * steps)
        for step in range(steps):
            chosen = torch.randint(len(self.x), (min(batch, len(self.x)),), generator=generator)
            chosen = chosen.to(self.x.device)
            share = self._share()
            weight = self.below + share * self.gap
            loss = self._error(self._output(self.x[chosen], weight), self.y[chosen])
            if step >= warm:
                progress = (step - warm) / max(steps - warm, 1)
                beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - progress)
                loss = loss + REGULARISATION * (1 - (2 * share - 1).abs().pow(beta)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            advance(1)
        with torch.no_grad():
            learned = self.below + (self._share() >= 0.5).to(self.below.dtype) * self.gap
            result = LayerRounding(
                self.steps[0].node.name,
                learned.numel(),
                int((learned != self.nearest).sum()),
                self._relative(self.nearest, batch),
                self._relative(learned, batch),
                time.perf_counter() - start,
            )
            self.parameter.copy_(self._shadow_for(learned))
        return result

    def _shadow_for(self, learned: torch.Tensor) -> torch.Tensor:
        """Shadow weights that quantize to the learned values, as near their boundaries as
        the FP32 ones: the FP32 value where learned rounding kept the nearest value, else
        just past the middle of the gap towards the learned one (where the format's
        boundary is not the middle, the learned value itself), so that end-to-end training
        can still turn a weight back with a small step."""
        unit = self.graph.unit_tensor(self.shadow)
        upward = (learned > self.nearest).to(learned.dtype)
        middle = self.below + (0.49 + 0.02 * upward) * self.gap
        nudged = torch.where(learned == self.nearest, self.value, middle) / unit
        holds = self.graph.quantized_value(self.shadow, nudged, None) == learned
        return torch.where(holds, nudged, learned / unit)
