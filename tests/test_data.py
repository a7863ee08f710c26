"""Calibration and evaluation data: sources, labels, preprocessing, streaming and every error."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

import rcompile.data.images as images_module
from rcompile.data import (
    PRESETS,
    Dataset,
    InputSpec,
    Preprocessing,
    input_specs,
    open_data,
    parse_preprocessing,
)
from rcompile.errors import CalibrationError, UserError

F32 = np.float32
# The shared folder sits beside the checkout (<dir>/main and <dir>/shared), here and in CI.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLE_IMAGES = SHARED / "data" / "imagenet-sample-dev"


def spec(shape: tuple, name: str = "input", dtype: type = F32) -> InputSpec:
    return InputSpec(name, shape, np.dtype(dtype))


IMAGE = [spec((None, 3, 4, 4))]


def write_image(path: Path, rgb: tuple[int, int, int] = (255, 128, 0), size=(4, 4)) -> Path:
    """A solid PNG (or JPEG, by suffix) of `size` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


def gradient_image(path: Path, width: int, height: int, axis: int) -> Path:
    """A grey image whose value is 6 * column (axis 1) or 6 * row (axis 0)."""
    ramp = np.arange(width if axis == 1 else height) * 6
    values = np.broadcast_to(ramp if axis == 1 else ramp[:, None], (height, width))
    Image.fromarray(values.astype(np.uint8)).convert("RGB").save(path)
    return path


def first_batch(data: Dataset, batch_size: int = 64) -> dict[str, np.ndarray]:
    return next(data.batches(batch_size)).inputs


def all_batches(data: Dataset, batch_size: int = 64, limit: int | None = None) -> list:
    return list(data.batches(batch_size, limit))


def raises(match: str):
    return pytest.raises(CalibrationError, match=match)


# --- model inputs ---------------------------------------------------------------------------


def test_input_specs_skip_initializers_and_keep_dynamic_dims():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [1.0, 2.0, 3.0])],
    )
    model = helper.make_model(graph)
    assert input_specs(model) == [InputSpec("x", ("batch", 3, None), np.dtype(F32))]


def stateful_inputs(state_shape: list) -> list[InputSpec]:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "h"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, state_shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return input_specs(helper.make_model(graph))


@pytest.mark.parametrize(
    ("state_shape", "axis", "text"),
    [
        ([2, "batch", 4], 1, "(N, 2, 4)"),
        (["batch", 2, 4], 0, "(N, 2, 4)"),
        ([1, 3, "width"], 0, "(N, 3, N)"),  # a fixed batch of 1, a dynamic width
        ([2, 3, 4], 0, "(N, 3, 4)"),
    ],
)
def test_an_input_counts_samples_on_the_axis_named_as_another_inputs_first(state_shape, axis, text):
    """A recurrent state (2, batch, 4) beside x (batch, 4) counts samples on axis 1; its
    data is samples first. A fixed axis 0 beside an unrelated dynamic axis stays the batch."""
    state = stateful_inputs(state_shape)[1]
    assert state.batch_axis == axis
    assert state.shape_text == text


def test_samples_first_data_reaches_an_input_batched_on_axis_1_in_its_layout(tmp_path):
    x = np.arange(5 * 3, dtype=F32).reshape(5, 3)
    state = np.arange(5 * 2 * 4, dtype=F32).reshape(5, 2, 4)
    np.savez(tmp_path / "d.npz", x=x, h=state)
    specs = [spec((None, 3), "x"), InputSpec("h", (2, None, 4), np.dtype(F32), batch_axis=1)]
    data = open_data(tmp_path / "d.npz", specs)
    batches = all_batches(data, 2)
    assert [batch.size for batch in batches] == [2, 2, 1]
    assert batches[1].inputs["h"].shape == (2, 2, 4)
    np.testing.assert_array_equal(batches[1].inputs["h"], state[2:4].transpose(1, 0, 2))
    np.testing.assert_array_equal(batches[1].inputs["x"], x[2:4])
    with raises(r"input 'h' must have shape \(N, 2, 4\) \(samples first\)"):
        np.savez(tmp_path / "t.npz", x=x, h=state.transpose(1, 0, 2))
        open_data(tmp_path / "t.npz", specs)


def test_calibration_error_is_a_user_error():
    assert issubclass(CalibrationError, UserError)


# --- sources ----------------------------------------------------------------------------------


def test_npz_keyed_by_input_names_feeds_each_input_cast_to_its_dtype(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, a=np.arange(6.0).reshape(3, 2), b=np.arange(3, dtype=np.int32), other=[1])
    data = open_data(path, [spec((None, 2), "a"), spec(("n",), "b", np.float16)])
    inputs = first_batch(data)
    assert data.count == 3 and not data.has_labels
    assert inputs["a"].dtype == F32 and inputs["b"].dtype == np.float16
    np.testing.assert_array_equal(inputs["a"], np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(inputs["b"], [0, 1, 2])


def test_npz_single_array_under_any_key_feeds_a_single_input_model(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, whatever=np.ones((2, 5), F32), labels=np.array([3, 4]))
    data = open_data(path, [spec((None, 5))])
    batch = next(data.batches(8))
    assert list(batch.inputs) == ["input"]
    np.testing.assert_array_equal(batch.labels, [3, 4])


def test_npz_labels_are_never_an_input(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, labels=np.arange(2))
    with raises(r"no array for model input 'input' \(keys present: 'labels'\)"):
        open_data(path, [spec((None,))])


def test_npy_is_memory_mapped_and_loaded_without_pickle(tmp_path, monkeypatch):
    path = tmp_path / "data.npy"
    np.save(path, np.arange(12, dtype=np.int64).reshape(4, 3))
    calls = []
    load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **kw: calls.append(kw) or load(*a, **kw))
    data = open_data(path, [spec((None, 3))])
    assert calls == [{"mmap_mode": "r", "allow_pickle": False}]
    inputs = first_batch(data, 2)
    assert inputs["input"].dtype == F32 and not isinstance(inputs["input"], np.memmap)
    np.testing.assert_array_equal(inputs["input"], [[0, 1, 2], [3, 4, 5]])


def test_image_folder_of_png_and_jpeg_any_case(tmp_path):
    write_image(tmp_path / "a.PNG")
    write_image(tmp_path / "b.jpeg")
    write_image(tmp_path / "c.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    data = open_data(tmp_path, IMAGE, PRESETS["raw"])
    inputs = first_batch(data)["input"]
    assert data.count == 3 and inputs.shape == (3, 3, 4, 4) and inputs.dtype == F32
    np.testing.assert_array_equal(inputs[0, :, 0, 0], [255, 128, 0])
    np.testing.assert_allclose(inputs[1:, :, 0, 0], [[255, 128, 0]] * 2, atol=4)


def test_image_folder_skips_hidden_files(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"macOS resource fork")
    assert open_data(tmp_path, IMAGE).count == 1


def test_image_default_preprocessing_is_imagenet(tmp_path):
    write_image(tmp_path / "a.png")
    default = first_batch(open_data(tmp_path, IMAGE))["input"]
    imagenet = first_batch(open_data(tmp_path, IMAGE, PRESETS["imagenet"]))["input"]
    np.testing.assert_array_equal(default, imagenet)


# --- labels -----------------------------------------------------------------------------------


def test_file_name_prefix_gives_the_class_index(tmp_path):
    for name in ("0042_cat.png", "7_dog.png", "0000_x.png"):
        write_image(tmp_path / name)
    data = open_data(tmp_path, IMAGE)
    assert data.has_labels
    np.testing.assert_array_equal(data.labels, [0, 42, 7])  # sorted: 0000_, 0042_, 7_


def test_no_labels_unless_every_file_has_a_prefix(tmp_path):
    write_image(tmp_path / "0001_a.png")
    write_image(tmp_path / "b.png")
    data = open_data(tmp_path, IMAGE)
    assert not data.has_labels and next(data.batches(2)).labels is None


def test_class_sub_folders_are_numbered_in_sorted_order(tmp_path):
    write_image(tmp_path / "zebra" / "1.png")
    write_image(tmp_path / "ant" / "2.png")
    (tmp_path / "bee").mkdir()  # an empty class still takes its index
    write_image(tmp_path / "cat" / "0005_x.png")
    np.testing.assert_array_equal(open_data(tmp_path, IMAGE).labels, [0, 2, 3])


def test_integer_sub_folders_are_the_class_indices(tmp_path):
    write_image(tmp_path / "10" / "a.png")
    write_image(tmp_path / "2" / "b.png")
    np.testing.assert_array_equal(open_data(tmp_path, IMAGE).labels, [10, 2])


# --- preprocessing ----------------------------------------------------------------------------

PIXEL = (255, 128, 0)
EXPECTED = {
    "imagenet": [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, -0.406 / 0.225],
    "inception": [1.0, 128 / 127.5 - 1, -1.0],
    "caffe": [0 - 103.939, 128 - 116.779, 255 - 123.68],
    "unit": [1.0, 128 / 255, 0.0],
    "raw": [255.0, 128.0, 0.0],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_arithmetic_on_a_known_pixel(tmp_path, name):
    write_image(tmp_path / "a.png", PIXEL)
    values = first_batch(open_data(tmp_path, IMAGE, parse_preprocessing(name)))["input"]
    np.testing.assert_allclose(values[0, :, 2, 1], EXPECTED[name], rtol=1e-6, atol=1e-6)


def test_parse_preprocessing_lists_the_valid_names():
    assert parse_preprocessing(" Inception ") == PRESETS["inception"]
    with raises(r"unknown preprocessing 'torch'; choose one of: caffe, imagenet, inception, raw"):
        parse_preprocessing("torch")


def test_preprocessing_rejects_a_zero_std():
    with raises("std must not be zero"):
        Preprocessing(std=(1.0, 0.0, 1.0))


def test_layout_is_inferred_nchw_or_nhwc(tmp_path):
    write_image(tmp_path / "a.png", PIXEL, size=(4, 2))
    nchw = first_batch(open_data(tmp_path, [spec((None, 3, 2, 4))], PRESETS["raw"]))["input"]
    nhwc = first_batch(open_data(tmp_path, [spec((None, 2, 4, 3))], PRESETS["raw"]))["input"]
    assert nchw.shape == (1, 3, 2, 4) and nhwc.shape == (1, 2, 4, 3)
    assert nhwc.flags.c_contiguous and nchw.flags.c_contiguous
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)
    np.testing.assert_array_equal(nhwc[0, 1, 3], PIXEL)


def test_explicit_layout_overrides_the_inference(tmp_path):
    write_image(tmp_path / "a.png", PIXEL, size=(3, 3))
    prep = replace(PRESETS["raw"], layout="NHWC")
    values = first_batch(open_data(tmp_path, [spec((None, 3, 3, 3))], prep))["input"]
    np.testing.assert_array_equal(values[0, 0, 0], PIXEL)  # channels last


def test_grayscale_model_gets_luminance(tmp_path):
    write_image(tmp_path / "a.png", (100, 100, 100))
    values = first_batch(open_data(tmp_path, [spec((None, 1, 4, 4))], PRESETS["unit"]))["input"]
    assert values.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(values, 100 / 255, rtol=1e-6)


def test_shorter_side_is_resized_to_the_crop_then_centre_cropped(tmp_path):
    gradient_image(tmp_path / "wide.png", width=40, height=20, axis=1)  # value = 6 * column
    values = first_batch(open_data(tmp_path, [spec((None, 3, 10, 10))], PRESETS["raw"]))["input"]
    # 40x20 -> 20x10 averages column pairs (column i is 6 * (2i + 0.5)); the crop keeps 5..14.
    assert values.shape == (1, 3, 10, 10)
    np.testing.assert_allclose(values[0, 0, 4], 12 * np.arange(5, 15) + 3, atol=1)
    np.testing.assert_array_equal(values[0, :, :, 0], values[0, :, :1, 0].repeat(10, axis=1))


def test_explicit_resize_then_centre_crop_in_both_directions(tmp_path):
    gradient_image(tmp_path / "a_wide.png", width=40, height=20, axis=1)
    gradient_image(tmp_path / "b_tall.png", width=20, height=40, axis=0)
    prep = replace(PRESETS["raw"], resize=20)  # no resizing: only the crop
    values = first_batch(open_data(tmp_path, [spec((None, 3, 10, 10))], prep))["input"]
    np.testing.assert_array_equal(values[0, 0, 0], 6 * np.arange(15, 25))
    np.testing.assert_array_equal(values[1, 0, :, 0], 6 * np.arange(15, 25))


# --- streaming and determinism ----------------------------------------------------------------


def five_images(root: Path) -> Path:
    for index in (3, 0, 4, 1, 2):  # written out of order
        write_image(root / f"{index:04d}_img.png", (index, 0, 0))
    return root


def test_batches_have_the_requested_size_and_the_last_is_partial(tmp_path):
    data = open_data(five_images(tmp_path), IMAGE, PRESETS["raw"])
    batches = all_batches(data, 2)
    assert [len(b.inputs["input"]) for b in batches] == [2, 2, 1]
    assert [b.labels.tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(batches[1].inputs["input"][:, 0, 0, 0], [2, 3])


def test_limit_takes_the_first_samples(tmp_path):
    data = open_data(five_images(tmp_path), IMAGE)
    assert [len(b.labels) for b in all_batches(data, 2, limit=3)] == [2, 1]
    assert sum(len(b.labels) for b in all_batches(data, 2, limit=50)) == 5


def test_images_are_decoded_one_batch_at_a_time(tmp_path, monkeypatch):
    decoded = []
    load = images_module.load_image
    monkeypatch.setattr(images_module, "load_image", lambda *a: decoded.append(a) or load(*a))
    batches = open_data(five_images(tmp_path), IMAGE).batches(2)
    assert decoded == []
    next(batches)
    assert len(decoded) == 2


def test_same_files_give_the_same_batches(tmp_path):
    five_images(tmp_path)
    runs = [all_batches(open_data(tmp_path, IMAGE), 2) for _ in range(2)]
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first.inputs["input"], second.inputs["input"])
        np.testing.assert_array_equal(first.labels, second.labels)


@pytest.mark.skipif(not SAMPLE_IMAGES.is_dir(), reason=f"{SAMPLE_IMAGES} is not present")
def test_real_imagenet_sample_loads_with_inception_preprocessing():
    data = open_data(SAMPLE_IMAGES, [spec((None, 3, 224, 224))], parse_preprocessing("inception"))
    batch = next(data.batches(8))
    names = sorted(path.name for path in SAMPLE_IMAGES.iterdir())[:8]
    assert batch.inputs["input"].shape == (8, 3, 224, 224)
    assert -1.0 <= batch.inputs["input"].min() < batch.inputs["input"].max() <= 1.0
    np.testing.assert_array_equal(batch.labels, [int(name.split("_")[0]) for name in names])


# --- errors -----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with raises(r"nope: no such file or folder; give a folder of images, a .npz or a .npy"):
        open_data(tmp_path / "nope", IMAGE)


def test_unsupported_file_kind(tmp_path):
    (tmp_path / "data.csv").write_text("1,2")
    with raises(r"data.csv: unsupported data file"):
        open_data(tmp_path / "data.csv", IMAGE)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with raises(r"no images \(.jpg, .jpeg, .png\) in this folder"):
        open_data(tmp_path, IMAGE)


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"])
def test_corrupt_image_names_the_file(tmp_path, content):
    write_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(content)
    batches = open_data(tmp_path, IMAGE).batches(1)
    next(batches)
    with raises(r"b.png: cannot read the image \(.+\); remove or replace the file"):
        next(batches)


def test_truncated_jpeg_names_the_file(tmp_path):
    write_image(tmp_path / "full.jpg", size=(64, 64))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    with raises(r"cut.jpg: cannot read the image"):
        all_batches(open_data(tmp_path, IMAGE))


def test_npz_missing_an_input_names_it_and_the_keys_present(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, a=np.ones((2, 1)), c=np.ones((2, 1)))
    with raises(r"no array for model input 'b' \(keys present: 'a', 'c'\); save one array per"):
        open_data(path, [spec((None, 1), "a"), spec((None, 1), "b")])


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_single_array_for_a_multi_input_model(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    (np.save if suffix == ".npy" else np.savez)(path, np.ones((2, 1)))
    with raises(r"holds a single array but the model has 2 inputs \('a', 'b'\); save a .npz"):
        open_data(path, [spec((None, 1), "a"), spec((None, 1), "b")])


def test_image_folder_for_a_multi_input_model(tmp_path):
    write_image(tmp_path / "a.png")
    with raises(r"a folder of images feeds one input, but the model has 2 \('a', 'b'\)"):
        open_data(tmp_path, [spec((None, 3, 4, 4), "a"), spec((None, 3, 4, 4), "b")])


@pytest.mark.parametrize(
    ("shape", "given"),
    [((2, 3, 5, 6), r"\(2, 3, 5, 6\)"), ((2, 3, 4), r"\(2, 3, 4\)")],
)
def test_wrong_shape_names_the_input_and_both_shapes(tmp_path, shape, given):
    path = tmp_path / "data.npy"
    np.save(path, np.zeros(shape, F32))
    expected = r"input 'input' must have shape \(N, 3, N, 4\) \(samples first\)"
    with raises(f"{expected}, but the data has shape {given}"):
        open_data(path, [spec((1, 3, "h", 4))])


def test_string_data_is_not_numeric(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, input=np.array(["a", "b"]))
    with raises(r"input 'input' has dtype <U1, which is not numeric"):
        open_data(path, [spec((None,))])


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_object_arrays_are_refused_without_unpickling(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"data{suffix}"
    objects = np.array([{"a": 1}, None], dtype=object)
    (np.save if suffix == ".npy" else np.savez)(path, objects)
    monkeypatch.setattr("pickle.load", lambda *a, **k: pytest.fail("unpickled"))
    with raises(r"cannot be read (as a NumPy array )?without pickle"):
        open_data(path, [spec((None,))])


def test_garbage_npz_file(tmp_path):
    (tmp_path / "data.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with raises(r"data.npz: cannot be read as a .npz without pickle"):
        open_data(tmp_path / "data.npz", [spec((None,))])


def test_garbage_npy_file(tmp_path):
    (tmp_path / "data.npy").write_bytes(b"\x93NUMPY garbage")
    with raises(r"data.npy: cannot be read as a NumPy array without pickle"):
        open_data(tmp_path / "data.npy", [spec((None,))])


def test_npy_and_npz_must_not_be_swapped(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(2))
    np.savez(tmp_path / "b.npz", input=np.ones(2))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    (tmp_path / "b.npz").rename(tmp_path / "b.npy")
    with raises("a.npz: is a .npy array, not a .npz archive; rename it .npy"):
        open_data(tmp_path / "a.npz", [spec((None,))])
    with raises("b.npy: is a .npz archive, not a .npy array; rename it .npz"):
        open_data(tmp_path / "b.npy", [spec((None,))])


@pytest.mark.parametrize(("bad", "kind"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_nan_or_inf_names_the_input_and_first_sample(tmp_path, bad, kind):
    values = np.zeros((30, 2))
    values[17, 1] = bad
    values[25, 0] = np.nan
    np.save(tmp_path / "data.npy", values)
    data = open_data(tmp_path / "data.npy", [spec((None, 2))])
    with raises(f"input 'input' has {kind} at sample 17; remove or fix that sample"):
        all_batches(data, 8)


def test_samples_past_the_limit_are_not_checked(tmp_path):
    values = np.zeros((10, 2))
    values[9] = np.nan
    np.save(tmp_path / "data.npy", values)
    assert len(all_batches(open_data(tmp_path / "data.npy", [spec((None, 2))]), 4, limit=8)) == 2


def test_overflow_to_inf_in_the_model_dtype_is_caught(tmp_path):
    np.save(tmp_path / "data.npy", np.array([[1.0], [1e300]]))
    with raises("has inf at sample 1"):
        all_batches(open_data(tmp_path / "data.npy", [spec((None, 1))]))


def test_inputs_with_different_sample_counts(tmp_path):
    np.savez(tmp_path / "data.npz", a=np.ones((3, 1)), b=np.ones((4, 1)))
    with raises(r"inputs have different sample counts \('a': 3, 'b': 4\)"):
        open_data(tmp_path / "data.npz", [spec((None, 1), "a"), spec((None, 1), "b")])


def test_labels_count_must_match_the_samples(tmp_path):
    np.savez(tmp_path / "data.npz", input=np.ones((3, 1)), labels=np.arange(2))
    with raises(r"'labels' has 2 entries but the data has 3 samples; give one label per sample"):
        open_data(tmp_path / "data.npz", [spec((None, 1))])


def test_labels_must_be_integers(tmp_path):
    np.savez(tmp_path / "data.npz", input=np.ones((2, 1)), labels=np.array([0.5, 1.0]))
    with raises(r"'labels' must be a 1-D array of integer class indices, got dtype float64"):
        open_data(tmp_path / "data.npz", [spec((None, 1))])


def test_empty_array_has_no_samples(tmp_path):
    np.save(tmp_path / "data.npy", np.zeros((0, 2), F32))
    with raises(r"data.npy: has no samples"):
        open_data(tmp_path / "data.npy", [spec((None, 2))])


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_must_be_positive(tmp_path, limit):
    data = open_data(five_images(tmp_path), IMAGE)
    with raises(f"the number of samples to use must be at least 1, got {limit}"):
        data.batches(2, limit)


def test_batch_size_must_be_positive(tmp_path):
    with raises("batch size must be at least 1, got 0"):
        open_data(five_images(tmp_path), IMAGE).batches(0)


def test_grayscale_model_with_per_channel_preset(tmp_path):
    write_image(tmp_path / "a.png")
    with raises(r"model input 'input' has 1 channel \(grey\) but the preprocessing has a mean"):
        open_data(tmp_path, [spec((None, 1, 4, 4))], PRESETS["imagenet"])


def test_images_need_a_fixed_height_and_width(tmp_path):
    write_image(tmp_path / "a.png")
    with raises(r"'input' has a dynamic height or width \(N, 3, N, N\); fix the model's input"):
        open_data(tmp_path, [spec((None, 3, "h", "w"))])


def test_images_need_a_four_dimensional_input(tmp_path):
    write_image(tmp_path / "a.png")
    with raises(r"images need a 4-D model input, but 'input' has shape \(N, 784\)"):
        open_data(tmp_path, [spec((None, 784))])


def test_images_need_a_channel_axis(tmp_path):
    write_image(tmp_path / "a.png")
    with raises(r"cannot tell the channel axis of model input 'input' \(N, 5, 4, 4\)"):
        open_data(tmp_path, [spec((None, 5, 4, 4))])


def test_resize_smaller_than_the_crop(tmp_path):
    write_image(tmp_path / "a.png")
    with raises("resize 3 is smaller than the model's input 4x4; resize to at least 4"):
        open_data(tmp_path, IMAGE, replace(PRESETS["raw"], resize=3))


def test_onnx_model_without_input_shape_is_refused():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(UserError, match="model input 'x' has no tensor shape"):
        input_specs(helper.make_model(graph))


def test_an_npz_cut_short_says_so_and_not_that_it_needs_pickle(tmp_path):
    """A member shorter than its header says (a file cut short by a full disk, or read
    while another process writes it) is not a pickle problem."""
    array = tmp_path / "input.npy"
    np.save(array, np.zeros((64, 1, 8, 8), np.float32))
    with zipfile.ZipFile(tmp_path / "data.npz", "w") as archive:
        archive.writestr("input.npy", array.read_bytes()[:300])
    with raises(r"data.npz: array 'input' is damaged or cut short"):
        open_data(tmp_path / "data.npz", [spec((None, 1, 8, 8))])
