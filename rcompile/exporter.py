"""Export: the rewritten model with its provenance in `metadata_props`, checked, and written
with its reports as one set (temporary files renamed into place together), never over an
input."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path

import onnx

import rcompile
from rcompile.errors import UserError

METADATA_PREFIX = "rcompile."


class ExportError(UserError):
    """The output cannot be written where asked."""


def finish_model(model: onnx.ModelProto, metadata: dict[str, object]) -> onnx.ModelProto:
    """Set producer and rcompile's metadata (`rcompile.*` keys, as JSON, sorted, so the bytes
    are deterministic) and run the full checker. The input's own metadata entries stay, in
    their order, before rcompile's: applications read them (an OCR model's dictionary, a
    detector's class names)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.producer_name = "rcompile"
    result.producer_version = rcompile.__version__
    kept = [entry for entry in model.metadata_props if not entry.key.startswith(METADATA_PREFIX)]
    del result.metadata_props[:]
    result.metadata_props.extend(kept)
    entries = {"rcompile.version": rcompile.__version__, **metadata}
    for key in sorted(entries):
        value = entries[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        result.metadata_props.add(key=key, value=text)
    onnx.checker.check_model(result, full_check=True)
    return result


def rcompile_entries(model: onnx.ModelProto) -> dict[str, str]:
    """The rcompile metadata a model carries, as `finish_model` takes it to write it again
    (without the version, which it writes itself)."""
    return {
        entry.key: entry.value
        for entry in model.metadata_props
        if entry.key.startswith(METADATA_PREFIX) and entry.key != "rcompile.version"
    }


def check_targets(targets: list[Path], protected: tuple[Path, ...] = ()) -> None:
    """Fail before any work when an output cannot be written: it names no file, its folder
    is missing, it is a folder or not a regular file (a device, say), it is an input, or two
    outputs are the same file."""
    seen: dict[Path, Path] = {}
    inputs = {path.resolve() for path in protected}
    for target in targets:
        if target.name in ("", ".", ".."):
            raise ExportError(f"{str(target)!r}: names no file; give a file path")
        resolved = target.resolve()
        if resolved in inputs:
            raise ExportError(f"{target}: refusing to overwrite an input; choose another path")
        if resolved.is_dir():
            raise ExportError(f"{target}: is a folder; give a file name")
        if resolved.exists() and not resolved.is_file():
            raise ExportError(f"{target}: is not a regular file; give a file path")
        if not resolved.parent.is_dir():
            raise ExportError(f"{target}: the folder {target.parent} does not exist")
        if resolved in seen:
            raise ExportError(f"{target}: given for two outputs (also {seen[resolved]})")
        seen[resolved] = target


def write_files(files: dict[Path, bytes], protected: tuple[Path, ...] = ()) -> None:
    """Write the files of one result as a set, never over any of the `protected` files.

    Each is written to a temporary file beside it first, with the mode and owner of the file
    it replaces (else the mode the umask gives); only when all are written are they renamed
    into place, back to back, with Ctrl-C held off and a lock on their folder, so two runs
    never mix their files. Any failure removes every temporary and restores what the renames
    replaced: the folder holds the old set or the new one, whole."""
    paths = [Path(path) for path in files]
    check_targets(paths, protected)
    staged: list[tuple[Path, Path]] = []
    try:
        for path in paths:
            staged.append((_staged(path, files[path]), path))
        with _held_signals(), _folder_lock(paths[0].resolve().parent):
            _rename_all(staged)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def write_bytes(data: bytes, path: str | Path, protected: tuple[Path, ...] = ()) -> Path:
    """Write `data` to `path` (see `write_files`)."""
    write_files({Path(path): data}, protected)
    return Path(path)


def write_model(model: onnx.ModelProto, path: str | Path, protected: tuple[Path, ...] = ()) -> Path:
    return write_bytes(model.SerializeToString(deterministic=True), path, protected)


def _staged(path: Path, data: bytes) -> Path:
    """`data` in a temporary file beside `path`, with the mode (and, where allowed, the
    owner) of the file it will replace."""
    target = path.resolve()
    try:
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise _write_error(path, error) from error
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            _take_mode(stream.fileno(), target)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_error(path, error) from error
        raise
    return temporary


def _write_error(path: Path, error: OSError) -> ExportError:
    return ExportError(f"{path}: cannot write: {error.strerror or error}")


def _take_mode(handle: int, target: Path) -> None:
    try:
        existing = target.stat()
    except FileNotFoundError:
        os.fchmod(handle, 0o666 & ~_umask())
        return
    os.fchmod(handle, stat.S_IMODE(existing.st_mode))
    for owner in ((existing.st_uid, existing.st_gid), (-1, existing.st_gid)):
        try:
            os.fchown(handle, *owner)
            return
        except PermissionError:
            continue


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _rename_all(staged: list[tuple[Path, Path]]) -> None:
    """Rename every temporary onto its target; on a failure, undo the renames done."""
    done: list[tuple[Path | None, Path]] = []
    try:
        for temporary, path in staged:
            target, backup = path.resolve(), None
            if target.exists():
                backup = target.with_name(f".{target.name}.{os.getpid()}.old")
                os.link(target, backup)
            try:
                os.replace(temporary, target)
            except BaseException as error:
                if backup is not None:
                    backup.unlink()
                if isinstance(error, OSError):
                    raise _write_error(path, error) from error
                raise
            done.append((backup, target))
    except BaseException:
        for backup, target in reversed(done):
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(backup, target)
        raise
    for backup, _ in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


@contextlib.contextmanager
def _held_signals():
    """Ctrl-C and termination requests wait until the block ends (main thread only)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
