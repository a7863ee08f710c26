"""Canonical format names and their parser: every format's `name` parses back to it."""

from __future__ import annotations

import re
from dataclasses import replace

from rcompile.formats.apot import APoT
from rcompile.formats.dfp import DFP
from rcompile.formats.minifloat import MiniFloat
from rcompile.formats.pow2 import Pow2
from rcompile.formats.rounding import ROUNDING_MODES

Format = DFP | MiniFloat | Pow2 | APoT

_DFP = re.compile(r"(u?)dfp([0-9]+)f(-?[0-9]+)")
_MINIFLOAT = re.compile(r"fp([0-9]+)e([0-9]+)m([0-9]+)(r|fn|ieee)?")
_BIASED = re.compile(r"((?:fp|bf).+)b(-?[0-9]+)")
_POW2 = re.compile(r"pow2e(-?[0-9]+)\.\.(-?[0-9]+)(r?)")
_APOT = re.compile(r"apote(-?[0-9]+)\.\.(-?[0-9]+)")
_ALIASES = {
    "fp16": MiniFloat(5, 10, "ieee"),
    "bf16": MiniFloat(8, 7, "ieee"),
    "fp8e4m3": MiniFloat(4, 3, "fn"),
}
_VARIANT_SUFFIX = {"r": "ristretto", None: "ieee", "ieee": "ieee", "fn": "fn"}

FORMAT_GRAMMAR = (
    "dfp<bw>f<fl> or udfp<bw>f<fl> (e.g. dfp8f5), fp<N>e<E>m<M>[r|fn|ieee] (e.g. fp8e4m3, "
    "fp8e5m2, fp8e4m3r), fp16, bf16, pow2e<min>..<max>[r] (e.g. pow2e-8..-1), "
    "apote<min>..<max> (two-term powers of two, e.g. apote-8..-1); a mini float "
    "may name its exponent bias (fp8e4m3fnb16); DFP and mini floats may end in @<rounding> "
    f"({', '.join(ROUNDING_MODES[1:])}; default even)"
)


def parse_format(name: str) -> Format:
    """Parse a canonical format name (see FORMAT_GRAMMAR); raise ValueError otherwise."""
    text, rounding = split_rounding(name.strip().lower())
    fmt = _parse_base(text, name)
    if rounding == "even":
        return fmt
    if isinstance(fmt, Pow2):
        raise ValueError(f"format {name!r}: power-of-two weights round in the log domain only")
    if isinstance(fmt, APoT):
        raise ValueError(f"format {name!r}: two-term power-of-two weights round to nearest only")
    return replace(fmt, rounding=rounding)


def split_rounding(text: str) -> tuple[str, str]:
    """`text` without its `@rounding` suffix, and the rounding (`even` when none)."""
    base, _, rounding = text.partition("@")
    rounding = rounding or "even"
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r} in {text!r}; use one of {ROUNDING_MODES}")
    return base, rounding


def _parse_base(text: str, name: str) -> Format:
    if match := _BIASED.fullmatch(text):
        fmt = _parse_base(match.group(1), name)
        if not isinstance(fmt, MiniFloat):
            raise ValueError(f"unknown format {name!r}; expected {FORMAT_GRAMMAR}")
        return replace(fmt, exponent_bias=int(match.group(2)))
    if text in _ALIASES:
        return _ALIASES[text]
    if match := _DFP.fullmatch(text):
        unsigned, bw, fl = match.groups()
        return DFP(int(bw), int(fl), signed=not unsigned)
    if match := _MINIFLOAT.fullmatch(text):
        total, exp_bits, mant_bits, suffix = match.groups()
        fmt = MiniFloat(int(exp_bits), int(mant_bits), _VARIANT_SUFFIX[suffix])
        if fmt.bit_width != int(total):
            raise ValueError(
                f"format {name!r}: 1 sign + {exp_bits} exponent + {mant_bits} mantissa bits "
                f"make {fmt.bit_width} bits, not {total}"
            )
        return fmt
    if match := _POW2.fullmatch(text):
        exp_min, exp_max, ristretto = match.groups()
        return Pow2(int(exp_min), int(exp_max), zero=not ristretto)
    if match := _APOT.fullmatch(text):
        return APoT(int(match.group(1)), int(match.group(2)))
    raise ValueError(f"unknown format {name!r}; expected {FORMAT_GRAMMAR}")
