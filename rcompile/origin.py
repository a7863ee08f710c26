"""Where a compiled model came from: the FP32 file's name, the path it was given by (when
relative: a model travels, and the user's absolute folders are nobody else's business), and
its SHA-256. Fine-tuning finds its teacher, the FP32 model, by this record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from rcompile.errors import UserError

SOURCE_KEY = "rcompile.source"


class NoTeacher(UserError):
    """Fine-tuning cannot find the FP32 model the quantized one was compiled from."""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_record(path: str | Path) -> dict:
    path = Path(path)
    record = {"file": path.name, "sha256": file_digest(path)}
    if not path.is_absolute():
        record["path"] = path.as_posix()
    return record


def recorded_source(model: onnx.ModelProto) -> dict | None:
    entry = next((p.value for p in model.metadata_props if p.key == SOURCE_KEY), None)
    return json.loads(entry) if entry else None


def find_teacher(quantized: onnx.ModelProto, quantized_path: Path) -> Path:
    """The recorded FP32 source of `quantized`: at the path it was compiled from (relative to
    the working folder), or by its name beside the quantized model or in the working folder;
    only a file with the recorded SHA-256 counts."""
    record = recorded_source(quantized)
    if record is None:
        raise NoTeacher(
            f"{quantized_path} does not record the FP32 model it was compiled from; "
            "give the teacher with --teacher"
        )
    places = [Path(record["path"])] if "path" in record else []
    places += [quantized_path.parent / record["file"], Path(record["file"])]
    for place in dict.fromkeys(places):
        if place.is_file() and file_digest(place) == record["sha256"]:
            return place
    raise NoTeacher(
        f"{quantized_path} was compiled from {record['file']}, which is not at "
        f"{', '.join(map(str, dict.fromkeys(places)))} (with the same SHA-256); "
        "give the teacher with --teacher"
    )
