"""Import: the real LeNet, old opsets, external data, and every way a model file can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.errors import ModelImportError, UserError
from rcompile.importer import default_opset, load_model
from rcompile.onnx_ops import OPSET

F32 = np.float32
ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet5.onnx"
MNIST_TEST = ROOT / "models" / "mnist_test.npz"


@pytest.fixture(scope="module")
def lenet() -> onnx.ModelProto:
    return load_model(LENET)


def run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def mnist_images(count: int = 16) -> np.ndarray:
    with np.load(MNIST_TEST) as data:
        return data["input"][:count]


def relu_model(opset: int, elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = Relu(x) (Neg for integers) at `opset`: the smallest model with a default opset."""
    op = "Relu" if elem_type == TensorProto.FLOAT else "Neg"
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", elem_type, ["N", 3])],
        [helper.make_tensor_value_info("y", elem_type, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def conv_bn_relu_opset9(seed: int = 0) -> onnx.ModelProto:
    """Conv + BatchNormalization + Relu as a Caffe converter writes it: opset 9, IR version 4,
    unnamed nodes."""
    rng = np.random.default_rng(seed)

    def constant(name, shape, low=None, high=None):
        values = rng.normal(size=shape) if low is None else rng.uniform(low, high, shape)
        return numpy_helper.from_array(values.astype(F32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], epsilon=1e-3
        ),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    initializers = [
        constant("w", (4, 3, 3, 3)),
        constant("b", (4,)),
        constant("gamma", (4,), 0.5, 1.5),
        constant("beta", (4,)),
        constant("mean", (4,)),
        constant("var", (4,), 0.5, 2.0),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def import_error(path: Path) -> str:
    with pytest.raises(ModelImportError) as caught:
        load_model(path)
    return str(caught.value)


# --- LeNet ------------------------------------------------------------------------------------


def test_lenet_is_converted_to_opset_21(lenet):
    assert OPSET == 21
    assert default_opset(lenet) == 21


def test_lenet_declares_an_ir_version_that_supports_its_opset(lenet):
    assert lenet.ir_version >= helper.find_min_ir_version_for(lenet.opset_import, True)


def test_every_lenet_node_has_a_unique_name(lenet):
    names = [node.name for node in lenet.graph.node]
    assert all(names)
    assert len(set(names)) == len(names) == 12


def test_lenet_intermediate_shapes_are_inferred(lenet):
    shapes = {
        value.name: [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        for value in lenet.graph.value_info
    }
    produced = {output for node in lenet.graph.node for output in node.output} - {"logits"}
    assert produced <= set(shapes)
    assert shapes["/conv1/Conv_output_0"] == ["N", 6, 28, 28]
    assert shapes["/pool2/MaxPool_output_0"] == ["N", 16, 5, 5]
    assert shapes["/fc2/Gemm_output_0"] == ["N", 84]


def test_imported_lenet_computes_what_the_file_computes(lenet):
    feeds = {"input": mnist_images()}
    np.testing.assert_allclose(run(lenet, feeds)[0], run(LENET, feeds)[0], rtol=1e-5, atol=1e-5)


def test_load_model_takes_a_string_path():
    assert default_opset(load_model(str(LENET))) == OPSET


def test_model_import_error_is_a_user_error():
    assert issubclass(ModelImportError, UserError)


# --- unreadable files -------------------------------------------------------------------------


def test_missing_path_is_reported_as_no_such_file(tmp_path):
    path = tmp_path / "absent.onnx"
    assert import_error(path) == f"{path}: no such file"


def test_directory_is_reported_as_a_folder(tmp_path):
    message = import_error(tmp_path)
    assert message.startswith(f"{tmp_path}: is a folder")
    assert "no such file" not in message


def test_random_bytes_are_reported_as_not_onnx(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert import_error(path).startswith(f"{path}: not an ONNX model (")


def test_truncated_model_is_reported_as_not_onnx(tmp_path):
    data = LENET.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert import_error(path).startswith(f"{path}: not an ONNX model (")


def test_empty_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert import_error(path) == f"{path}: not an ONNX model (the file is empty)"


def test_import_error_messages_are_one_line(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    assert "\n" not in import_error(path)


def test_model_failing_the_checker_is_reported_as_invalid(tmp_path):
    model = relu_model(OPSET)
    model.graph.node[0].input[0] = "undefined"
    path = save(model, tmp_path / "broken.onnx")
    assert import_error(path).startswith(f"{path}: invalid ONNX model (")


# --- opsets -----------------------------------------------------------------------------------


def test_opset_below_7_is_reported_as_unsupported(tmp_path):
    path = save(relu_model(5), tmp_path / "opset5.onnx")
    assert import_error(path) == (
        f"{path}: opset 5 is not supported; rcompile reads opsets 7 to "
        f"{onnx.defs.onnx_opset_version()}"
    )


def test_opset_newer_than_onnx_knows_is_reported_as_unsupported(tmp_path):
    newest = onnx.defs.onnx_opset_version()
    path = save(relu_model(newest + 1), tmp_path / "future.onnx")
    assert import_error(path).startswith(f"{path}: opset {newest + 1} is not supported")


def test_model_with_only_an_int64_input_is_reported_as_having_no_float_input(tmp_path):
    path = save(relu_model(OPSET, TensorProto.INT64), tmp_path / "ints.onnx")
    assert import_error(path) == f"{path}: no floating-point input to calibrate (inputs: x)"


def test_old_opset_model_is_converted_to_opset_21(tmp_path):
    model = load_model(save(conv_bn_relu_opset9(), tmp_path / "old.onnx"))
    assert default_opset(model) == OPSET
    assert model.ir_version >= helper.find_min_ir_version_for(model.opset_import, True)
    onnx.checker.check_model(model, full_check=True)


def test_old_opset_model_gets_node_names_and_its_batchnorm_folded(tmp_path):
    model = load_model(save(conv_bn_relu_opset9(), tmp_path / "old.onnx"))
    assert [node.op_type for node in model.graph.node] == ["Conv", "Relu"]
    assert all(node.name for node in model.graph.node)


def test_old_opset_model_computes_what_the_original_computes(tmp_path):
    original = conv_bn_relu_opset9()
    imported = load_model(save(original, tmp_path / "old.onnx"))
    feeds = {"x": np.random.default_rng(7).normal(size=(5, 3, 8, 8)).astype(F32)}
    # Folding rounds differently: an absolute tolerance too, for outputs near zero.
    want, got = run(original, feeds)[0], run(imported, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- external data ----------------------------------------------------------------------------


def save_external(tmp_path: Path) -> Path:
    path = tmp_path / "external" / "lenet5.onnx"
    path.parent.mkdir()
    onnx.save_model(
        onnx.load(str(LENET)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="lenet5.data",
        size_threshold=0,
    )
    return path


def test_model_with_external_data_loads_and_runs(tmp_path):
    path = save_external(tmp_path)
    assert path.stat().st_size < 10_000  # the weights really are outside
    model = load_model(path)
    feeds = {"input": mnist_images()}
    np.testing.assert_allclose(run(model, feeds)[0], run(LENET, feeds)[0], rtol=1e-5, atol=1e-5)


def test_missing_external_data_file_is_reported(tmp_path):
    path = save_external(tmp_path)
    (path.parent / "lenet5.data").unlink()
    assert import_error(path).startswith(f"{path}: cannot read the model's external data (")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    path = save_external(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../secret.data"
    save(model, path)
    message = import_error(path)
    assert message.startswith(f"{path}: cannot read the model's external data (")
    assert "outside" in message
