"""Plans: weight formats per channel or per tensor, signedness of activations, clamp bounds,
the bias on the accumulator grid, the fitting policies, and per-layer overrides."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.errors import SchemeError
from rcompile.formats import DFP, MiniFloat
from rcompile.formats.codes import step_exponent, step_exponents
from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.passes.calibrate import Range, Statistics, weight_ranges
from rcompile.passes.layers import find_layers
from rcompile.plan import (
    PLAN_KEY,
    Accumulator,
    Override,
    Plan,
    Planner,
    PlanOptions,
    _pack,
    load_overrides,
    make_plan,
    plan_record,
    recorded_plan,
)
from rcompile.scheme import DFPRule, FixedRule, Pow2Rule, parse_scheme

F32 = np.float32
CHANNEL_SCALES = np.array([1.0, 10.0, 0.1, 3.0])
# Ranges as observed before any clamp; `c` is the Conv output that a Clip(0, 6) reads.
ACTIVATIONS = {
    "x": Range(-2.0, 3.0),
    "c": Range(-20.0, 40.0),
    "f": Range(0.0, 6.0),
    "y": Range(-7.0, 9.0),
}


def network(bias_scale: float = 0.5, seed: int = 0) -> onnx.ModelProto:
    """x (N, 2, 5, 5) -> Conv (4 channels of different scales) -> c -> Clip(0, 6) -> Flatten
    -> f -> Gemm (transB=1, 3 outputs) -> y."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(size=(4, 2, 3, 3)) * CHANNEL_SCALES.reshape(4, 1, 1, 1)
    initializers = {
        "conv_w": conv_w,
        "conv_b": rng.normal(size=4) * bias_scale,
        "gemm_w": rng.normal(size=(3, 36)),
        "gemm_b": rng.normal(size=3) * bias_scale,
        "low": np.array(0.0),
        "high": np.array(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv"),
        helper.make_node("Clip", ["c", "low", "high"], ["r"], name="clip"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gemm_w", "gemm_b"], ["y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.asarray(v, F32), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def plan_for(
    scheme: str = "dfp8",
    options: PlanOptions | None = None,
    overrides: tuple[Override, ...] = (),
    activations: dict[str, Range] | None = None,
    model: onnx.ModelProto | None = None,
) -> Plan:
    model = model or network()
    layers = find_layers(model)
    statistics = Statistics(
        {**ACTIVATIONS, **(activations or {})}, weight_ranges(model, layers), samples=10
    )
    return make_plan(layers, statistics, parse_scheme(scheme), options, overrides)


def layer(plan: Plan, node: str):
    return next(p for p in plan.layers if p.layer.node == node)


def conv_weight() -> np.ndarray:
    model = network()
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv_w"))


def test_weights_get_one_format_per_output_channel_by_default():
    weight = conv_weight()
    expected = tuple(
        DFPRule(8).for_weights(float(np.abs(channel).max()), channel.ravel()) for channel in weight
    )
    assert layer(plan_for(), "conv").weights == expected


def test_per_channel_formats_follow_each_channels_scale():
    fls = [fmt.fl for fmt in layer(plan_for(), "conv").weights]
    assert fls[2] > fls[0] > fls[3] > fls[1]


def test_per_tensor_weights_get_one_format_for_the_whole_tensor():
    weight = conv_weight()
    plan = plan_for(options=PlanOptions(per_channel=False))
    expected = DFPRule(8).for_weights(float(np.abs(weight).max()), weight.ravel())
    assert layer(plan, "conv").weights == (expected,)


def test_activation_with_a_negative_minimum_is_signed():
    assert layer(plan_for(), "conv").inputs[0].signed


def test_activation_with_a_non_negative_minimum_is_unsigned():
    plan = plan_for(activations={"x": Range(0.0, 3.0)})
    assert layer(plan, "conv").inputs == (DFP(8, 6, signed=False),)


def test_signed_option_keeps_non_negative_activations_signed():
    plan = plan_for(options=PlanOptions(unsigned=False), activations={"x": Range(0.0, 3.0)})
    assert layer(plan, "conv").inputs == (DFP(8, 5, signed=True),)


def test_output_read_by_clip_0_6_is_unsigned_and_covers_6_only():
    output = layer(plan_for(), "conv").output
    assert not output.signed
    assert 6.0 <= output.max < 16.0


def test_output_not_clamped_covers_its_observed_range():
    output = layer(plan_for(), "gemm").output
    assert output.signed
    assert output.max >= 9.0 - output.step


def test_bias_sits_on_the_accumulator_grid_of_each_channel():
    plan = layer(plan_for(), "conv")
    input_fl = plan.inputs[0].fl
    assert [b.fl for b in plan.bias] == [input_fl + w.fl for w in plan.weights]
    assert all(b.bw == 32 for b in plan.bias)


def test_large_bias_gets_codes_that_fit_32_bits():
    model = network(bias_scale=1e6)
    bias = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv_b"))
    plan = layer(plan_for(model=model), "conv")
    fitted = DFP.for_weights(32, float(np.abs(bias).max())).fl
    assert all(b.fl <= fitted for b in plan.bias)
    assert all(
        b.fl <= plan.inputs[0].fl + w.fl for b, w in zip(plan.bias, plan.weights, strict=True)
    )


def test_bias_stays_on_the_grid_of_a_channel_with_near_zero_weights():
    """A channel of weights about 1e-9 (a folded BatchNorm with gamma near 0) would get a
    product grid so fine that its bias overflows 32 bits, forcing the bias out of the layer."""
    model = network(bias_scale=2.0)
    weight = next(t for t in model.graph.initializer if t.name == "conv_w")
    values = numpy_helper.to_array(weight).copy()
    values[2] *= 1e-8
    weight.CopyFrom(numpy_helper.from_array(values, "conv_w"))
    plan = layer(plan_for(model=model), "conv")
    assert [b.fl for b in plan.bias] == [plan.inputs[0].fl + w.fl for w in plan.weights]
    bias = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv_b"))
    assert all(abs(b) * 2.0**fmt.fl < 2**31 for b, fmt in zip(bias, plan.bias, strict=True))


def test_weights_bias_mode_uses_the_weight_rule():
    model = network()
    bias = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv_b"))
    plan = layer(plan_for(options=PlanOptions(bias="weights")), "conv")
    assert plan.bias == (DFPRule(8).for_weights(float(np.abs(bias).max()), bias),)


def test_pow2_bias_sits_on_the_grid_of_input_times_shift():
    plan = layer(plan_for("pow2"), "conv")
    input_fl = plan.inputs[0].fl
    assert [b.fl for b in plan.bias] == [input_fl - w.exp_min for w in plan.weights]


def test_ristretto_fit_gives_activations_one_integer_bit_less_than_max_fit():
    ristretto = layer(plan_for(options=PlanOptions(fit="ristretto")), "gemm")
    maximum = layer(plan_for(options=PlanOptions(fit="max")), "gemm")
    assert ristretto.inputs[0].fl == maximum.inputs[0].fl + 1
    assert ristretto.output.fl == maximum.output.fl + 1


def test_max_fit_weights_hold_their_largest_value():
    plan = layer(plan_for(options=PlanOptions(fit="max")), "conv")
    weight = conv_weight()
    maxima = np.abs(weight).reshape(4, -1).max(axis=1)
    assert all(fmt.max + fmt.step >= m for fmt, m in zip(plan.weights, maxima, strict=True))


def test_unscaled_minifloat_scheme_gives_every_tensor_its_format():
    plan = layer(plan_for("fp8e4m3:unscaled"), "conv")
    fp8 = MiniFloat(4, 3, "fn")
    assert (plan.inputs, plan.output, plan.weights) == ((fp8,), fp8, (fp8,))


def test_scaled_minifloat_scheme_fits_every_tensor_and_weight_channel_its_bias():
    """Each activation and each weight channel gets E4M3 with the finest bias that covers
    its range; the bias lies in the accumulator, 32-bit fixed point on the grid of the finest
    products (or coarser, as far as the bias needs)."""
    plan = layer(plan_for("fp8e4m3"), "conv")
    maxima = np.abs(conv_weight()).reshape(4, -1).max(axis=1)
    fp8 = MiniFloat(4, 3, "fn")
    assert plan.weights == tuple(fp8.covering(m) for m in maxima)
    assert plan.inputs == (fp8.covering(ACTIVATIONS[plan.layer.inputs[0]].max_abs),)
    assert all(w.max >= m > w.max / 2 for w, m in zip(plan.weights, maxima, strict=True))
    grids = -(step_exponent(plan.inputs[0]) + step_exponents(plan.weights))
    assert all(
        isinstance(b, DFP) and b.bw == 32 and b.fl <= g
        for b, g in zip(plan.bias, grids, strict=True)
    )


@pytest.mark.parametrize(
    ("bias", "fit"), [("weights", "bogus"), ("accumulator", "least"), ("float", "mse")]
)
def test_unknown_plan_option_raises(bias, fit):
    with pytest.raises(SchemeError, match="must be one of"):
        PlanOptions(bias=bias, fit=fit)


@pytest.mark.parametrize("reverse", [False, True])
def test_override_by_exact_node_name_beats_a_pattern(reverse):
    overrides = (Override("conv", weights=DFPRule(4)), Override("c*", weights=DFPRule(6)))
    plan = plan_for(overrides=overrides[::-1] if reverse else overrides)
    assert {fmt.bw for fmt in layer(plan, "conv").weights} == {4}


def test_override_by_op_type_applies_to_that_op_only():
    plan = plan_for(overrides=(Override("Gemm", input=DFPRule(16)),))
    assert layer(plan, "gemm").inputs[0].bw == 16
    assert layer(plan, "conv").inputs[0].bw == 8


def test_skipped_layer_is_left_out_of_the_plan_and_listed():
    plan = plan_for(overrides=(Override("gemm", skip=True),))
    assert [p.layer.node for p in plan.layers] == ["conv"]
    assert plan.skipped == ("gemm",)


def test_pinned_exact_format_is_used_as_given(tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"conv": {"weights": "dfp8f3"}}))
    plan = plan_for(overrides=load_overrides(path))
    assert layer(plan, "conv").weights == (DFP(8, 3),)


def test_activations_setting_overrides_input_and_output(tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"conv": {"activations": "dfp16"}}))
    (override,) = load_overrides(path)
    assert (override.input, override.output) == (DFPRule(16), DFPRule(16))
    plan = layer(plan_for(overrides=(override,)), "conv")
    assert (plan.inputs[0].bw, plan.output.bw) == (16, 16)


def test_explicit_input_wins_over_activations(tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"conv": {"activations": "dfp16", "input": "dfp4"}}))
    (override,) = load_overrides(path)
    assert (override.input, override.output) == (DFPRule(4), DFPRule(16))


def test_power_of_two_activations_are_refused():
    with pytest.raises(SchemeError, match="layer 'conv': power-of-two is for weights"):
        plan_for(overrides=(Override("conv", input=Pow2Rule(4)),))


def test_override_matching_no_layer_raises_listing_the_layers():
    with pytest.raises(SchemeError, match=r"'fc9' matches no quantizable layer.*conv, gemm"):
        plan_for(overrides=(Override("fc9", weights=DFPRule(4)),))


def test_unknown_override_key_raises(tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"conv": {"weight": "dfp8"}}))
    with pytest.raises(SchemeError, match="unknown key 'weight' for 'conv'"):
        load_overrides(path)


def test_overrides_load_from_json(tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"conv": {"weights": "dfp4", "bias": "dfp16"}, "Gemm": {}}))
    assert load_overrides(path) == (
        Override("conv", weights=DFPRule(4), bias=DFPRule(16)),
        Override("Gemm"),
    )


def test_overrides_load_from_yaml(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("conv:\n  weights: dfp8f3\n  output: fp8e4m3\nGemm:\n  skip: true\n")
    assert load_overrides(path) == (
        Override("conv", weights=FixedRule(DFP(8, 3)), output=FixedRule(MiniFloat(4, 3, "fn"))),
        Override("Gemm", skip=True),
    )


@pytest.mark.parametrize(("name", "text"), [("o.json", "{not json"), ("o.yml", "a: [1, 2")])
def test_unparseable_overrides_file_raises(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SchemeError, match="cannot parse"):
        load_overrides(path)


@pytest.mark.parametrize(("name", "text"), [("o.json", "[1, 2]"), ("o.yaml", "- conv\n")])
def test_overrides_file_that_is_not_a_mapping_raises(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SchemeError, match="expected a mapping"):
        load_overrides(path)


def test_settings_that_are_not_a_mapping_raise(tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"conv": "dfp8"}))
    with pytest.raises(SchemeError, match="settings for 'conv' must be a mapping"):
        load_overrides(path)


def test_missing_overrides_file_raises(tmp_path):
    with pytest.raises(SchemeError, match="no such overrides file"):
        load_overrides(tmp_path / "absent.json")


def test_plan_as_dict_names_every_format():
    plan = plan_for(overrides=(Override("gemm", skip=True),)).as_dict()
    assert plan["scheme"] == "dfp8"
    assert plan["skipped"] == ["gemm"]
    (conv,) = plan["layers"]
    assert (conv["node"], conv["op_type"], len(conv["weights"])) == ("conv", "Conv", 4)
    assert conv["output"].startswith("udfp8f")
    assert len(conv["bias"]) == 4


def planner() -> Planner:
    model = network()
    layers = find_layers(model)
    return Planner(layers, Statistics(ACTIVATIONS, weight_ranges(model, layers), samples=10))


@pytest.mark.parametrize("scheme", ["dfp8", "dfp:w4a6", "pow2"])
def test_planner_plans_what_make_plan_plans(scheme):
    reused = planner()
    reused.plan(parse_scheme("dfp:w4a6"), (Override("gemm", weights=DFPRule(3)),))
    assert reused.plan(parse_scheme(scheme)) == plan_for(scheme)


def test_planner_reuses_the_plans_of_layers_whose_rules_did_not_change():
    reused = planner()
    first = reused.plan(parse_scheme("dfp8"))
    second = reused.plan(parse_scheme("dfp8"), (Override("gemm", weights=DFPRule(4)),))
    assert layer(second, "conv") is layer(first, "conv")
    assert layer(second, "gemm").weights[0].bw == 4
    assert layer(first, "gemm").weights[0].bw == 8


@pytest.mark.parametrize(
    ("scheme", "bits"), [("dfp8", 32), ("dfp:w4a8", 32), ("dfp16", 64), ("fp8e4m3", 64)]
)
def test_accumulators_default_to_32_bits_for_8x8_products_and_64_beyond(scheme, bits):
    plan = plan_for(scheme)
    assert {p.accumulator for p in plan.layers} == {Accumulator(bits, "saturate")}


def test_an_override_sets_one_layers_accumulator(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("conv:\n  accumulator: 20\n  overflow: wrap\n")
    plan = plan_for(overrides=load_overrides(path))
    assert layer(plan, "conv").accumulator == Accumulator(20, "wrap")
    others = {p.accumulator for p in plan.layers if p.layer.node != "conv"}
    assert others == {Accumulator(32, "saturate")}


@pytest.mark.parametrize(
    "settings",
    [{"accumulator": 7}, {"accumulator": 65}, {"accumulator": "wide"}, {"overflow": "clamp"}],
)
def test_an_invalid_accumulator_override_is_refused_naming_the_layer(settings, tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"conv": settings}))
    with pytest.raises(SchemeError, match="'conv'"):
        load_overrides(path)


def test_the_plan_records_each_layers_accumulator():
    entry = plan_for("dfp8@up").as_dict()["layers"][0]
    assert entry["accumulator"] == {"bits": 32, "overflow": "saturate"}
    assert entry["output"].endswith("@up")


@pytest.mark.parametrize(
    "names",
    [
        ["dfp8f5", "dfp8f4", "dfp8f4", "dfp8f5"],
        ["fp8e4m3"] * 3,
        ["dfp8f5", "dfp8f15", "dfp8f-2"],
        ["udfp8f8@away", "udfp8f-2@away"],
        ["dfp32f13"],
        [],
    ],
)
def test_a_recorded_plan_gives_back_every_per_channel_format(names):
    """The model carries each per-channel list packed (`dfp8f{5,4,4,5}`); reading the plan
    back gives the list exactly."""
    model = onnx.ModelProto()
    layer = {"node": "conv", "weights": names, "bias": names[::-1], "inputs": ["dfp8f3"]}
    plan = {"scheme": "dfp8", "layers": [layer], "skipped": []}
    packed = {**layer, "weights": _pack(names), "bias": _pack(names[::-1])}
    model.metadata_props.add(key=PLAN_KEY, value=json.dumps({**plan, "layers": [packed]}))
    assert recorded_plan(model) == plan


def test_the_recorded_plan_packs_per_channel_formats_and_compresses_them():
    plan = planner().plan(parse_scheme("dfp8"))
    text = zlib.decompress(base64.b64decode(plan_record(plan))).decode()
    record = json.loads(text)
    assert all(isinstance(layer["weights"], str) for layer in record["layers"])
    assert len(plan_record(plan)) < len(text)
    model = onnx.ModelProto()
    model.metadata_props.add(key=PLAN_KEY, value=plan_record(plan))
    assert recorded_plan(model) == plan.as_dict()


def test_products_no_64_bit_register_holds_get_an_exact_accumulator():
    """bfloat16's codes span 2**-133 to 2**128 steps: a product needs far more than 64 bits,
    so the default register is exact (a floating-point datapath), where fp8's stays 64."""
    bf16 = layer(planner().plan(parse_scheme("bf16")), "conv")
    assert bf16.accumulator == Accumulator(None) and bf16.accumulator.largest == float("inf")
    assert layer(planner().plan(parse_scheme("fp8e4m3")), "conv").accumulator.bits == 64


def test_activation_fit_reads_the_histograms_and_leaves_pinned_formats_alone():
    """`activation_fit="mse"` narrows a heavy-tailed input's range; the default (`max`), an
    unscaled mini float and `fit="ristretto"` do not read the histogram."""
    from rcompile.histogram import MagnitudeHistogram

    rng = np.random.default_rng(4)
    values = rng.laplace(scale=0.5, size=100_000).astype(np.float32)
    values[0] = 16.0
    histogram = MagnitudeHistogram()
    histogram.add(values)
    model = network()
    layers = find_layers(model)
    ranges = {**ACTIVATIONS, "x": Range(float(values.min()), float(values.max()))}
    statistics = Statistics(ranges, weight_ranges(model, layers), 10, histograms={"x": histogram})

    def input_format(scheme: str, **options) -> object:
        plan = make_plan(layers, statistics, parse_scheme(scheme), PlanOptions(**options))
        return layer(plan, "conv").inputs[0]

    covering = input_format("dfp8")
    assert covering == DFP.for_range(8, 16.0, signed=True)
    assert input_format("dfp8", activation_fit="mse").fl > covering.fl
    assert input_format("dfp8", activation_fit="mse", fit="ristretto") == input_format(
        "dfp8", fit="ristretto"
    )
    unscaled = input_format("fp8e4m3:unscaled")
    assert input_format("fp8e4m3:unscaled", activation_fit="mse") == unscaled
