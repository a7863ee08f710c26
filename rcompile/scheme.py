"""Schemes: which number format family every weight and activation gets, and how the
format's parameters follow from the calibrated ranges.

Grammar (case-insensitive):

    dfp<N>             N-bit dynamic fixed point for weights and activations
    dfp:w<W>a<A>       W-bit weights, A-bit activations
    <minifloat>        a mini-float format for weights and activations: fp8e4m3 (OCP E4M3FN),
                       fp8e5m2, fp16, bf16, fp8e4m3r (Ristretto's variant), any fp<N>e<E>m<M>[r|fn];
                       each tensor (each output channel of weights) scaled by its own exponent
                       bias, fitted to its range
    <minifloat>:unscaled   the format's standard exponent bias everywhere (Ristretto's mini floats)
    pow2               4-bit power-of-two weights, 8-bit DFP activations
    pow2:w<W>a<A>      W-bit power-of-two weights, A-bit DFP activations
    apot               6-bit two-term power-of-two weights (+-2**a +- 2**b), 8-bit DFP
                       activations
    apot:w<W>a<A>      W-bit two-term power-of-two weights, A-bit DFP activations

Any scheme may end in `@<rounding>` (away, up, floor; default even): the rounding of every
DFP and mini-float tensor (power-of-two weights round in the log domain, two-term ones to
the nearest level).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from rcompile.errors import SchemeError
from rcompile.formats import DFP, APoT, Format, MiniFloat, Pow2, parse_format
from rcompile.formats.apot import widest_window
from rcompile.formats.dfp import code_range, quantize_fixed_point, weight_fls
from rcompile.formats.names import split_rounding
from rcompile.formats.pow2 import MIN_EXP, quantize_power_of_two
from rcompile.formats.rounding import ROUNDING_MODES, rounding_suffix

# How weight formats follow from the data. `mse`: weights take the least squared quantization
# error among the format that holds the largest weight and up to two finer ones (DFP) or
# lower exponent windows (power of two), computed on all the weights. `max`: every
# weight format holds its maximum. `ristretto`: Ristretto's rules, for activations too (one
# bit less than their maximum needs). Activations follow `rcompile.activation_fit`.
FITS = ("mse", "max", "ristretto")
# How many exponents below the largest weight's a power-of-two window may be tried at.
POW2_LOWER_WINDOWS = 2

UNSCALED = ":unscaled"
SCHEME_GRAMMAR = (
    "dfp<N> (e.g. dfp8), dfp:w<W>a<A> (e.g. dfp:w4a8), a mini-float format (fp8e4m3, fp8e5m2, "
    "fp16, bf16, fp8e4m3r, fp<N>e<E>m<M>[r|fn]) optionally followed by :unscaled, pow2, "
    "pow2:w<W>a<A>, apot, apot:w<W>a<A>; each may end in @away, @up or @floor (the rounding; "
    "default even)"
)


@dataclass(frozen=True)
class DFPRule:
    """DFP with `bits` bits, fl chosen by a fitting policy (see FITS), rounding by
    `rounding`."""

    bits: int
    rounding: str = "even"

    def for_weights(self, max_abs: float, values: np.ndarray, fit: str = "mse") -> DFP:
        return self.for_channels((max_abs,), values.reshape(1, -1), fit)[0]

    def for_channels(self, maxima, rows: np.ndarray, fit: str = "mse") -> tuple[DFP, ...]:
        """One format per row of `rows` (a channel's weights), whose largest magnitude is the
        matching entry of `maxima`: Ristretto's weight rule (`DFP.for_weights`) for every
        channel at once, then with `mse` up to two more fractional bits where they lower
        the squared error."""
        fl = weight_fls(self.bits, maxima)
        if fit == "mse" and rows.size:
            fl = least_error_fl(fl, rows, self.bits, self.rounding)
        return tuple(DFP.of(self.bits, int(f), True, self.rounding) for f in fl)

    def for_activations(self, max_abs: float, signed: bool, fit: str = "mse") -> DFP:
        if fit == "ristretto":
            fmt = DFP.for_activations(self.bits, max_abs, signed=signed)
        else:
            fmt = DFP.for_range(self.bits, max_abs, signed=signed)
        return DFP.of(fmt.bw, fmt.fl, fmt.signed, self.rounding)

    @property
    def name(self) -> str:
        return f"dfp{self.bits}{rounding_suffix(self.rounding)}"


def least_error_fl(
    base_fl: np.ndarray, rows: np.ndarray, bits: int, rounding: str = "even", extra_bits: int = 2
) -> np.ndarray:
    """For each row of values (a channel) and its base fractional length: among the base and
    1..extra_bits more fractional bits (which saturate the largest values to resolve the rest
    finer), the one with the least squared error. All rows are scored at once."""
    candidates = np.minimum(base_fl[:, None] + np.arange(extra_bits + 1), DFP.fl_range(bits)[1])
    code_min, code_max = code_range(bits, True)
    errors = [
        np.sum(
            np.square(
                quantize_fixed_point(
                    rows, candidates[:, [k]], code_min, code_max, rounding=rounding
                )
                - rows,
                dtype=np.float64,
            ),
            axis=1,
        )
        for k in range(extra_bits + 1)
    ]
    return candidates[np.arange(len(base_fl)), np.argmin(np.stack(errors), axis=0)]


@dataclass(frozen=True)
class Pow2Rule:
    """Power-of-two weights with `bits`-bit codes; the range from the weights."""

    bits: int

    def for_weights(self, max_abs: float, values: np.ndarray, fit: str = "mse") -> Pow2:
        return self.for_channels((max_abs,), values.reshape(1, -1), fit)[0]

    def for_channels(self, maxima, rows: np.ndarray, fit: str = "mse") -> tuple[Pow2, ...]:
        """One exponent window per row of `rows` (a channel's weights): the one whose top is
        the rounded exponent of the row's largest magnitude (`Pow2.for_weights`), then with
        `mse` the window among it and the two below it (which saturate the largest weights
        and keep smaller ones from flushing to zero) with the least squared error."""
        windows = [Pow2.for_weights(self.bits, m) if m > 0 else Pow2() for m in maxima]
        if fit != "mse" or not rows.size:
            return tuple(windows)
        highest = np.array([w.exp_max for w in windows])
        widths = np.array([w.exp_max - w.exp_min for w in windows])
        tops, errors = [], []
        for shift in range(POW2_LOWER_WINDOWS + 1):
            top = np.maximum(highest - shift, MIN_EXP + widths)  # as far down as float32 goes
            got = quantize_power_of_two(rows, (top - widths)[:, None], top[:, None], True)
            tops.append(top)
            errors.append(np.sum(np.square(got - rows, dtype=np.float64), axis=1))
        best = np.stack(tops)[np.argmin(np.stack(errors), axis=0), np.arange(len(windows))]
        return tuple(
            Pow2(int(top) - int(width), int(top), window.zero)
            for window, top, width in zip(windows, best, widths, strict=True)
        )

    @property
    def name(self) -> str:
        return f"pow2:{self.bits}"


@dataclass(frozen=True)
class APoTRule:
    """Two-term power-of-two weights with `bits`-bit codes: the widest exponent window they
    number, topped at the rounded exponent of each row's largest weight, or with `mse` at
    it or one or two below, whichever gives the least squared error."""

    bits: int

    def for_weights(self, max_abs: float, values: np.ndarray, fit: str = "mse") -> APoT:
        return self.for_channels((max_abs,), values.reshape(1, -1), fit)[0]

    def for_channels(self, maxima, rows: np.ndarray, fit: str = "mse") -> tuple[APoT, ...]:
        window = widest_window(self.bits)
        tops = [APoT.for_weights(self.bits, m).exp_max if m > 0 else -1 for m in maxima]
        shifts = range(POW2_LOWER_WINDOWS + 1) if fit == "mse" and rows.size else (0,)
        chosen = []
        for top, row in zip(tops, rows if rows.size else [None] * len(tops), strict=True):
            candidates = [
                APoT(top - shift - window + 1, top - shift)
                for shift in shifts
                if top - shift - window + 1 >= MIN_EXP
            ] or [APoT(MIN_EXP, MIN_EXP + window - 1)]
            if row is None or len(candidates) == 1:
                chosen.append(candidates[0])
                continue
            errors = [
                np.sum(np.square(c.quantize(row) - row, dtype=np.float64)) for c in candidates
            ]
            chosen.append(candidates[int(np.argmin(errors))])
        return tuple(chosen)

    @property
    def name(self) -> str:
        return f"apot:{self.bits}"


@dataclass(frozen=True)
class MiniFloatRule:
    """A mini-float format whose exponent bias every tensor (every output channel of
    weights) fits to its range (`MiniFloat.covering`): a scaled mini float."""

    format: MiniFloat

    def for_weights(self, max_abs: float, values: np.ndarray, fit: str = "mse") -> MiniFloat:
        return self.format.covering(max_abs)

    def for_channels(self, maxima, rows: np.ndarray, fit: str = "mse") -> tuple[MiniFloat, ...]:
        return tuple(self.format.covering(m) for m in maxima)

    def for_activations(self, max_abs: float, signed: bool, fit: str = "mse") -> MiniFloat:
        return self.format.covering(max_abs)

    @property
    def name(self) -> str:
        return self.format.name


@dataclass(frozen=True)
class FixedRule:
    """One given format, whatever the range (mini floats, or a pinned format); `None` keeps
    the tensor FP32 (see `FP32`)."""

    format: Format | None

    def for_weights(self, max_abs: float, values: np.ndarray, fit: str = "mse") -> Format | None:
        return self.format

    def for_activations(self, max_abs: float, signed: bool, fit: str = "mse") -> Format | None:
        return self.format

    @property
    def name(self) -> str:
        return self.format.name if self.format is not None else "fp32"


FP32 = FixedRule(None)


Rule = DFPRule | Pow2Rule | APoTRule | MiniFloatRule | FixedRule


@dataclass(frozen=True)
class Scheme:
    """A scheme: the rule for parameters and the rule for layer inputs and outputs."""

    name: str
    weights: Rule
    activations: DFPRule | MiniFloatRule | FixedRule


def parse_scheme(text: str) -> Scheme:
    """Parse a scheme name (see SCHEME_GRAMMAR); raise SchemeError listing the valid forms."""
    name = text.strip().lower()
    try:
        base, rounding = split_rounding(name)
    except ValueError as error:
        raise SchemeError(f"scheme {text!r}: {error}") from None
    scheme = _parse_base_scheme(base, text)
    if rounding == "even":
        return scheme
    return Scheme(name, _rounded(scheme.weights, rounding), _rounded(scheme.activations, rounding))


def _parse_base_scheme(name: str, text: str) -> Scheme:
    if match := re.fullmatch(r"dfp([0-9]+)", name):
        bits = _bits(match.group(1), name)
        return Scheme(name, DFPRule(bits), DFPRule(bits))
    if match := re.fullmatch(r"(dfp|pow2|apot):w([0-9]+)a([0-9]+)", name):
        family, weight_bits, activation_bits = match.groups()
        weights = {"dfp": DFPRule, "pow2": Pow2Rule, "apot": APoTRule}[family]
        return Scheme(
            name, weights(_bits(weight_bits, name)), DFPRule(_bits(activation_bits, name))
        )
    if name == "pow2":
        return Scheme(name, Pow2Rule(4), DFPRule(8))
    if name == "apot":
        return Scheme(name, APoTRule(6), DFPRule(8))
    base, unscaled = name.removesuffix(UNSCALED), name.endswith(UNSCALED)
    try:
        fmt = parse_format(base)
    except ValueError:
        fmt = None
    if isinstance(fmt, MiniFloat) and fmt.exponent_bias is None:
        rule = FixedRule(fmt) if unscaled else MiniFloatRule(fmt)
        return Scheme(name, rule, rule)
    raise SchemeError(f"unknown scheme {text!r}; valid schemes: {SCHEME_GRAMMAR}")


def _rounded(rule: Rule, rounding: str) -> Rule:
    """`rule` with `rounding` for its DFP or mini-float formats (power-of-two keeps its own)."""
    if isinstance(rule, DFPRule):
        return replace(rule, rounding=rounding)
    if isinstance(rule, FixedRule) and isinstance(rule.format, DFP | MiniFloat):
        return FixedRule(replace(rule.format, rounding=rounding))
    if isinstance(rule, MiniFloatRule):
        return MiniFloatRule(replace(rule.format, rounding=rounding))
    return rule


def parse_rule(text: str) -> Rule:
    """A rule in an override: `dfp<N>`, `pow2` or `pow2:<N>`, `apot` or `apot:<N>`, `fp32`,
    or any format name."""
    name = text.strip().lower()
    if name == "fp32":
        return FP32
    if match := re.fullmatch(r"dfp([0-9]+)(?:@(\w+))?", name):
        rounding = match.group(2) or "even"
        if rounding not in ROUNDING_MODES:
            raise SchemeError(f"unknown rounding {rounding!r} in {text!r}; use {ROUNDING_MODES}")
        return DFPRule(_bits(match.group(1), name), rounding)
    if match := re.fullmatch(r"pow2(?::([0-9]+))?", name):
        return Pow2Rule(_bits(match.group(1) or "4", name))
    if match := re.fullmatch(r"apot(?::([0-9]+))?", name):
        return APoTRule(_bits(match.group(1) or "6", name))
    try:
        return FixedRule(parse_format(name))
    except ValueError as error:
        raise SchemeError(
            f"unknown format {text!r}; expected dfp<N>, pow2[:<N>], apot[:<N>], fp32 or a format "
            f"name ({error})"
        ) from None


def _bits(text: str, scheme: str) -> int:
    bits = int(text)
    if not 2 <= bits <= 32:
        raise SchemeError(
            f"scheme {scheme!r}: bit widths must be in [2, 32], got {bits}; valid schemes: "
            f"{SCHEME_GRAMMAR}"
        )
    return bits
