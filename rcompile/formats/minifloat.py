"""Mini floating point: sign, `exp_bits` exponent bits, `mant_bits` mantissa bits.

Three variants share one rounding rule (mantissa half to even, saturation at the largest
finite value) and differ in how they spend the exponent codes:

| variant     | exponents            | subnormals | inf | NaN | largest value                      |
| ----------- | -------------------- | ---------- | --- | --- | ---------------------------------- |
| `ristretto` | -bias .. bias+1      | flushed    | no  | no  | (2 - 2**-m) * 2**(bias+1)          |
| `ieee`      | 1-bias .. bias       | yes        | yes | yes | (2 - 2**-m) * 2**bias              |
| `fn`        | 1-bias .. bias+1     | yes        | no  | yes | (2 - 2**(1-m)) * 2**(bias+1)       |

with bias = 2**(exp_bits-1) - 1 unless the format gives its own `exponent_bias`. `ieee`
(5, 10) is float16, (8, 7) bfloat16 and (5, 2) OCP FP8 E5M2; `fn` (4, 3) is OCP FP8 E4M3FN.
The quantizers pass NaN through; +-inf stays infinite where the variant has inf and
saturates otherwise (as ONNX's saturating Cast does).

A scaled mini float is one with another exponent bias: every value times one power of two,
2**(standard bias - exponent_bias). Hardware gets it for free (the bias is a constant of the
datapath), and a tensor of small weights keeps its precision instead of falling below the
smallest normal. `covering` picks the bias from a tensor's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from rcompile.formats.exact import F32, MAX_POW2_EXP, MIN_POW2_EXP, floor_log2, pow2
from rcompile.formats.rounding import check_rounding, round_values, rounding_suffix

VARIANTS = ("ristretto", "ieee", "fn")
MIN_EXP_BITS, MAX_EXP_BITS = 2, 8
MIN_MANT_BITS, MAX_MANT_BITS = 0, 23
# Bare names that by common usage mean another variant (OCP FP8 E4M3 is the 'fn' one), so
# the IEEE-like format of those widths spells its variant out.
AMBIGUOUS_IEEE_NAMES = ("fp8e4m3",)


@dataclass(frozen=True)
class MiniFloat:
    """MiniFloat(exp_bits, mant_bits, variant, rounding); Ristretto's variant is the default,
    the mantissa rounds by `rounding` (see `rcompile.formats.rounding`)."""

    exp_bits: int
    mant_bits: int
    variant: str = "ristretto"
    rounding: str = "even"
    # None: the standard bias, 2**(exp_bits-1) - 1 (a given standard bias is stored as None).
    exponent_bias: int | None = None

    def __post_init__(self) -> None:
        check_rounding(self.rounding)
        if not MIN_EXP_BITS <= self.exp_bits <= MAX_EXP_BITS:
            raise ValueError(
                f"MiniFloat exp_bits must be in [{MIN_EXP_BITS}, {MAX_EXP_BITS}], "
                f"got {self.exp_bits}"
            )
        if not MIN_MANT_BITS <= self.mant_bits <= MAX_MANT_BITS:
            raise ValueError(
                f"MiniFloat mant_bits must be in [{MIN_MANT_BITS}, {MAX_MANT_BITS}], "
                f"got {self.mant_bits}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"MiniFloat variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "fn" and (self.mant_bits == 0 or self.exp_bits == MAX_EXP_BITS):
            raise ValueError(
                "MiniFloat variant 'fn' needs mant_bits >= 1 (its top code is NaN) and "
                f"exp_bits <= {MAX_EXP_BITS - 1} (its top binade must fit in float32)"
            )
        if self.exponent_bias == self.standard_bias:
            object.__setattr__(self, "exponent_bias", None)
        label = f"MiniFloat {self.exp_bits}/{self.mant_bits} ({self.variant})"
        if self.exponent_bias is None and self.emin - self.mant_bits < MIN_POW2_EXP:
            raise ValueError(
                f"{label} has values below the float32 subnormal range; "
                f"use mant_bits <= {self.emin - MIN_POW2_EXP}"
            )
        low, high = self.bias_range
        if self.exponent_bias is not None and not low <= self.exponent_bias <= high:
            raise ValueError(
                f"{label} with exponent bias {self.bias} has values float32 does not hold; "
                f"use a bias in [{low}, {high}]"
            )

    @property
    def standard_bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def bias(self) -> int:
        return self.standard_bias if self.exponent_bias is None else self.exponent_bias

    @property
    def scale_exponent(self) -> int:
        """Every value is the standard-bias format's times 2**scale_exponent."""
        return self.standard_bias - self.bias

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal value."""
        return self._standard_emin + self.scale_exponent

    @property
    def _standard_emin(self) -> int:
        return -self.standard_bias if self.variant == "ristretto" else 1 - self.standard_bias

    @property
    def emax(self) -> int:
        """The exponent of the largest finite value, capped at float32's own (127: Ristretto's
        8-bit exponent would reach 128)."""
        return min(self._top_exponent, MAX_POW2_EXP)

    @property
    def _top_exponent(self) -> int:
        return self._standard_top + self.scale_exponent

    @property
    def _standard_top(self) -> int:
        return self.standard_bias if self.variant == "ieee" else self.standard_bias + 1

    @property
    def has_subnormals(self) -> bool:
        return self.variant != "ristretto"

    @property
    def has_inf(self) -> bool:
        return self.variant == "ieee"

    @property
    def bit_width(self) -> int:
        return 1 + self.exp_bits + self.mant_bits

    @property
    def name(self) -> str:
        """Canonical name: `fp16`, `bf16`, `fp8e5m2`, `fp8e4m3fn`, `fp8e4m3r` (Ristretto),
        `fp8e4m3fnb16` (exponent bias 16), `fp8e4m3fn@floor` (another rounding).

        `fp8e4m3` alone means OCP's E4M3FN, so the IEEE-like E4M3 is `fp8e4m3ieee`.
        """
        biased = "" if self.exponent_bias is None else f"b{self.exponent_bias}"
        return self._base_name + biased + rounding_suffix(self.rounding)

    @property
    def _base_name(self) -> str:
        if self.variant == "ieee" and (self.exp_bits, self.mant_bits) == (5, 10):
            return "fp16"
        if self.variant == "ieee" and (self.exp_bits, self.mant_bits) == (8, 7):
            return "bf16"
        base = f"fp{self.bit_width}e{self.exp_bits}m{self.mant_bits}"
        if self.variant == "ieee" and base in AMBIGUOUS_IEEE_NAMES:
            return f"{base}ieee"
        return base + {"ristretto": "r", "ieee": "", "fn": "fn"}[self.variant]

    @property
    def max(self) -> float:
        """The largest finite value."""
        top_step = self.emax - self.mant_bits + (1 if self.variant == "fn" else 0)
        return math.ldexp(1.0, self.emax + 1) - math.ldexp(1.0, top_step)

    @property
    def min(self) -> float:
        return -self.max

    @property
    def smallest_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def smallest_positive(self) -> float:
        """The smallest positive value: a subnormal where the variant has them."""
        return math.ldexp(1.0, self.emin - (self.mant_bits if self.has_subnormals else 0))

    def quantize(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """The NumPy reference.

        Clamp to +-max, then round to `mant_bits` fraction bits at the value's own exponent
        (at least emin, which gives subnormals); a carry out of the mantissa lands on the next
        power of two, which the clamp keeps within max. Ristretto's variant flushes
        magnitudes below the smallest normal to signed zero. `seed` selects stochastic
        rounding of the mantissa.
        """
        x = np.asarray(x, dtype=F32)
        with np.errstate(invalid="ignore"):
            clamped = np.clip(x, F32(-self.max), F32(self.max))
            magnitude = np.abs(clamped)
            exponent = floor_log2(np.maximum(magnitude, F32(self.smallest_normal)))
            quantum = pow2(exponent - self.mant_bits)
            result = round_values(clamped / quantum, seed, self.rounding) * quantum
            if not self.has_subnormals:
                result = np.where(magnitude < F32(self.smallest_normal), clamped * F32(0), result)
            if self.has_inf:
                result = np.where(np.isinf(x), x, result)
            return np.where(np.isnan(x), x, result).astype(F32)

    def covering(self, max_abs: float) -> MiniFloat:
        """This format with the largest exponent bias (the finest values) whose largest value
        still covers `max_abs`, within the biases float32 can represent; itself for 0."""
        if not math.isfinite(max_abs) or max_abs < 0:
            raise ValueError(f"max_abs must be finite and >= 0, got {max_abs}")
        if max_abs == 0:
            return self
        standard = replace(self, exponent_bias=None)
        shift = math.ceil(math.log2(max_abs / standard.max))
        while math.ldexp(standard.max, shift) < max_abs:
            shift += 1
        while math.ldexp(standard.max, shift - 1) >= max_abs:
            shift -= 1
        low, high = self.bias_range
        return replace(self, exponent_bias=min(max(self.standard_bias - shift, low), high))

    @property
    def bias_range(self) -> tuple[int, int]:
        """The exponent biases whose values float32 holds: all of them above its smallest
        subnormal, the largest finite within its range."""
        standard = self.standard_bias
        low = self._standard_top + standard - MAX_POW2_EXP
        high = self._standard_emin + standard - self.mant_bits - MIN_POW2_EXP
        return min(low, standard), high

    @classmethod
    def for_range(cls, bit_width: int, max_abs: float, variant: str = "ristretto") -> MiniFloat:
        """Ristretto's rule: the fewest exponent bits whose largest value covers max|x|.

        The remaining bits (after the sign) go to the mantissa. When even the widest exponent
        falls short, the widest one the bit width allows is taken.
        """
        if not math.isfinite(max_abs) or max_abs < 0:
            raise ValueError(f"max_abs must be finite and >= 0, got {max_abs}")
        widest = min(MAX_EXP_BITS, bit_width - 1)
        if variant == "fn":
            widest = min(MAX_EXP_BITS - 1, bit_width - 2)
        if widest < MIN_EXP_BITS:
            raise ValueError(f"MiniFloat bit_width {bit_width} is too small for variant {variant}")
        for exp_bits in range(MIN_EXP_BITS, widest + 1):
            candidate = cls(exp_bits, bit_width - 1 - exp_bits, variant)
            if candidate.max >= max_abs:
                return candidate
        return cls(widest, bit_width - 1 - widest, variant)
