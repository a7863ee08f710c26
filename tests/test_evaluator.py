"""The search's evaluator decides once whether integer kernels pay off on the model, hands the
decision to worker processes, and scores the same with either kind of kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rcompile.api import load_source
from rcompile.lowering import lower
from rcompile.lowering.values import QuantizedValues
from rcompile.scheme import parse_scheme
from rcompile.search import prepare_evaluator
from rcompile.search.evaluation_form import evaluation_form
from rcompile.search.evaluator import Configuration, Evaluator, _session

ROOT = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    test = np.load(ROOT / "mnist_test.npz")
    val = tmp_path_factory.mktemp("val") / "val.npz"
    np.savez(val, input=test["input"][:200], labels=test["labels"][:200])
    source = load_source(ROOT / "lenet5.onnx").model
    return prepare_evaluator(source, ROOT / "mnist_calib.npz", val)[0]


def test_the_evaluator_measures_once_for_its_workers(evaluator):
    """FP32 outputs and time travel to workers in the data."""
    assert evaluator.data.fp32_seconds == evaluator.fp32_seconds > 0
    worker = Evaluator(evaluator.data)
    assert worker.fp32_seconds == evaluator.fp32_seconds
    assert worker.reference is evaluator.reference


@pytest.mark.parametrize("scheme", ["dfp8", "dfp:w8a6", "dfp:w10a6"])
def test_a_candidate_scores_as_its_written_sim_model(evaluator, scheme):
    """The evaluation form fuses nothing into integer kernels (their sums depend on the CPU),
    so a candidate scores exactly as its written model on LeNet-5."""
    configuration = Configuration(scheme, parse_scheme(scheme))
    plan = evaluator.planner.plan(configuration.scheme)
    written = lower(evaluator.model, plan).model.SerializeToString()
    expected = Evaluator.outputs_of(written, evaluator.data)
    assert evaluator.evaluate(configuration).score == evaluator.data.metric(
        expected, evaluator.data.labels, evaluator.reference
    )


def test_sessions_share_one_memory_arena(evaluator):
    """A fresh arena per candidate would fault its pages in again on every first batch."""
    model = evaluator.data.model
    sessions = [_session(model, evaluator.data, ()) for _ in range(2)]
    for session in sessions:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.use_env_allocators") == "1"


def test_quantized_parameters_are_computed_once_per_layer_rule(evaluator):
    """The planner reuses a layer's formats for a rule it has seen, and so do the rewrites:
    scoring dfp8 again quantizes nothing new, and gives the same model."""
    values = QuantizedValues()
    plan = evaluator.planner.plan(parse_scheme("dfp8"))
    first = evaluation_form(evaluator.model, plan, values).model.SerializeToString()
    entries = len(values)
    again = evaluator.planner.plan(parse_scheme("dfp8"))
    assert evaluation_form(evaluator.model, again, values).model.SerializeToString() == first
    assert entries == len(values) == 2 * len(plan.layers)
    evaluation_form(evaluator.model, evaluator.planner.plan(parse_scheme("dfp:w6a8")), values)
    assert len(values) == 4 * len(plan.layers)
