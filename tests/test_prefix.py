"""Reusing the values before one layer across candidates that differ only from that layer on
gives the outputs of running each candidate whole, bit for bit, and is refused when anything
before the cut changed."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_evaluation_form import ROOT, lenet_planner, relu6_planner

import rcompile.search.prefix as prefix_module
from rcompile.lowering.rewrite import rewrite
from rcompile.plan import Override
from rcompile.scheme import parse_rule, parse_scheme
from rcompile.search.evaluation_form import DISABLED_OPTIMIZERS, EVALUATION
from rcompile.search.prefix import SharedPrefix

FP32 = parse_rule("fp32")


def session(model: bytes):
    return ort.InferenceSession(
        model,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    ).run


def whole(rewritten, batches: list[dict]) -> np.ndarray:
    first = rewritten.model.graph.output[0].name
    run = session(rewritten.model.SerializeToString())
    return np.concatenate([run([first], batch)[0] for batch in batches])


@pytest.fixture(scope="module")
def lenet():
    images = np.load(ROOT / "mnist_test.npz")["input"][:96]
    batches = [{"input": images[i : i + 32]} for i in range(0, 96, 32)]
    return (*lenet_planner(), batches)


@pytest.fixture(scope="module")
def relu6():
    rng = np.random.default_rng(5)
    batches = [{"x": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
    return (*relu6_planner(), batches)


def trials(network, scheme: str, layer_index: int, rules: list[str], fixed=()):
    """The candidates of one knob: `scheme` with layer `layer_index`'s weights at each rule."""
    model, layers, planner, _ = network
    node = layers[layer_index].node
    return node, [
        rewrite(
            model,
            planner.plan(parse_scheme(scheme), (*fixed, Override(node, weights=parse_rule(r)))),
            EVALUATION,
        )
        for r in rules
    ]


def reuses(shared: SharedPrefix, candidates, batches: list[dict]) -> list[bool]:
    """Score the candidates in turn, each bit for bit as run whole; whether each reused
    kept values."""
    used = []
    for candidate in candidates:
        outputs, reused = shared.outputs(candidate, batches, session)
        used.append(reused)
        np.testing.assert_array_equal(outputs, whole(candidate, batches))
    return used


@pytest.mark.parametrize(
    ("network", "scheme", "layer", "fixed"),
    [
        ("lenet", "dfp8", 2, ()),
        ("lenet", "dfp:w10a6", 1, ()),
        ("lenet", "dfp8", 3, (Override("*", input=FP32, output=FP32, weights=FP32),)),
        ("relu6", "dfp:w6a5", 1, ()),
        ("relu6", "dfp:w12a6", 2, ()),
    ],
    ids=["lenet-dfp8", "lenet-wide", "lenet-fp32-rest", "relu6-pad", "relu6-wide"],
)
def test_later_trials_reuse_the_prefix_and_match_running_whole(
    request, network, scheme, layer, fixed
):
    network = request.getfixturevalue(network)
    batches = network[3]
    # Widths that keep every layer's codes int8: a layer going to int4 codes changes how the
    # evaluation form runs the layers before the cut, and those trials run whole.
    node, candidates = trials(network, scheme, layer, ["dfp6", "dfp5", "dfp7"], fixed)
    assert reuses(SharedPrefix(node), candidates, batches) == [False, True, True]


def test_a_change_before_the_cut_runs_whole(lenet):
    batches = lenet[3]
    node, (first,) = trials(lenet, "dfp8", 2, ["dfp6"])
    _, (changed,) = trials(lenet, "dfp8", 2, ["dfp6"], (Override(lenet[1][0].node, weights=FP32),))
    shared = SharedPrefix(node)
    shared.outputs(first, batches, session)
    outputs, used = shared.outputs(changed, batches, session)
    assert not used
    np.testing.assert_array_equal(outputs, whole(changed, batches))


def test_values_beyond_the_memory_cap_are_not_kept(lenet, monkeypatch):
    monkeypatch.setattr(prefix_module, "MAX_KEPT_BYTES", 1000)
    batches = lenet[3]
    node, candidates = trials(lenet, "dfp8", 2, ["dfp6", "dfp3"])
    shared = SharedPrefix(node)
    used = [shared.outputs(candidate, batches, session)[1] for candidate in candidates]
    assert used == [False, False]


def test_a_later_knob_starts_from_the_values_kept_for_the_one_before(lenet):
    """The next knob's first trial starts at the previous knob's cut when its layer comes
    later, and keeps the values at its own cut; an earlier layer's first trial runs whole."""
    batches = lenet[3]
    earlier, (first,) = trials(lenet, "dfp:w10a6", 1, ["dfp6"])
    later, (second, third) = trials(lenet, "dfp:w10a6", 3, ["dfp5", "dfp4"])
    back, (fourth,) = trials(lenet, "dfp:w10a6", 2, ["dfp5"])
    shared = SharedPrefix(earlier)
    used = [shared.outputs(first, batches, session)[1]]
    shared.layer = later
    for candidate in (second, third):
        outputs, reused = shared.outputs(candidate, batches, session)
        used.append(reused)
        np.testing.assert_array_equal(outputs, whole(candidate, batches))
    shared.layer = back
    outputs, reused = shared.outputs(fourth, batches, session)
    np.testing.assert_array_equal(outputs, whole(fourth, batches))
    assert [*used, reused] == [False, True, True, False]


def test_changed_constants_before_the_cut_run_whole(lenet):
    """Same nodes before the cut, other weight values (dfp8 and dfp6 codes are both int8
    behind the same nodes): the kept values are not reused."""
    batches = lenet[3]
    node, (first,) = trials(lenet, "dfp8", 2, ["dfp6"])
    earlier = Override(lenet[1][0].node, weights=parse_rule("dfp6"))
    _, (changed,) = trials(lenet, "dfp8", 2, ["dfp6"], (earlier,))
    shared = SharedPrefix(node)
    shared.outputs(first, batches, session)
    outputs, used = shared.outputs(changed, batches, session)
    assert not used
    np.testing.assert_array_equal(outputs, whole(changed, batches))
