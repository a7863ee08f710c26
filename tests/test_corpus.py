"""Models rcompile's authors did not make: the four third-party models of
../shared/models/corpus/ (PP-OCRv4 detector and recogniser, a PP-OCR direction classifier,
YOLOv8n; skipped when absent) compile as a user would run them, with nothing of the input
lost and nothing dead left, to a file a fraction of FP32's, that onnxruntime loads at every
optimisation level; the small ones are bit-true against the reference. bench/corpus.py
measures their fidelity on real-looking inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import rcompile_run

from rcompile.graph import values_read
from rcompile.reference import Reference

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "models" / "corpus"
# model: (input shape of one sample, largest dfp8 file as a share of FP32's)
MODELS = {
    "ppocrv4_rec.onnx": ((3, 48, 320), 0.30),
    "ppocrv4_det.onnx": ((3, 160, 160), 0.30),
    "ppocr_mobile_cls.onnx": ((3, 48, 192), 0.48),
    "yolov8n_320.onnx": ((3, 320, 320), 0.29),
}
LEVELS = (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
)


@pytest.fixture(scope="module", params=list(MODELS))
def compiled(request, tmp_path_factory):
    """One corpus model compiled with dfp8 on 6 inputs: (source, written model, inputs)."""
    source = CORPUS / request.param
    if not source.is_file():
        pytest.skip(f"{source} not found (../shared is absent)")
    shape, _ = MODELS[request.param]
    folder = tmp_path_factory.mktemp(source.stem)
    name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    x = np.random.default_rng(0).uniform(-1, 1, size=(8, *shape)).astype(np.float32)
    np.savez(folder / "calib.npz", **{name: x[:6]})
    result = rcompile_run(source, "-o", folder / "q.onnx", "--calib", folder / "calib.npz")
    assert result.returncode == 0, result.stderr
    return source, folder / "q.onnx", {name: x[6:]}


def test_the_file_is_a_fraction_of_fp32s(compiled):
    source, written, _ = compiled
    assert written.stat().st_size <= MODELS[source.name][1] * source.stat().st_size


def test_every_metadata_entry_and_doc_string_of_the_input_survives(compiled):
    source, written, _ = compiled
    original, quantized = onnx.load(str(source)), onnx.load(str(written))
    kept = {entry.key: entry.value for entry in quantized.metadata_props}
    assert all(kept.get(entry.key) == entry.value for entry in original.metadata_props)
    assert quantized.doc_string == original.doc_string
    if source.name == "ppocrv4_rec.onnx":
        assert len(kept["character"]) > 6000  # the recogniser's dictionary


def test_nothing_unread_is_left(compiled):
    _, written, _ = compiled
    graph = onnx.load(str(written)).graph
    read = {name for node in graph.node for name in values_read(node)}
    read |= {value.name for value in graph.output}
    assert [t.name for t in graph.initializer if t.name not in read] == []
    assert [n.name for n in graph.node if not any(out in read for out in n.output)] == []


def test_onnxruntime_runs_it_at_every_level_and_the_small_ones_are_the_reference(compiled):
    source, written, feeds = compiled
    results = []
    for level in LEVELS:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        session = ort.InferenceSession(str(written), options, providers=["CPUExecutionProvider"])
        results.append(session.run(None, feeds)[0])
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])
    if source.name in ("ppocr_mobile_cls.onnx", "yolov8n_320.onnx"):
        expected = Reference(onnx.load(str(written))).run(feeds)[0]
        np.testing.assert_array_equal(results[0], expected)


def test_the_fine_tuning_engine_runs_the_model_and_its_fp32_teacher_as_onnxruntime(compiled):
    """Every operator of the corpus is in the engine: the quantized model and the FP32 model
    it was compiled from (the distillation teacher) give onnxruntime's outputs, and the
    gradient reaches every shadow weight."""
    pytest.importorskip("torch", reason="fine-tuning needs PyTorch (the finetune extra)")
    from rcompile.api import load_source
    from rcompile.finetune.graph import QuantizedGraph, float_arrays

    source, written, feeds = compiled
    for model, plan in ((onnx.load(str(written)), True), (load_source(source).model, False)):
        expected = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        ).run(None, feeds)[0]
        graph = QuantizedGraph(model, plan=plan)
        output = graph(float_arrays(feeds))
        np.testing.assert_allclose(
            output.detach().numpy(), expected, rtol=0, atol=max(1e-5 * np.abs(expected).max(), 1e-6)
        )
        if plan:
            output.square().mean().backward()
            assert all(w.grad is not None for w in graph.weights) and len(graph.weights) > 0


def test_learned_rounding_reaches_every_layer_of_the_plan(compiled):
    """Learned rounding finds every planned layer's input in the compiled model and its output
    in the FP32 teacher, and its choices are stored in the model's own storage."""
    pytest.importorskip("torch", reason="fine-tuning needs PyTorch (the finetune extra)")
    from rcompile.api import load_source
    from rcompile.finetune.export import write_weights
    from rcompile.finetune.graph import QuantizedGraph
    from rcompile.finetune.rounding import learn_rounding

    source, written, feeds = compiled
    model = onnx.load(str(written))
    student = QuantizedGraph(model)
    teacher = QuantizedGraph(load_source(source).model, plan=False)
    student.start_from(teacher)
    rounded = learn_rounding(student, teacher, feeds, steps=2, batch_size=2, seed=0)
    assert [r.layer for r in rounded] == list(
        dict.fromkeys(s.layer for s in student.shadows if s.role == "weights")
    )
    values = {name: value.numpy() for name, value in student.quantized_weights().items()}
    onnx.checker.check_model(write_weights(model, values))
