"""Golden vectors for RTL testbenches: every integer layer's tensors, per sample, as the
reference datapath computes them.

A folder holds `vectors.npz` (every tensor as an int64 array), `hex/` (one text file per
tensor: one value per line in C order, two's complement, as many hex digits as its bits
need) and `manifest.json` (per layer: node, op, attributes, formats, accumulator, and per
tensor its shape, bits, signedness, step exponents and files). Weights and bias are written
once per layer; input, accumulator and output once per sample.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from rcompile.batching import model_batches
from rcompile.data import Dataset
from rcompile.errors import UserError
from rcompile.formats.codes import largest_code
from rcompile.progress import progress_bar
from rcompile.reference import Reference
from rcompile.reference.layer import LayerCodes, LayerSpec

SCHEMA_VERSION = 1
LAYOUT = (
    "Tensors are in C order with the ONNX layout of their op (NCHW activations, OIHW "
    "convolution weights, Gemm/MatMul weights as the model stores them); value = code * "
    "2**exponent, one exponent per output channel where `exponents` has several (channel "
    "axis `channel_axis`). Hex files hold one code per line, two's complement in `bits` bits."
)


def write_vectors(
    model: onnx.ModelProto,
    data: Dataset,
    count: int,
    batch_size: int,
    folder: Path,
    show_progress: bool = False,
) -> dict:
    """Write the vectors of the first `count` samples to `folder` (new, or empty), all at
    once: they are written beside it and moved into place. Returns the manifest."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder}: exists and is not an empty folder; choose a new one")
    if not folder.parent.is_dir():
        raise UserError(f"{folder}: the folder {folder.parent} does not exist")
    reference = Reference(model)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        manifest = _write(reference, model, data, count, batch_size, staging, show_progress)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write(reference, model, data, count, batch_size, staging: Path, show_progress) -> dict:
    arrays: dict[str, tuple[np.ndarray, int]] = {}  # key -> (codes, bits)
    layers: dict[str, dict] = {}
    sample = 0
    total = min(count, data.count)
    with progress_bar("golden vectors", total, show_progress) as advance:
        for batch in model_batches(model, data, batch_size, count):
            reference.run(batch.inputs)
            size = batch.size
            for index, (name, spec) in enumerate(reference.specs.items()):
                codes = reference.codes.get(name)
                if codes is None:
                    continue
                entry = layers.setdefault(name, _layer_entry(index, spec, codes, arrays))
                for offset in range(size):
                    entry["samples"].append(
                        _sample_tensors(entry["key"], sample + offset, offset, spec, codes, arrays)
                    )
            sample += size
            advance(size)
    if not layers:
        raise UserError("the model has no integer layer (every layer has an FP32 part)")
    for key, (values, bits) in arrays.items():
        _write_hex(staging / _hex_path(key), values, bits)
    np.savez_compressed(staging / "vectors.npz", **{k: v for k, (v, _) in arrays.items()})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "samples": sample,
        "layout": LAYOUT,
        "layers": [{k: v for k, v in entry.items() if k != "key"} for entry in layers.values()],
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _hex_path(key: str) -> str:
    return f"hex/{key.replace('.', '/')}.hex"


def _tensor(key: str, values: np.ndarray, bits: int, signed: bool, exponents, axis, arrays):
    """Record one tensor's codes under `key`; its manifest entry."""
    arrays[key] = (np.asarray(values, np.int64), bits)
    return {
        "npz": key,
        "hex": _hex_path(key),
        "shape": list(values.shape),
        "bits": bits,
        "signed": signed,
        "exponents": [int(e) for e in np.atleast_1d(exponents)],
        "channel_axis": axis,
    }


def _layer_entry(index: int, spec: LayerSpec, codes: LayerCodes, arrays) -> dict:
    key = f"L{index:03d}"
    register = spec.accumulator
    entry = {
        "key": key,
        "index": index,
        "node": spec.node.name,
        "op_type": spec.node.op_type,
        "attributes": {k: _plain(v) for k, v in spec.attributes.items()},
        "formats": {
            "inputs": [fmt.name for fmt in spec.inputs],
            "weights": sorted({fmt.name for fmt in spec.weights}),
            "bias": sorted({fmt.name for fmt in spec.bias}),
            "output": spec.output.name if spec.output is not None else "fp32",
        },
        "accumulator": register.as_dict(),
        "tensors": {},
        "samples": [],
    }
    weight_axis = (
        None
        if spec.weight_axis is None
        else spec.weight_axis % codes.weights.ndim
        if codes.weights is not None
        else None
    )
    if codes.weights is not None:
        entry["tensors"]["weights"] = _tensor(
            f"{key}.weights",
            codes.weights,
            _code_bits(spec.weights[0]),
            True,
            codes.weight_exponents,
            weight_axis,
            arrays,
        )
    if codes.bias is not None:
        entry["tensors"]["bias"] = _tensor(
            f"{key}.bias",
            codes.bias.reshape(-1),
            register.bits,
            True,
            codes.accumulator_exponents,
            0,
            arrays,
        )
    return entry


def _sample_tensors(key, sample, offset, spec: LayerSpec, codes: LayerCodes, arrays) -> dict:
    prefix = f"{key}.s{sample:04d}"
    channel_axis = 1 if spec.node.op_type in ("Conv", "ConvTranspose") else -1
    tensors = {}
    for position, (values, exponent) in enumerate(
        zip(codes.inputs, codes.input_exponents, strict=True)
    ):
        fmt = spec.inputs[position]
        tensors[f"input{position}"] = _tensor(
            f"{prefix}.input{position}",
            values[offset],
            _code_bits(fmt),
            getattr(fmt, "signed", True),
            exponent,
            None,
            arrays,
        )
    tensors["accumulator"] = _tensor(
        f"{prefix}.accumulator",
        codes.accumulator[offset],
        spec.accumulator.bits,
        True,
        codes.accumulator_exponents,
        channel_axis,
        arrays,
    )
    if codes.output is not None:
        tensors["output"] = _tensor(
            f"{prefix}.output",
            codes.output[offset],
            _code_bits(spec.output),
            getattr(spec.output, "signed", True),
            codes.output_exponent,
            None,
            arrays,
        )
    return {"sample": sample, "tensors": tensors}


def _code_bits(fmt) -> int:
    """The bits of a format's codes: a DFP's width, else what its largest code needs."""
    bw = getattr(fmt, "bw", None)
    return bw if bw is not None else largest_code(fmt).bit_length() + 1


def _write_hex(path: Path, values: np.ndarray, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    digits = -(-bits // 4)
    mask = (1 << bits) - 1
    lines = [f"{int(v) & mask:0{digits}x}" for v in values.ravel()]
    path.write_text("\n".join(lines) + "\n")


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
