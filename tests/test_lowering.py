"""The two lowerings of one plan: `sim` gives the reference datapath's bits at every
onnxruntime optimisation level; `qdq` is standard QuantizeLinear/DequantizeLinear only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import rcompile
from rcompile.api import load_source
from rcompile.data import input_specs, open_data, parse_preprocessing
from rcompile.exporter import finish_model
from rcompile.lowering import lower
from rcompile.lowering.plain_pools import plain_pools
from rcompile.lowering.qdq import inline_quantizers
from rcompile.lowering.rewrite import rewrite
from rcompile.onnx_ops import DOMAIN
from rcompile.reference import Reference
from rcompile.scheme import parse_scheme

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
MNIST_CALIB = ROOT / "models" / "mnist_calib.npz"
SHARED = ROOT.parent / "shared"
EFFICIENTNET = SHARED / "models" / "efficientnet_lite0.onnx"
IMAGENET = SHARED / "data" / "imagenet-sample-dev"
LEVELS = (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
)
SCHEMES = ("dfp8", "dfp:w4a8", "dfp16", "fp8e4m3", "fp6e3m2", "pow2")


def run_at(model: onnx.ModelProto, feeds: dict, level) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)[0]


def assert_bit_true(model: onnx.ModelProto, feeds: dict) -> None:
    """Every optimisation level gives the reference's bits."""
    expected = Reference(model).run(feeds)[0].view(np.uint32)
    for level in LEVELS:
        got = run_at(model, feeds, level).view(np.uint32)
        assert np.array_equal(got, expected), f"{level}: {int((got != expected).sum())} differ"


@pytest.fixture(scope="module")
def mnist() -> dict:
    data = np.load(MNIST_CALIB)
    return {"input": data["input"][:100]}


# 16-bit mini floats' products span some 80 bits, which the reference sums in Python
# integers (about 0.1 s an image on LeNet-5): 20 images for them.
@pytest.mark.parametrize(
    "scheme, images", [*((scheme, 100) for scheme in SCHEMES), ("bf16", 20), ("fp16", 20)]
)
def test_lenet_sim_is_the_reference_at_every_optimisation_level(scheme, images, mnist):
    result = rcompile.compile(LENET, scheme, MNIST_CALIB, calib_count=100)
    assert_bit_true(result.model, {"input": mnist["input"][:images]})


@pytest.fixture(scope="module")
def imagenet() -> dict:
    if not EFFICIENTNET.is_file() or not IMAGENET.is_dir():
        pytest.skip(f"shared EfficientNet-Lite0 or ImageNet sample not found under {SHARED}")
    source = load_source(EFFICIENTNET).model
    preprocessing = parse_preprocessing("inception")
    data = open_data(IMAGENET, input_specs(source), preprocessing)
    return {"source": source, "feeds": data.read(0, 1)}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_efficientnet_sim_is_the_reference_at_every_optimisation_level(scheme, imagenet):
    result = rcompile.compile(EFFICIENTNET, scheme, IMAGENET, calib_count=16)
    assert_bit_true(result.model, imagenet["feeds"])


def test_qdq_is_standard_ops_only_and_runs_the_same_plan(mnist):
    result = rcompile.compile(LENET, "dfp8", MNIST_CALIB, calib_count=100)
    qdq = lower(load_source(LENET).model, result.plan, "qdq").model
    onnx.checker.check_model(qdq, full_check=True)
    assert not qdq.functions
    assert all(node.domain == "" for node in qdq.graph.node)
    assert all(opset.domain != DOMAIN for opset in qdq.opset_import)
    ops = {node.op_type for node in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    qdq = finish_model(qdq, {"rcompile.plan": result.plan.as_dict()})
    expected = Reference(qdq).run(mnist)[0]
    got = run_at(qdq, mnist, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert np.array_equal(got, expected)


def test_fp8_quantizers_leave_float_layers_between_them_alone(mnist):
    """An FP8 quantizer is a QuantizeLinear/DequantizeLinear pair; onnxruntime must not take
    a float Conv between two of them for a QDQ node and round its weights to int8 (its
    WeightBiasQuantization, at BASIC and above). In `qdq` every fp8 layer is such a Conv.
    Every level gives the bits DISABLE_ALL gives."""
    result = rcompile.compile(LENET, "fp8e4m3", MNIST_CALIB, calib_count=100, target="qdq")
    exact = run_at(result.model, mnist, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for level in LEVELS[1:]:
        got = run_at(result.model, mnist, level)
        assert np.array_equal(got.view(np.uint32), exact.view(np.uint32)), level


def optimized_graph(model: onnx.ModelProto, folder: Path) -> onnx.GraphProto:
    """The graph onnxruntime runs at ORT_ENABLE_ALL."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


def optimized_ops(model: onnx.ModelProto, folder: Path) -> list[str]:
    return [node.op_type for node in optimized_graph(model, folder).node]


def clip_sources(graph: onnx.GraphProto) -> set[str]:
    """The op types of the nodes whose outputs the graph's Clips read."""
    made_by = {output: node.op_type for node in graph.node for output in node.output}
    return {made_by.get(node.input[0], "input") for node in graph.node if node.op_type == "Clip"}


@pytest.mark.parametrize("high", [6.0, 5.9], ids=["on-grid", "off-grid"])
def test_qdq_clamps_codes_between_layers_so_that_they_fuse(high, tmp_path):
    """x -> Conv -> ReLU6 -> depthwise Conv -> ReLU6 -> Conv at dfp8. A clamp whose bounds
    lie on its grid becomes a Clip of the codes, which onnxruntime runs on the codes its
    integer kernels pass on (no Clip of its optimized graph reads a DequantizeLinear; 1.32
    runs all three convolutions as QLinearConv); one off the grid stays a float Clip. The
    values do not change either way."""
    from test_evaluation_form import calibrated, relu6_network

    model = relu6_network()
    bound = next(t for t in model.graph.initializer if t.name == "high")
    bound.CopyFrom(onnx.numpy_helper.from_array(np.array(high, np.float32), "high"))
    _, planner = calibrated(model)
    plan = planner.plan(parse_scheme("dfp8"))
    qdq = finish_model(lower(model, plan, "qdq").model, {"rcompile.plan": plan.as_dict()})
    plain = inline_quantizers(rewrite(model, plan).model).model
    x = {"x": np.random.default_rng(5).normal(size=(8, 3, 8, 8)).astype(np.float32)}
    exact = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(run_at(qdq, x, exact), run_at(plain, x, exact))
    np.testing.assert_array_equal(run_at(qdq, x, exact), Reference(qdq).run(x)[0])
    optimized = clip_sources(optimized_graph(qdq, tmp_path))
    if high == 6.0:
        assert clip_sources(qdq.graph) == {"QuantizeLinear"}
        assert optimized and "DequantizeLinear" not in optimized
    else:
        assert clip_sources(qdq.graph) == {"DequantizeLinear"}
        assert "DequantizeLinear" in optimized


def test_sim_stores_parameters_as_integer_codes_without_dequantize_linear():
    result = rcompile.compile(LENET, "dfp8", MNIST_CALIB, calib_count=100)
    ops = {node.op_type for node in result.model.graph.node}
    assert "DequantizeLinear" not in ops and "QuantizeLinear" not in ops
    types = {t.data_type for t in result.model.graph.initializer if t.name.endswith("_codes")}
    assert types == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}


@pytest.mark.parametrize("scheme", ["dfp8@up", "dfp:w4a8@floor", "fp8e4m3@away", "dfp16@up"])
def test_lenet_sim_rounds_by_the_schemes_mode_as_the_reference(scheme, mnist):
    result = rcompile.compile(LENET, scheme, MNIST_CALIB, calib_count=100)
    modes = {fmt.rounding for layer in result.plan.layers for fmt in (*layer.inputs, layer.output)}
    assert modes == {scheme.split("@")[1]}
    assert_bit_true(result.model, mnist)


def silu_network() -> onnx.ModelProto:
    """x -> Conv -> SiLU (x * Sigmoid(x)) -> Conv -> Softmax over channels: the float ops
    of YOLO-class networks, whose rounding ONNX leaves to each runtime."""
    rng = np.random.default_rng(11)
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Sigmoid", ["c1"], ["gate"], name="sigmoid"),
        onnx.helper.make_node("Mul", ["c1", "gate"], ["s1"], name="silu"),
        onnx.helper.make_node("Conv", ["s1", "w2"], ["c2"], name="conv2"),
        onnx.helper.make_node("Softmax", ["c2"], ["y"], name="softmax", axis=1),
    ]
    weights = {"w1": rng.normal(size=(8, 3, 3, 3)), "w2": rng.normal(size=(5, 8, 1, 1))}
    graph = onnx.helper.make_graph(
        nodes,
        "silu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5, 8, 8])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime 1.20 reads
    return model


@pytest.mark.parametrize("scheme", ["dfp8", "fp8e4m3"])
def test_sim_with_sigmoid_and_softmax_between_layers_is_the_reference(scheme, tmp_path):
    """onnxruntime's Sigmoid and Softmax round differently from NumPy's in most values; the
    reference takes them from onnxruntime's CPU kernels, so the layers after them see the
    same input codes and the model is bit-true at every level."""
    rng = np.random.default_rng(12)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 3, 8, 8)).astype(np.float32))
    result = rcompile.compile(silu_network(), scheme, tmp_path / "calib.npz")
    assert_bit_true(result.model, {"x": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)})


def residual_layer_norm_network() -> onnx.ModelProto:
    """x (N, 8, 64) -> MatMul -> + x -> layer normalisation, decomposed as exporters write
    it -> MatMul -> y: the residual Add that onnxruntime fuses into SkipLayerNormalization."""
    rng = np.random.default_rng(13)
    h = onnx.helper
    nodes = [
        h.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
        h.make_node("Add", ["m", "x"], ["s"], name="residual"),
        h.make_node("ReduceMean", ["s"], ["mean"], name="mean", axes=[-1]),
        h.make_node("Sub", ["s", "mean"], ["d"], name="centre"),
        h.make_node("Pow", ["d", "two"], ["sq"], name="square"),
        h.make_node("ReduceMean", ["sq"], ["var"], name="variance", axes=[-1]),
        h.make_node("Add", ["var", "eps"], ["ve"], name="epsilon"),
        h.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        h.make_node("Div", ["d", "sd"], ["n"], name="normalise"),
        h.make_node("Mul", ["n", "gamma"], ["g"], name="scale"),
        h.make_node("Add", ["g", "beta"], ["ln"], name="shift"),
        h.make_node("MatMul", ["ln", "w2"], ["y"], name="fc2"),
    ]
    values = {
        "w1": rng.normal(size=(64, 64)) / 8,
        "w2": rng.normal(size=(64, 10)) / 8,
        "two": np.array(2.0),
        "eps": np.array(1e-5),
        "gamma": rng.uniform(0.5, 1.5, size=64),
        "beta": rng.normal(size=64) / 10,
    }
    graph = h.make_graph(
        nodes,
        "residual_ln",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 64])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 10])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 9  # what onnxruntime 1.20 reads
    return model


def test_a_residual_layer_norm_keeps_every_level_the_same(tmp_path):
    """Fused into SkipLayerNormalization at EXTENDED, the residual Add and the normalisation
    would round otherwise; the sim model's barrier keeps all levels equal to the reference."""
    rng = np.random.default_rng(14)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(32, 8, 64)).astype(np.float32))
    result = rcompile.compile(residual_layer_norm_network(), "dfp8", tmp_path / "calib.npz")
    assert "SkipLayerNormalization" in optimized_ops(residual_layer_norm_network(), tmp_path)
    assert "SkipLayerNormalization" not in optimized_ops(result.model, tmp_path)
    assert_bit_true(result.model, {"x": rng.normal(size=(64, 8, 64)).astype(np.float32)})


def squeeze_excite_network() -> onnx.ModelProto:
    """x (N, 8, 7, 7) -> Conv to 64 channels -> hard-swish -> GlobalAveragePool -> Flatten
    -> y: a MobileNetV3 squeeze, whose pool averages values off the codes' grid."""
    rng = np.random.default_rng(15)
    h = onnx.helper
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("HardSigmoid", ["c"], ["gate"], name="gate", alpha=1 / 6),
        h.make_node("Mul", ["c", "gate"], ["s"], name="hardswish"),
        h.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
        h.make_node("Flatten", ["p"], ["y"], name="flatten"),
    ]
    weights = {"w1": rng.normal(size=(64, 8, 3, 3)) / 4}
    graph = h.make_graph(
        nodes,
        "head",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 7, 7])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime 1.20 reads
    return model


def blocked_pools(model: onnx.ModelProto, folder: Path) -> int:
    """How many pools onnxruntime runs in its NCHWc layout at ORT_ENABLE_ALL."""
    graph = optimized_graph(model, folder)
    return sum(n.op_type == "GlobalAveragePool" and "nchwc" in n.domain for n in graph.node)


def test_a_global_average_pool_keeps_every_level_the_same(tmp_path):
    """onnxruntime's NCHWc layout (ENABLE_ALL, on CPUs with AVX2) sums a pool's channels in
    another order; the sim model's pools stay out of it and give the reference's bits."""
    rng = np.random.default_rng(16)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(32, 8, 7, 7)).astype(np.float32))
    result = rcompile.compile(squeeze_excite_network(), "dfp8", tmp_path / "calib.npz")
    if blocked_pools(squeeze_excite_network(), tmp_path) == 0:
        pytest.skip("onnxruntime has no NCHWc layout on this CPU (it needs AVX2)")
    assert blocked_pools(result.model, tmp_path) == 0
    assert_bit_true(result.model, {"x": rng.normal(size=(64, 8, 7, 7)).astype(np.float32)})


def test_a_pool_over_the_flattened_input_is_the_plain_pool_bit_for_bit():
    """The rewrite rests on onnxruntime's plain kernel giving a 3-D pool the 4-D one's bits."""
    model = squeeze_excite_network()
    rewritten = plain_pools(model)
    assert rewritten.modified and not plain_pools(lenet_without_pools()).modified
    x = {"x": np.random.default_rng(17).normal(size=(16, 8, 7, 7)).astype(np.float32)}
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = run_at(model, x, level).view(np.uint32)
    assert np.array_equal(run_at(rewritten.model, x, level).view(np.uint32), want)


def lenet_without_pools() -> onnx.ModelProto:
    model = onnx.load(LENET)
    assert all(node.op_type != "GlobalAveragePool" for node in model.graph.node)
    return model
