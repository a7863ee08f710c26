"""The search's contracts on the real LeNet-5 with a 1-point margin: Ristretto's procedure
chooses at most 8 bits everywhere, the per-layer search needs strictly fewer weight bits, the
chosen model is within the margin and really scores what the search says in onnxruntime, the
same inputs choose the same configuration, an interrupt returns the best configuration so far,
and the budget caps the evaluations."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import rcompile
import rcompile.search.evaluator as evaluator_module
from rcompile.errors import UserError
from rcompile.graph import initializers
from rcompile.importer import load_model
from rcompile.passes.layers import find_layers
from rcompile.report_markdown import render_markdown
from rcompile.search import NoConfigurationError, SearchResult, search
from rcompile.search.cost import layer_sizes, plan_cost

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "mnist_calib.npz"
TEST = ROOT / "models" / "mnist_test.npz"
MARGIN = 1.0
FP32_TOP1 = 97.9
ACCUMULATOR_BITS = 32


def run(mode: str, **options) -> SearchResult:
    return search(LENET, CALIB, TEST, options.pop("margin", MARGIN), mode=mode, **options)


def details(found: SearchResult) -> dict:
    return found.result.report.as_dict()["search"]


@pytest.fixture(scope="module")
def ristretto() -> SearchResult:
    return run("ristretto")


@pytest.fixture(scope="module")
def layerwise() -> SearchResult:
    return run("layerwise")


@pytest.fixture(scope="module")
def layerwise_again() -> SearchResult:
    return run("layerwise")


@pytest.fixture(scope="module")
def sizes():
    return layer_sizes(load_model(LENET))


@pytest.fixture(scope="module")
def lenet_layers():
    return [layer.node for layer in find_layers(load_model(LENET))]


def top1_in_onnxruntime(model: onnx.ModelProto) -> float:
    with np.load(TEST) as arrays:
        images, labels = arrays["input"], arrays["labels"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


def assert_all_quantized_within(found: SearchResult, bits: int, layers: list[str]) -> None:
    """Every layer of the chosen plan quantizes its weights, inputs and output, each at most
    `bits` wide (the bias is added at the accumulator's width, as documented)."""
    plan = found.result.plan
    assert [p.layer.node for p in plan.layers] == layers
    assert not plan.skipped
    label = details(found)["chosen"]
    for layer in plan.layers:
        node = layer.layer.node
        assert layer.weights, f"{node}: weights left FP32 in the chosen {label!r}"
        assert layer.output is not None, f"{node}: output left FP32 in the chosen {label!r}"
        assert all(fmt is not None for fmt in layer.inputs), f"{node}: input left FP32 ({label})"
        for fmt in (*layer.weights, *layer.inputs, layer.output):
            assert fmt.bit_width <= bits, f"{node}: {fmt.name} is wider than {bits} bits"
        for fmt in layer.bias:
            assert fmt.bit_width <= bits or fmt.bit_width == ACCUMULATOR_BITS, fmt.name


# --- the contracts --------------------------------------------------------------------


def test_ristretto_chooses_at_most_8_bits_everywhere(ristretto, lenet_layers) -> None:
    assert details(ristretto)["mode"] == "ristretto"
    assert_all_quantized_within(ristretto, 8, lenet_layers)


def test_ristretto_choice_on_lenet_is_conv4_fc4_activations8(ristretto) -> None:
    assert details(ristretto)["chosen"] == (
        "combined CONV weights 4-bit, FC weights 4-bit, layer activations 8-bit"
    )
    for layer in ristretto.result.plan.layers:
        assert {fmt.bit_width for fmt in layer.weights} == {4}
        assert layer.output.bit_width == 8
        assert {fmt.bit_width for fmt in layer.inputs} == {8}


def test_ristretto_choice_is_what_compile_writes_for_those_widths(ristretto) -> None:
    """The search scores, and writes, its candidates as `rcompile.compile` writes them: with
    bias correction (each bias moved for its layer's quantized weights), so uniform dfp:w4a8
    gives the same plan and the same initializers as the compiler's."""
    compiled = rcompile.compile(LENET, "dfp:w4a8", CALIB)
    assert ristretto.result.report.as_dict()["options"]["bias_correction"] is True
    assert ristretto.result.plan.as_dict()["layers"] == compiled.plan.as_dict()["layers"]
    ours, theirs = initializers(ristretto.result.model.graph), initializers(compiled.model.graph)
    assert ours.keys() == theirs.keys()
    for name, values in theirs.items():
        assert np.array_equal(ours[name], values), name


@pytest.mark.parametrize("cost", ["activations", "bitops"])
def test_ristretto_chooses_at_most_8_bits_everywhere_for_every_cost(cost, lenet_layers) -> None:
    """Ristretto's procedure ends in a combined network; the per-group probes (one group
    quantized, the rest FP32) are measurements, not candidates for the result."""
    found = run("ristretto", cost=cost)
    assert details(found)["cost"] == cost
    assert_all_quantized_within(found, 8, lenet_layers)


def test_layerwise_uses_strictly_fewer_weight_bits_than_ristretto(
    ristretto, layerwise, sizes, lenet_layers
) -> None:
    ours, theirs = details(layerwise), details(ristretto)
    assert ours["cost"] == theirs["cost"] == "weights"
    assert ours["chosen_cost"] < theirs["chosen_cost"]
    assert plan_cost(layerwise.result.plan, sizes, "weights") == ours["chosen_cost"]
    assert plan_cost(ristretto.result.plan, sizes, "weights") == theirs["chosen_cost"]
    # and the report's parameter memory says the same
    totals = layerwise.result.report.as_dict()["totals"]
    assert totals["parameter_memory_bits"] == ours["chosen_cost"]
    assert_all_quantized_within(layerwise, 8, lenet_layers)


@pytest.mark.parametrize("which", ["ristretto", "layerwise"])
def test_chosen_model_is_within_the_margin(which, request) -> None:
    found = request.getfixturevalue(which)
    section = details(found)
    assert section["fp32_score"] == pytest.approx(FP32_TOP1)
    assert section["metric"] == "top1"
    assert section["margin"] == MARGIN
    assert section["threshold"] == pytest.approx(section["fp32_score"] - MARGIN)
    assert section["chosen_score"] >= section["fp32_score"] - MARGIN
    assert not found.interrupted and section["interrupted"] is False


@pytest.mark.parametrize("which", ["ristretto", "layerwise"])
def test_chosen_model_really_scores_that_in_onnxruntime(which, request) -> None:
    found = request.getfixturevalue(which)
    section = details(found)
    onnx.checker.check_model(found.result.model)
    assert top1_in_onnxruntime(found.result.model) == pytest.approx(
        section["chosen_score"], abs=1e-6
    )
    chosen_rows = [row for row in section["table"] if row["label"] == section["chosen"]]
    assert chosen_rows and chosen_rows[0]["within_margin"]
    assert chosen_rows[0]["cost"] == section["chosen_cost"]


@pytest.mark.parametrize("which", ["ristretto", "layerwise"])
def test_chosen_is_the_cheapest_within_the_margin_of_the_table(which, request) -> None:
    section = details(request.getfixturevalue(which))
    table = section["table"]
    assert len(table) == section["evaluations"]
    passing = [row for row in table if row["within_margin"]]
    assert min(row["cost"] for row in passing) == section["chosen_cost"]
    for row in table:
        assert row["within_margin"] == (row["drop_bound"] <= section["margin"] + 1e-9)
        assert row["drop_bound"] >= section["fp32_score"] - row["score"] - 1e-9
    chosen = next(row for row in table if row["label"] == section["chosen"])
    assert chosen["pareto"]


def test_same_inputs_choose_the_same_configuration(layerwise, layerwise_again) -> None:
    first, second = details(layerwise), details(layerwise_again)
    assert first["chosen"] == second["chosen"]
    assert first["chosen_score"] == second["chosen_score"]
    assert layerwise.result.plan.as_dict() == layerwise_again.result.plan.as_dict()
    assert [(r["label"], r["score"], r["cost"]) for r in first["table"]] == [
        (r["label"], r["score"], r["cost"]) for r in second["table"]
    ]
    assert (
        layerwise.result.model.SerializeToString()
        == layerwise_again.result.model.SerializeToString()
    )
    assert layerwise.summary == layerwise_again.summary
    assert layerwise.plot == layerwise_again.plot


def test_report_accuracy_uses_the_documented_shares(ristretto) -> None:
    """docs/report.md: `accuracy` holds top1/top5/agreement as shares, as `rcompile` writes
    them; report.md renders them as percentages."""
    report = ristretto.result.report.as_dict()
    section = report["search"]
    accuracy = report["accuracy"]
    assert accuracy["samples"] == 1000
    assert accuracy["fp32"]["top1"] == pytest.approx(section["fp32_score"] / 100)
    assert accuracy["quantized"]["top1"] == pytest.approx(section["chosen_score"] / 100)
    markdown = render_markdown(report)
    assert "| fp32 | 97.90 %" in markdown
    assert "| quantized | 97.30 %" in markdown


def test_ristretto_summary_names_the_groups_and_the_choice(ristretto) -> None:
    summary = ristretto.summary
    assert summary[0] == summary[-1] == "-" * 30
    assert "Baseline 32bit float: 97.90" in summary
    for title in ("CONV weights:", "FC weights:", "layer activations:"):
        assert title in summary
    assert f"Chosen: {details(ristretto)['chosen']}" in summary
    assert any(line.startswith("top1: 97.30 (drop at most ") for line in summary)


def test_plot_has_one_point_per_evaluation_and_the_ring(ristretto) -> None:
    circles = ET.fromstring(ristretto.plot).findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) == details(ristretto)["evaluations"] + 1


# --- interrupt, budget, unlabelled data -------------------------------------------------------


def test_interrupt_returns_the_best_configuration_so_far(ctrl_c_after_20) -> None:
    found = run("layerwise")
    section = details(found)
    assert found.interrupted is True
    assert section["interrupted"] is True
    assert section["evaluations"] == 20 == len(section["table"])
    # the per-group widths and their combination are done; the per-layer search is not
    assert any(row["label"].startswith("combined") for row in section["table"])
    passing = [row for row in section["table"] if row["within_margin"]]
    best = min(passing, key=lambda row: (row["cost"], row["drop_bound"], row["divergence"]))
    assert section["chosen"] == best["label"]
    assert section["chosen_cost"] == best["cost"]
    assert section["chosen_score"] >= section["threshold"]
    onnx.checker.check_model(found.result.model)
    assert top1_in_onnxruntime(found.result.model) == pytest.approx(
        section["chosen_score"], abs=1e-6
    )


def test_interrupt_before_anything_passes_says_nothing_was_found(monkeypatch) -> None:
    def always_interrupted(self, configuration):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluator_module.Evaluator, "evaluate", always_interrupted)
    with pytest.raises(NoConfigurationError, match="no configuration"):
        run("ristretto")


def test_budget_caps_the_number_of_evaluations() -> None:
    """docs/search.md: `--budget N` stops after N evaluations."""
    budget = 20
    try:
        found = run("layerwise", budget=budget)
    except NoConfigurationError:
        return
    assert details(found)["evaluations"] <= budget


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "unlabelled.npz"
    with np.load(TEST) as arrays:
        np.savez(path, input=arrays["input"][:500])
    return path


@pytest.fixture(scope="module")
def ristretto_unlabelled(unlabelled) -> SearchResult:
    return search(LENET, CALIB, unlabelled, MARGIN, mode="ristretto")


def test_unlabelled_validation_data_uses_agreement(ristretto_unlabelled) -> None:
    section = details(ristretto_unlabelled)
    assert section["metric"] == "agreement"
    assert section["fp32_score"] == 100.0
    assert section["chosen_score"] >= 100.0 - MARGIN


def test_ristretto_on_unlabelled_data_chooses_a_combined_network(
    ristretto_unlabelled, lenet_layers
) -> None:
    """With agreement on these 500 images the combined 4/4/8 network fails and 4/8/8 passes
    (489,112 bits); the probe "FC weights 4-bit" (CONV weights and every activation FP32,
    318,840 bits) is a measurement of one group, not a network the procedure builds, and
    must not be the result."""
    assert_all_quantized_within(ristretto_unlabelled, 8, lenet_layers)


def test_top1_without_labels_is_a_user_error(unlabelled) -> None:
    with pytest.raises(UserError, match="needs labels"):
        search(LENET, CALIB, unlabelled, MARGIN, mode="ristretto", metric="top1")


@pytest.mark.parametrize(
    ("option", "value"),
    [("mode", "greedy"), ("cost", "latency"), ("families", "int8")],
)
def test_invalid_choices_are_user_errors(option, value) -> None:
    with pytest.raises(UserError, match=value):
        search(LENET, CALIB, TEST, MARGIN, **{option: value})


@pytest.mark.parametrize("margin", [-0.5, float("nan"), float("inf")])
def test_invalid_margins_are_user_errors(margin) -> None:
    with pytest.raises(UserError, match="margin"):
        search(LENET, CALIB, TEST, margin, mode="ristretto")
