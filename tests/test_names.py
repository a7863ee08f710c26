import pytest
from conftest import sweep_formats

from rcompile.formats import DFP, MiniFloat, Pow2, parse_format


def test_every_swept_format_name_parses_back_to_the_format():
    for fmt in sweep_formats():
        assert parse_format(fmt.name) == fmt


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("dfp8f5", DFP(8, 5)),
        ("udfp8f-2", DFP(8, -2, signed=False)),
        ("fp16", MiniFloat(5, 10, "ieee")),
        ("bf16", MiniFloat(8, 7, "ieee")),
        ("fp8e4m3", MiniFloat(4, 3, "fn")),
        ("fp8e4m3fn", MiniFloat(4, 3, "fn")),
        ("fp8e5m2", MiniFloat(5, 2, "ieee")),
        ("fp8e4m3r", MiniFloat(4, 3)),
        ("fp8e4m3ieee", MiniFloat(4, 3, "ieee")),
        ("fp8e5m2ieee", MiniFloat(5, 2, "ieee")),
        ("pow2e-8..-1", Pow2(-8, -1)),
        ("pow2e-8..-1r", Pow2(-8, -1, zero=False)),
    ],
)
def test_names_and_aliases(name, fmt):
    assert parse_format(name) == fmt


def test_total_width_must_match_the_fields():
    with pytest.raises(ValueError, match="make 8 bits, not 9"):
        parse_format("fp9e4m3")


def test_unknown_name_lists_the_grammar():
    with pytest.raises(ValueError, match=r"unknown format 'int8'; expected dfp<bw>f<fl>"):
        parse_format("int8")


def test_parameter_errors_surface_through_the_parser():
    with pytest.raises(ValueError, match="bw must be in"):
        parse_format("dfp40f0")
