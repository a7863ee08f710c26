"""The two format values beside each weight, between which learned rounding chooses."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="learned rounding needs PyTorch (the finetune extra)")

from rcompile.finetune.neighbours import neighbours, neighbours_per_channel  # noqa: E402
from rcompile.formats import parse_format  # noqa: E402

FORMATS = [
    "dfp4f3",
    "dfp8f-1",
    "udfp8f4",
    "pow2e-8..-1",
    "pow2e-6..0r",
    "fp8e4m3",
    "fp8e4m3r",
    "fp8e5m2",
    "fp4e2m1",
    "apote-8..-1",
]


def _values(fmt) -> np.ndarray:
    rng = np.random.default_rng(0)
    scales = rng.choice([1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0], 20_000)
    values = (rng.standard_normal(20_000) * scales).astype(np.float32)
    edges = [0.0, fmt.max, fmt.min, -fmt.max, 2 * fmt.max, 1e-30]
    return np.concatenate([np.array(edges, np.float32), values, fmt.quantize(values)])


@pytest.mark.parametrize("name", FORMATS)
def test_both_neighbours_are_values_of_the_format_and_nearest_is_one_of_them(name):
    fmt = parse_format(name)
    x = _values(fmt)
    below, above = (side.numpy() for side in neighbours(torch.from_numpy(x), fmt))
    np.testing.assert_array_equal(fmt.quantize(below), below)
    np.testing.assert_array_equal(fmt.quantize(above), above)
    nearest = fmt.quantize(x)
    assert np.all((nearest == below) | (nearest == above))
    assert np.all(below <= above)
    gap_at_zero = getattr(fmt, "zero", True) is False
    inside = (x >= fmt.min) & (x <= fmt.max)
    if gap_at_zero:
        inside &= np.abs(x) >= 2.0**fmt.exp_min
    assert np.all(below[inside] <= x[inside]) and np.all(x[inside] <= above[inside])
    on_grid = nearest == x
    np.testing.assert_array_equal(below[on_grid], x[on_grid])
    np.testing.assert_array_equal(above[on_grid], x[on_grid])


@pytest.mark.parametrize(
    "names", [("dfp4f1", "dfp4f3", "pow2e-4..0"), ("dfp4f1", "dfp8f6", "dfp4f-2")]
)
def test_each_channel_takes_its_own_format(names):
    formats = tuple(parse_format(n) for n in names)
    x = np.random.default_rng(1).standard_normal((3, 50)) * np.array([[1.0], [0.1], [10.0]])
    x = torch.from_numpy(x.astype(np.float32))
    below, above = neighbours_per_channel(x.T, formats, 1)
    for channel, fmt in enumerate(formats):
        expected = neighbours(x[channel], fmt)
        torch.testing.assert_close(below[:, channel], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(above[:, channel], expected[1], rtol=0, atol=0)
