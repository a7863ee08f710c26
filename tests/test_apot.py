"""Two-term power-of-two weights: the levels, nearest rounding (against a brute-force search,
ties and special values included), the windows code widths give, names and schemes, the
PyTorch quantizer bit for bit, and LeNet-5 end to end (bit-true, beside `pow2`), with the
report's cost in shifts and adders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import lenet_runs, rcompile_run

from rcompile.errors import SchemeError
from rcompile.formats import APoT, parse_format
from rcompile.formats.apot import widest_window, window_codes
from rcompile.scheme import APoTRule, parse_rule, parse_scheme

F32 = np.float32


def test_levels_are_zero_powers_and_their_sums_and_differences():
    assert window_codes(1).tolist() == [0, 1]
    assert window_codes(2).tolist() == [0, 1, 2, 3]
    assert window_codes(3).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert window_codes(4).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]
    fmt = APoT(-9, -2)
    assert len(fmt.levels) == 52 and fmt.bit_width == 7
    assert fmt.max == 2.0**-2 + 2.0**-3


def brute_force(fmt: APoT, x: np.ndarray) -> np.ndarray:
    """The nearest signed level by exhaustive search (float64), ties to the smaller one."""
    levels = fmt.levels
    magnitude = np.abs(x.astype(np.float64))
    distance = np.abs(magnitude[:, None] - levels[None, :])
    nearest = levels[np.argmin(distance, axis=1)]  # argmin takes the first, the smaller
    return (np.where(x < 0, -1.0, 1.0) * nearest).astype(F32) + F32(0)


@pytest.mark.parametrize("fmt", [APoT(-9, -2), APoT(-3, -3), APoT(-20, -5), APoT(0, 4)])
def test_quantize_is_the_nearest_level(fmt):
    rng = np.random.default_rng(abs(fmt.exp_min))
    levels = fmt.levels
    midpoints = (levels[1:] + levels[:-1]) / 2
    x = np.concatenate(
        [
            rng.normal(scale=fmt.max, size=4000),
            midpoints,
            -midpoints,
            np.nextafter(midpoints.astype(F32), F32(np.inf)),
            levels,
            [fmt.max * 3, -fmt.max * 3, 2.0 ** (fmt.exp_min - 3)],
        ]
    ).astype(F32)
    expected = brute_force(fmt, x)
    np.testing.assert_array_equal(fmt.quantize(x).view(np.uint32), expected.view(np.uint32))


def test_special_values():
    fmt = APoT(-8, -1)
    got = fmt.quantize(np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-30], F32))
    assert np.isnan(got[0])
    assert got[1] == fmt.max and got[2] == -fmt.max
    assert all(v == 0 and not np.signbit(v) for v in got[3:])
    with pytest.raises(ValueError, match="nearest level only"):
        fmt.quantize(np.ones(3, F32), seed=1)


def test_windows_and_names():
    assert [widest_window(bits) for bits in range(2, 10)] == [1, 2, 3, 4, 6, 8, 12, 16]
    assert APoT.for_weights(6, 0.9) == APoT(-5, 0)
    assert APoT.for_weights(6, 0.9).max >= 0.9
    for fmt in (APoT(-8, -1), APoT(-30, -7), APoT(2, 2)):
        assert parse_format(fmt.name) == fmt
    for window in ((-1, -3), (-40, -1)):
        with pytest.raises(ValueError, match="APoT exp_min"):
            APoT(*window)
    with pytest.raises(ValueError, match="nearest only"):
        parse_format("apote-8..-1@up")


def test_schemes_and_rules():
    scheme = parse_scheme("apot")
    assert scheme.weights == APoTRule(6) and scheme.activations.bits == 8
    assert parse_scheme("apot:w7a16").weights == APoTRule(7)
    assert parse_rule("apot:5") == APoTRule(5) and parse_rule("apot") == APoTRule(6)


def test_the_fitted_windows_are_never_worse_than_the_covering_one():
    rng = np.random.default_rng(3)
    rows = (rng.normal(size=(32, 200)) * 0.2).astype(F32)
    rows[0, 0] = 4.0  # a lone outlier, which the fit may saturate
    maxima = np.abs(rows).max(axis=1)
    rule = APoTRule(5)
    covering, fitted = rule.for_channels(maxima, rows, "max"), rule.for_channels(maxima, rows)
    for row, wide, fit in zip(rows, covering, fitted, strict=True):
        assert np.sum((fit.quantize(row) - row) ** 2) <= np.sum((wide.quantize(row) - row) ** 2)
    assert fitted[0].exp_max < covering[0].exp_max


def test_the_pytorch_quantizer_is_the_reference_bit_for_bit():
    torch = pytest.importorskip("torch", reason="fine-tuning needs PyTorch (.[finetune])")
    from rcompile.finetune.quantizers import quantize

    fmt = APoT(-10, -4)
    x = np.random.default_rng(0).normal(scale=0.03, size=20000).astype(F32)
    x[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, (fmt.levels[5] + fmt.levels[6]) / 2]
    got = quantize(torch.from_numpy(x), fmt).numpy()
    np.testing.assert_array_equal(got.view(np.uint32), fmt.quantize(x).view(np.uint32))


def test_activations_cannot_be_two_term_powers_of_two(tmp_path):
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("/conv1/Conv: {input: apote-8..-1}\n")
    result = rcompile_run(
        "models/lenet5.onnx",
        "-o",
        tmp_path / "out.onnx",
        "--calib",
        "models/mnist_calib.npz",
        "--overrides",
        overrides,
    )
    assert result.returncode != 0
    assert "two-term power-of-two is for weights" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(SchemeError):
        parse_rule("apot:1")


def test_lenet_with_two_term_weights_is_bit_true_and_beats_single_powers(tmp_path):
    """LeNet-5, 8-bit DFP activations: two-term weights (6-bit codes) keep FP32's top-1
    within 0.5 pt, ahead of 4-bit single powers of two; every product is two shifts and an
    add in the report; `rcompile verify` finds the model bit-true."""
    runs = lenet_runs(tmp_path, ("--scheme=apot", "--scheme=pow2"))
    apot, pow2 = runs["--scheme=apot"], runs["--scheme=pow2"]
    assert apot.top1 >= apot.fp32_top1 - 0.005
    assert apot.top1 > pow2.top1
    report = json.loads((tmp_path / "scheme=apot.report.json").read_text())
    for layer in report["layers"]:
        assert layer["formats"]["weights"]["family"] == "apot"
        multiplier = layer["multiplier"]
        assert (multiplier["kind"], multiplier["shifts"], multiplier["adders"]) == (
            "shift-add",
            2,
            1,
        )
    markdown = (tmp_path / "scheme=apot.report.md").read_text()
    assert "2 shifts + 1 add" in markdown
    verified = rcompile_run(
        "verify", tmp_path / "scheme=apot.onnx", "--data", "models/mnist_calib.npz", "--count", "64"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
