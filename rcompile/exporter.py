"""Export: the rewritten model with its provenance in `metadata_props`, checked, and written
atomically (a temporary file renamed into place), never over the input model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx

import rcompile
from rcompile.errors import UserError


class ExportError(UserError):
    """The output cannot be written where asked."""


def finish_model(model: onnx.ModelProto, metadata: dict[str, object]) -> onnx.ModelProto:
    """Set producer and metadata (as JSON, keys sorted, so the bytes are deterministic) and run
    the full checker."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.producer_name = "rcompile"
    result.producer_version = rcompile.__version__
    del result.metadata_props[:]
    entries = {"rcompile.version": rcompile.__version__, **metadata}
    for key in sorted(entries):
        value = entries[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        result.metadata_props.add(key=key, value=text)
    onnx.checker.check_model(result, full_check=True)
    return result


def check_targets(targets: list[Path], protected: tuple[Path, ...] = ()) -> None:
    """Fail before any work when an output cannot be written: its folder is missing, it is a
    folder, it is an input, or two outputs are the same file."""
    seen: dict[Path, Path] = {}
    for target in targets:
        resolved = target.resolve()
        if any(resolved == p.resolve() for p in protected):
            raise ExportError(f"{target}: refusing to overwrite an input; choose another path")
        if resolved.is_dir():
            raise ExportError(f"{target}: is a folder; give a file name")
        if not resolved.parent.is_dir():
            raise ExportError(f"{target}: the folder {target.parent} does not exist")
        if resolved in seen:
            raise ExportError(f"{target}: given for two outputs (also {seen[resolved]})")
        seen[resolved] = target


def write_bytes(data: bytes, path: str | Path, protected: tuple[Path, ...] = ()) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, so a reader never
    sees half a file. Refuses to write over any of the `protected` files."""
    path = Path(path)
    check_targets([path], protected)
    target = path.resolve()
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_model(model: onnx.ModelProto, path: str | Path, protected: tuple[Path, ...] = ()) -> Path:
    return write_bytes(model.SerializeToString(deterministic=True), path, protected)
