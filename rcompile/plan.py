"""Plan: for every quantized tensor, its format and parameters.

The scheme gives the rules, the calibrated ranges their inputs, and per-layer overrides
(keys are node names or glob patterns over node names and op types) replace rules or pin
formats, the way a Ristretto user edits the prototxt.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np

from rcompile.activation_fit import fit_activation, parse_activation_fit
from rcompile.errors import SchemeError
from rcompile.formats import DFP, APoT, Format, MiniFloat, Pow2, parse_format
from rcompile.formats.codes import largest_code, step_exponent, step_exponents
from rcompile.passes.calibrate import Range, Statistics, weight_range
from rcompile.passes.layers import Layer
from rcompile.passes.store_weights import families, weight_exponents
from rcompile.scheme import (
    FITS,
    FP32,
    APoTRule,
    DFPRule,
    FixedRule,
    MiniFloatRule,
    Pow2Rule,
    Rule,
    Scheme,
    parse_rule,
)

BIAS_MODES = ("weights", "accumulator")
OVERFLOWS = ("saturate", "wrap")
BIAS_CODE_BITS = 24
ACCUMULATOR_BITS = (8, 64)
OVERRIDE_KEYS = (
    "weights",
    "bias",
    "activations",
    "input",
    "output",
    "skip",
    "accumulator",
    "overflow",
)


@dataclass(frozen=True)
class Accumulator:
    """The register a layer's products and bias are summed in: `bits` wide (8..64), and on
    overflow it saturates at its largest codes or wraps around (two's complement). `bits`
    None is an exact register that never overflows, the model of a floating-point datapath
    whose products no 64-bit register holds (bfloat16's span 2**-266 to 2**256)."""

    bits: int | None = 32
    overflow: str = "saturate"

    def __post_init__(self) -> None:
        low, high = ACCUMULATOR_BITS
        if self.bits is not None and (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not low <= self.bits <= high
        ):
            raise SchemeError(
                f"accumulator width must be an integer in [{low}, {high}], got {self.bits!r}"
            )
        if self.overflow not in OVERFLOWS:
            raise SchemeError(f"overflow must be one of {OVERFLOWS}, got {self.overflow!r}")

    @property
    def largest(self) -> float:
        return math.inf if self.bits is None else 2 ** (self.bits - 1) - 1

    def as_dict(self) -> dict:
        return {"bits": self.bits, "overflow": self.overflow}


@dataclass(frozen=True)
class PlanOptions:
    """Choices beyond the scheme; the defaults give the best accuracy for the same hardware.

    `accumulator`: every layer's register; by default 32 bits where its operand codes add up
    to at most 16 bits (8 x 8), else 64 (16-bit and mini-float products), saturating.

    Per-channel weight fl costs one shift per channel. An unsigned activation spends the
    unused sign bit on resolution. The bias is added at the accumulator's width and scale, as
    integer hardware does (`weights`: Ristretto's bias in the weight format). `fit` chooses
    weights' fractional lengths by least quantization error (see `rcompile.scheme.FITS`;
    `ristretto` also gives activations Ristretto's rule); `activation_fit` chooses the
    activations' formats from their calibrated distribution (`rcompile.activation_fit`).
    `bias_correction` moves each layer's bias so that quantizing its weights leaves its
    output channels' means where FP32 has them (`rcompile.passes.bias_correction`).
    `equalization` rescales consecutive convolutions' channels to equal weight ranges first
    (`rcompile.passes.equalize`).
    """

    per_channel: bool = True
    unsigned: bool = True
    bias: str = "accumulator"
    fit: str = "mse"
    activation_fit: str = "max"
    accumulator: Accumulator | None = None
    bias_correction: bool = True
    equalization: bool = False

    def __post_init__(self) -> None:
        if self.bias not in BIAS_MODES:
            raise SchemeError(f"bias mode must be one of {BIAS_MODES}, got {self.bias!r}")
        if self.fit not in FITS:
            raise SchemeError(f"fit must be one of {FITS}, got {self.fit!r}")
        parse_activation_fit(self.activation_fit)

    @property
    def fits_activations(self) -> bool:
        """Whether activation formats read the calibration histograms (not `max`, and not
        Ristretto's rules)."""
        return self.activation_fit != "max" and self.fit != "ristretto"


@dataclass(frozen=True)
class Override:
    """Rules for the layers whose node name or op type matches `pattern`."""

    pattern: str
    weights: Rule | None = None
    bias: Rule | None = None
    input: Rule | None = None
    output: Rule | None = None
    skip: bool | None = None
    accumulator: int | None = None
    overflow: str | None = None
    bias_mode: str | None = None

    def matches(self, layer: Layer) -> bool:
        return any(fnmatch.fnmatchcase(text, self.pattern) for text in (layer.node, layer.op_type))


@dataclass(frozen=True)
class LayerPlan:
    """The formats of one layer: one per activation input, the output, the weights (one, or
    one per output channel) and the bias. None, or no formats, keeps a tensor FP32."""

    layer: Layer
    inputs: tuple[Format | None, ...]
    output: Format | None
    weights: tuple[Format, ...] = ()
    bias: tuple[Format, ...] = ()
    accumulator: Accumulator = Accumulator()

    def as_dict(self) -> dict:
        return {
            "node": self.layer.node,
            "op_type": self.layer.op_type,
            "inputs": [_name(fmt) for fmt in self.inputs],
            "output": _name(self.output),
            "weights": [fmt.name for fmt in self.weights],
            "bias": [fmt.name for fmt in self.bias],
            "weight_axis": self.layer.weight_axis,
            "accumulator": self.accumulator.as_dict(),
        }


@dataclass(frozen=True)
class Plan:
    scheme: str
    layers: tuple[LayerPlan, ...]
    skipped: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "layers": [layer.as_dict() for layer in self.layers],
            "skipped": list(self.skipped),
        }


PLAN_KEY = "rcompile.plan"


# The per-channel format lists of a recorded plan, each packed into one string.
_PACKED = ("weights", "bias")


def plan_record(plan: Plan) -> str:
    """`plan.as_dict()` as a model carries it under `PLAN_KEY`: compact JSON with each
    per-channel format list packed (`_pack`), zlib-compressed, in base64, so that even a
    small network's plan is a small part of its file (the report holds it readable)."""
    entry = plan.as_dict()
    for layer in entry["layers"]:
        for key in _PACKED:
            layer[key] = _pack(layer[key])
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")


def recorded_plan(model) -> dict | None:
    """The plan (`Plan.as_dict`) that a model rcompile wrote carries in its metadata (as plain
    JSON in files that earlier rcompile builds wrote)."""
    entry = next((p.value for p in model.metadata_props if p.key == PLAN_KEY), None)
    if entry is None:
        return None
    if not entry.startswith("{"):
        entry = zlib.decompress(base64.b64decode(entry)).decode()
    plan = json.loads(entry)
    for layer in plan["layers"]:
        for key in _PACKED:
            if isinstance(layer.get(key), str):
                layer[key] = _unpack(layer[key])
    return plan


def _pack(names: list[str]) -> list[str] | str:
    """Names as their common prefix and suffix around the parts that differ, brace-expansion
    style: `dfp8f5, dfp8f4, dfp8f4` is `dfp8f{5,4,4}`, three dfp8f5 are `dfp8f5{,,}`. Format
    names hold no braces or commas, so `_unpack` gives the list back exactly."""
    if not names:
        return names
    prefix = _common_prefix(names)
    rest = [name[len(prefix) :] for name in names]
    suffix = _common_prefix([name[::-1] for name in rest])[::-1]
    middles = [name[: len(name) - len(suffix)] for name in rest]
    return f"{prefix}{{{','.join(middles)}}}{suffix}"


def _common_prefix(names: list[str]) -> str:
    """The longest string every name starts with (the first and last in sorted order share
    just what all share)."""
    first, last = min(names), max(names)
    pairs = zip(first, last, strict=False)
    end = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(first), len(last)))
    return first[:end]


def _unpack(packed: str) -> list[str]:
    prefix, rest = packed.split("{", 1)
    middles, suffix = rest.split("}", 1)
    return [prefix + middle + suffix for middle in middles.split(",")]


def _name(fmt: Format | None) -> str:
    return fmt.name if fmt is not None else "fp32"


@cache
def named_format(name: str) -> Format | None:
    """The format a recorded plan names (`fp32`: none); the inverse of `_name`."""
    return None if name == "fp32" else parse_format(name)


def make_plan(
    layers: list[Layer],
    statistics: Statistics,
    scheme: Scheme,
    options: PlanOptions | None = None,
    overrides: tuple[Override, ...] = (),
) -> Plan:
    """Choose every format of every layer."""
    return Planner(layers, statistics, options).plan(scheme, overrides)


class Planner:
    """Plans configurations of one model, reusing each layer's formats for rules it has seen:
    a search plans hundreds of configurations that differ in a layer or two, and choosing
    per-channel weight formats is the costly part of planning.

    With a `corrector` (`rcompile.passes.bias_correction.BiasCorrector`), each layer's bias is
    corrected for its planned weights and the bias planned from the corrected values, as
    `rcompile.compile` plans after correcting; `corrected_biases` gives a plan's values."""

    def __init__(
        self,
        layers: list[Layer],
        statistics: Statistics,
        options: PlanOptions | None = None,
        corrector: Callable[[Layer, tuple[Format, ...]], np.ndarray | None] | None = None,
    ) -> None:
        self.layers = layers
        self.statistics = statistics
        self.options = options or PlanOptions()
        self._corrector = corrector
        self._layer_plans: dict[tuple[str, Override], LayerPlan] = {}
        self._biases: dict[int, np.ndarray] = {}  # id of a kept LayerPlan -> its bias

    def plan(self, scheme: Scheme, overrides: tuple[Override, ...] = ()) -> Plan:
        _check_overrides_match(self.layers, overrides)
        planned, skipped = [], []
        for layer in self.layers:
            rules = _rules_for(layer, scheme, overrides)
            if rules.skip:
                skipped.append(layer.node)
                continue
            key = (layer.node, rules)
            if key not in self._layer_plans:
                self._layer_plans[key] = self._layer_plan(layer, rules)
            planned.append(self._layer_plans[key])
        return Plan(scheme.name, tuple(planned), tuple(skipped))

    def corrected_biases(self, plan: Plan) -> dict[str, np.ndarray]:
        """The corrected bias of every layer of `plan` (made by this planner) that has one."""
        return {
            layer_plan.layer.bias: self._biases[id(layer_plan)]
            for layer_plan in plan.layers
            if id(layer_plan) in self._biases
        }

    def _layer_plan(self, layer: Layer, rules: Override) -> LayerPlan:
        planned = _layer_plan(layer, self.statistics, rules, self.options)
        bias = self._corrector(layer, planned.weights) if self._corrector else None
        if bias is None:
            return planned
        ranges = {**self.statistics.weights, layer.bias: weight_range(bias.reshape(-1), 0)}
        statistics = replace(self.statistics, weights=ranges)
        planned = _layer_plan(layer, statistics, rules, self.options)
        self._biases[id(planned)] = bias
        return planned


def _rules_for(layer: Layer, scheme: Scheme, overrides: tuple[Override, ...]) -> Override:
    """The scheme's rules with every matching override applied; an exact node name last."""
    rules = Override("*", scheme.weights, None, scheme.activations, scheme.activations, False)
    matching = [o for o in overrides if o.pattern != layer.node and o.matches(layer)]
    matching += [o for o in overrides if o.pattern == layer.node]
    for override in matching:
        changes = {
            key: getattr(override, key)
            for key in (
                *("weights", "bias", "input", "output", "skip", "accumulator", "overflow"),
                "bias_mode",
            )
            if getattr(override, key) is not None
        }
        rules = replace(rules, **changes)
    return rules


def _layer_plan(layer: Layer, statistics: Statistics, rules: Override, options: PlanOptions):
    inputs = tuple(
        _activation(rules.input, statistics, name, options, layer) for name in layer.inputs
    )
    output = _activation(rules.output, statistics, layer.output, options, layer)
    weights = _weights(rules.weights, statistics, layer, options) if layer.weight else ()
    if rules.bias_mode is not None:
        options = replace(options, bias=rules.bias_mode)
    bias = ()
    if layer.bias is not None:
        if options.bias == "accumulator":
            bias_max = statistics.weights[layer.bias].overall.max_abs
            weights = within_accumulator(inputs[0], weights, bias_max)
        bias = _bias(rules.bias or rules.weights, statistics, layer, inputs[0], weights, options)
    register = options.accumulator or Accumulator(_default_width(inputs, weights))
    bits = rules.accumulator if rules.accumulator is not None else register.bits
    accumulator = Accumulator(bits, rules.overflow or register.overflow)
    return LayerPlan(layer, inputs, output, weights, bias, accumulator)


def _default_width(inputs, weights) -> int | None:
    """32 bits for products of codes of at most 16 bits together, 64 up to 64 bits, else an
    exact register (None). A mini float's code is its value in steps of its smallest
    quantum: far wider than its bits."""

    def width(fmt) -> int:
        if isinstance(fmt, MiniFloat):
            return largest_code(fmt).bit_length() + 1
        return fmt.bit_width if fmt is not None else 32

    operands = [*inputs[:1], *(weights[:1] or inputs[1:2])]
    product = sum(width(fmt) for fmt in operands)
    return 32 if product <= 16 else 64 if product <= 64 else None


def _activation(rule, statistics: Statistics, name: str, options: PlanOptions, layer: Layer):
    if isinstance(rule, Pow2Rule):
        raise SchemeError(f"layer '{layer.node}': power-of-two is for weights, not activations")
    if isinstance(rule, APoTRule) or isinstance(getattr(rule, "format", None), APoT):
        raise SchemeError(
            f"layer '{layer.node}': two-term power-of-two is for weights, not activations"
        )
    if isinstance(rule, FixedRule):
        return rule.format
    observed = statistics.activations[name]
    bounds = layer.output_bounds if name == layer.output else None
    if bounds is not None:
        low, high = bounds
        observed = Range(min(max(observed.min, low), high), max(min(observed.max, high), low))
    signed = not (options.unsigned and observed.min >= 0)
    covering = rule.for_activations(observed.max_abs, signed, options.fit)
    histogram = statistics.histograms.get(name)
    if histogram is None or not options.fits_activations:
        return covering
    return fit_activation(covering, histogram, options.activation_fit, bounds)


def _weights(rule: Rule, statistics: Statistics, layer: Layer, options: PlanOptions):
    if rule == FP32:
        return ()
    observed = statistics.weights[layer.weight]
    per_channel = options.per_channel and layer.weight_axis is not None
    if per_channel and isinstance(rule, DFPRule | MiniFloatRule | Pow2Rule | APoTRule):
        return rule.for_channels(observed.channel_max_abs, observed.channels, options.fit)
    values = observed.channels.ravel()
    return (rule.for_weights(observed.overall.max_abs, values, options.fit),)


def _bias(rule, statistics, layer, input_format, weights, options: PlanOptions):
    """`accumulator`: the bias is added where integer hardware adds it, in the 32-bit
    accumulator on the grid of the input-times-weight products (fl = input fl + weight fl),
    coarsened only as far as a large bias needs to fit 32 bits. `weights`: Ristretto's choice,
    the bias in the weight format."""
    if rule == FP32 or not weights:
        return ()
    observed = statistics.weights[layer.bias]
    on_grid = accumulator_biases(input_format, weights, observed.overall.max_abs)
    if options.bias == "accumulator" and on_grid is not None:
        return on_grid
    fitted = DFP.for_weights(32, observed.overall.max_abs).fl
    if options.bias == "accumulator" and families(weights) <= {DFP, Pow2, APoT}:
        return (DFP(32, fitted),)  # an FP32 input: no grid, but still the accumulator's width
    products = product_fls(input_format, weights)
    if options.bias == "accumulator" and products is not None:
        # Mini-float products: the register is fixed point on their finest grid.
        return tuple(DFP(32, min(grid, fitted)) for grid in products.tolist())
    return (rule.for_weights(observed.overall.max_abs, observed.channels.ravel(), options.fit),)


def accumulator_biases(
    input_format: Format, weights: tuple[Format, ...], bias_max: float
) -> tuple[DFP, ...] | None:
    """A bias of largest magnitude `bias_max` on the accumulator's grid: one 32-bit format
    per product grid (see `accumulator_fls`), coarsened only as far as the bias needs to fit;
    None where the products have no such grid."""
    grids = accumulator_fls(input_format, weights)
    if grids is None:
        return None
    fitted = DFP.for_weights(32, bias_max).fl
    rounding = weights[0].rounding if isinstance(weights[0], DFP) else "even"
    return tuple(DFP.of(32, min(grid, fitted), True, rounding) for grid in grids.tolist())


def within_accumulator(input_format, weights: tuple[Format, ...], bias_max: float):
    """Coarsen the weights of any channel whose product grid is too fine for the bias to
    take at most BIAS_CODE_BITS there (channels of near-zero weights): a 32-bit accumulator
    keeps 8 bits of headroom for the sum, and float32 (a 24-bit significand) adds such a
    layer exactly, so a sim model runs it as a plain float convolution. Such weights are all
    but zero at any resolution."""
    finest = DFP.for_weights(BIAS_CODE_BITS, bias_max).fl
    grids = accumulator_fls(input_format, weights)
    if grids is None:
        return weights
    adjusted = []
    for weight, grid in zip(weights, grids.tolist(), strict=True):
        if grid <= finest:
            adjusted.append(weight)
        elif isinstance(weight, DFP):
            coarser = weight.fl - (grid - finest)
            adjusted.append(DFP.of(weight.bw, coarser, weight.signed, weight.rounding))
        else:  # one- or two-term powers of two: a higher lowest exponent
            low = weight.exp_min + (grid - finest)
            adjusted.append(replace(weight, exp_min=min(low, weight.exp_max)))
    return tuple(adjusted)


def accumulator_fls(input_format: Format, weights: tuple[Format, ...]) -> np.ndarray | None:
    """The fractional lengths of the products of a DFP input and each of a layer's DFP or
    (two-term) power-of-two weight formats (one per channel); None for other formats."""
    if not isinstance(input_format, DFP) or not families(weights) <= {DFP, Pow2, APoT}:
        return None
    return input_format.fl - weight_exponents(weights)


def product_fls(input_format: Format | None, weights: tuple[Format, ...]) -> np.ndarray | None:
    """The fractional lengths of the finest products of a quantized input and each of a
    layer's weight formats, mini floats among them (their smallest quantum); None for an
    FP32 input."""
    if input_format is None or not weights:
        return None
    return -(step_exponent(input_format) + step_exponents(weights))


def _check_overrides_match(layers: list[Layer], overrides: tuple[Override, ...]) -> None:
    for override in overrides:
        if not any(override.matches(layer) for layer in layers):
            names = ", ".join(layer.node for layer in layers[:10])
            raise SchemeError(
                f"override {override.pattern!r} matches no quantizable layer (layers: {names}"
                f"{', ...' if len(layers) > 10 else ''})"
            )


def load_overrides(path: str | Path) -> tuple[Override, ...]:
    """Read a per-layer overrides file (JSON, or YAML for .yaml/.yml)."""
    path = Path(path)
    if not path.is_file():
        raise SchemeError(f"{path}: no such overrides file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SchemeError(f"{path}: not a text file (expected JSON or YAML)") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            content = yaml.safe_load(text)
        else:
            content = json.loads(text)
    except Exception as error:
        raise SchemeError(f"{path}: cannot parse ({str(error).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise SchemeError(f"{path}: expected a mapping from layer names or patterns to settings")
    return tuple(_override(str(pattern), settings, path) for pattern, settings in content.items())


def _override(pattern: str, settings: object, path: Path) -> Override:
    if not isinstance(settings, dict):
        raise SchemeError(f"{path}: settings for {pattern!r} must be a mapping")
    unknown = sorted(set(settings) - set(OVERRIDE_KEYS))
    if unknown:
        raise SchemeError(
            f"{path}: unknown key {unknown[0]!r} for {pattern!r}; valid: {OVERRIDE_KEYS}"
        )
    bias_mode = settings.get("bias") if settings.get("bias") in BIAS_MODES else None
    rules = {
        key: parse_rule(str(settings[key]))
        for key in ("weights", "bias", "input", "output")
        if key in settings and not (key == "bias" and bias_mode)
    }
    if "activations" in settings:
        rule = parse_rule(str(settings["activations"]))
        rules.setdefault("input", rule)
        rules.setdefault("output", rule)
    skip = settings.get("skip")
    if skip is not None and not isinstance(skip, bool):
        raise SchemeError(f"{path}: {pattern!r}: skip must be true or false, got {skip!r}")
    accumulator, overflow = settings.get("accumulator"), settings.get("overflow")
    if accumulator is not None or overflow is not None:
        try:
            Accumulator(accumulator or 32, overflow or "saturate")
        except SchemeError as error:
            raise SchemeError(f"{path}: {pattern!r}: {error}") from None
    return Override(
        pattern,
        skip=skip,
        accumulator=accumulator,
        overflow=overflow,
        bias_mode=bias_mode,
        **rules,
    )
