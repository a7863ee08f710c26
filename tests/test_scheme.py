"""Schemes: every grammar form parses to its rules, bad names fail with the valid forms, and
the least-error fit of DFP weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rcompile.errors import SchemeError
from rcompile.formats import DFP, MiniFloat, Pow2
from rcompile.scheme import (
    SCHEME_GRAMMAR,
    DFPRule,
    FixedRule,
    MiniFloatRule,
    Pow2Rule,
    Scheme,
    parse_rule,
    parse_scheme,
)

F32 = np.float32
E4M3, E5M2 = MiniFloat(4, 3, "fn"), MiniFloat(5, 2, "ieee")


@pytest.mark.parametrize(
    ("text", "weights", "activations"),
    [
        ("dfp8", DFPRule(8), DFPRule(8)),
        ("dfp16", DFPRule(16), DFPRule(16)),
        ("dfp:w4a8", DFPRule(4), DFPRule(8)),
        ("pow2", Pow2Rule(4), DFPRule(8)),
        ("pow2:w5a8", Pow2Rule(5), DFPRule(8)),
        ("fp8e4m3", MiniFloatRule(E4M3), MiniFloatRule(E4M3)),
        ("fp8e5m2", MiniFloatRule(E5M2), MiniFloatRule(E5M2)),
        ("fp16", MiniFloatRule(MiniFloat(5, 10, "ieee")), MiniFloatRule(MiniFloat(5, 10, "ieee"))),
        ("bf16", MiniFloatRule(MiniFloat(8, 7, "ieee")), MiniFloatRule(MiniFloat(8, 7, "ieee"))),
        ("fp8e4m3r", MiniFloatRule(MiniFloat(4, 3)), MiniFloatRule(MiniFloat(4, 3))),
        ("fp8e4m3:unscaled", FixedRule(E4M3), FixedRule(E4M3)),
        ("fp8e4m3r:unscaled", FixedRule(MiniFloat(4, 3)), FixedRule(MiniFloat(4, 3))),
        (
            "fp8e4m3:unscaled@away",
            FixedRule(replace(E4M3, rounding="away")),
            FixedRule(replace(E4M3, rounding="away")),
        ),
        (
            "fp8e4m3@away",
            MiniFloatRule(replace(E4M3, rounding="away")),
            MiniFloatRule(replace(E4M3, rounding="away")),
        ),
    ],
)
def test_scheme_forms_parse_to_their_rules(text, weights, activations):
    assert parse_scheme(text) == Scheme(text, weights, activations)


def test_fp8e4m3_means_ocp_e4m3fn():
    assert parse_scheme("fp8e4m3").weights.format == MiniFloat(4, 3, "fn")


def test_a_scaled_mini_float_takes_the_finest_bias_that_covers_each_range():
    """Weights of at most 0.5 get E4M3 with bias 16 (largest value 0.875, smallest
    subnormal 2**-18) instead of 7, and at most 0.01 bias 22; zero keeps 7. Activations up to
    1000 get bias 5 (largest 1792: bias 6 would end at 896)."""
    rule = parse_scheme("fp8e4m3").weights
    weights = rule.for_channels((0.5, 0.01, 0.0), np.zeros((3, 1)))
    assert [w.bias for w in weights] == [16, 22, 7]
    assert weights[0].max == 0.875 and weights[0].smallest_positive == 2.0**-18
    activation = rule.for_activations(1000.0, True)
    assert activation.bias == 5 and activation.max == 1792.0
    assert parse_scheme("fp8e4m3:unscaled").activations.for_activations(1000.0, True) == E4M3


def test_fp8e4m3r_is_ristrettos_variant():
    assert parse_scheme("fp8e4m3r").weights.format.variant == "ristretto"


@pytest.mark.parametrize("text", ["DFP8", "  dfp8\t", "Dfp8 ", "\ndFp8"])
def test_scheme_names_ignore_case_and_surrounding_space(text):
    assert parse_scheme(text) == Scheme("dfp8", DFPRule(8), DFPRule(8))


def test_mixed_width_scheme_ignores_case():
    assert parse_scheme(" POW2:W5A8 ") == Scheme("pow2:w5a8", Pow2Rule(5), DFPRule(8))


@pytest.mark.parametrize(
    "text", ["int8", "dfp", "dfp8f3", "dfp:w8", "pow2:w4", "fp8e4m4", "fixed8", "", "dfp 8"]
)
def test_unknown_scheme_raises_listing_the_valid_forms(text):
    with pytest.raises(SchemeError) as error:
        parse_scheme(text)
    assert SCHEME_GRAMMAR in str(error.value)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize("text", ["dfp1", "dfp33", "dfp:w1a8", "dfp:w8a64", "pow2:w4a0"])
def test_bad_width_raises_naming_the_allowed_range(text):
    with pytest.raises(SchemeError, match=r"\[2, 32\]"):
        parse_scheme(text)


@pytest.mark.parametrize("text", ["dfp1", "dfp33", "dfp:w1a8", "dfp:w8a64", "pow2:w4a0"])
def test_bad_width_raises_listing_the_valid_forms(text):
    with pytest.raises(SchemeError) as error:
        parse_scheme(text)
    assert SCHEME_GRAMMAR in str(error.value)


@pytest.mark.parametrize("text", ["dfp2", "dfp32", "dfp:w2a32"])
def test_widths_at_the_edges_are_accepted(text):
    assert parse_scheme(text).name == text


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("dfp8", DFPRule(8)),
        ("DFP16", DFPRule(16)),
        ("pow2", Pow2Rule(4)),
        ("pow2:6", Pow2Rule(6)),
        ("dfp8f3", FixedRule(DFP(8, 3))),
        ("udfp8f4", FixedRule(DFP(8, 4, signed=False))),
        ("dfp16f-2", FixedRule(DFP(16, -2))),
        ("fp8e4m3", FixedRule(MiniFloat(4, 3, "fn"))),
        ("fp8e5m2", FixedRule(MiniFloat(5, 2, "ieee"))),
        ("pow2e-8..-1", FixedRule(Pow2(-8, -1))),
        ("pow2e-8..-1r", FixedRule(Pow2(-8, -1, zero=False))),
    ],
)
def test_rule_forms_parse(text, rule):
    assert parse_rule(text) == rule


@pytest.mark.parametrize("text", ["int8", "dfp:w4a8", "pow2:w4a8", "dfp8f200", "fp8e4m4"])
def test_unknown_rule_raises_naming_the_expected_forms(text):
    with pytest.raises(SchemeError, match=r"unknown format .*expected dfp<N>, pow2.*format name"):
        parse_rule(text)


def test_bad_rule_width_raises():
    with pytest.raises(SchemeError, match=r"\[2, 32\]"):
        parse_rule("dfp40")


def mse_formats(rows: np.ndarray, bits: int = 8) -> tuple[DFP, ...]:
    return DFPRule(bits).for_channels(np.abs(rows).max(axis=1, initial=0.0), rows)


def test_least_error_takes_a_finer_format_when_the_largest_weight_is_an_outlier():
    rng = np.random.default_rng(0)
    values = np.append(rng.uniform(-0.1, 0.1, 1000), 0.52).astype(F32)
    base = DFP.for_weights(8, 0.52)
    assert mse_formats(values.reshape(1, -1)) == (DFP(8, base.fl + 1),)


def test_least_error_keeps_the_base_format_for_evenly_spread_weights():
    rng = np.random.default_rng(0)
    values = rng.uniform(-1.0, 1.0, 1000).astype(F32)
    base = DFP.for_weights(8, float(np.abs(values).max()))
    assert mse_formats(values.reshape(1, -1)) == (base,)


def test_least_error_chooses_per_row_when_scoring_many_channels_at_once():
    rng = np.random.default_rng(0)
    outlier = np.append(rng.uniform(-0.1, 0.1, 999), 0.52).astype(F32)
    spread = np.append(rng.uniform(-0.52, 0.52, 999), 0.52).astype(F32)
    base = DFP.for_weights(8, 0.52)
    rows = np.stack([outlier, spread])
    assert mse_formats(rows) == (DFP(8, base.fl + 1), base)


def test_least_error_keeps_the_base_format_for_no_values():
    assert DFPRule(8).for_channels((0.5,), np.zeros((1, 0), F32)) == (DFP.for_weights(8, 0.5),)


def test_least_error_stays_within_the_fractional_length_range():
    high = DFP.fl_range(8)[1]
    assert mse_formats(np.full((1, 4), 2.0**-140, F32)) == (DFP(8, high),)


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_channel_formats_follow_ristrettos_weight_rule_for_each_channel(bits):
    maxima = [0.0, 1e-30, 2.0**-126, 0.25, 0.3, 0.5, 0.52, 1.0, 3.0, 4.0, 1e6, 3e38]
    rows = np.zeros((len(maxima), 0), F32)
    expected = tuple(DFP.for_weights(bits, m) for m in maxima)
    assert DFPRule(bits).for_channels(maxima, rows, fit="max") == expected


def test_channel_maxima_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        DFPRule(8).for_channels((np.inf,), np.zeros((1, 0), F32), fit="max")


def test_dfp_rule_max_fit_keeps_ristrettos_weight_format():
    rng = np.random.default_rng(0)
    values = np.append(rng.uniform(-0.1, 0.1, 1000), 0.52).astype(F32)
    assert DFPRule(8).for_weights(0.52, values, fit="max") == DFP.for_weights(8, 0.52)


def test_dfp_rule_mse_fit_uses_least_error():
    rng = np.random.default_rng(0)
    values = np.append(rng.uniform(-0.1, 0.1, 1000), 0.52).astype(F32)
    assert DFPRule(8).for_weights(0.52, values) == DFP(8, DFP.for_weights(8, 0.52).fl + 1)
