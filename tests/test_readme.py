"""Every `.venv/bin/rcompile` command and the Python example in README.md run as written
(from a scratch folder, with `models/` pointing at the repository's)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def commands() -> list[list[str]]:
    """The README's indented `.venv/bin/rcompile` commands, continuation lines joined."""
    text = re.sub(r"\\\n\s+", " ", README)
    lines = re.findall(r"^    \.venv/bin/rcompile (.+)$", text, re.M)
    return [shlex.split(line) for line in lines]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / "models").symlink_to(ROOT / "models")
    return folder


def assert_runs(arguments: list[str], folder: Path) -> None:
    """`python ARGUMENTS` in `folder` exits 0."""
    run = subprocess.run(
        [sys.executable, *arguments],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_the_readme_shows_the_commands_it_documents():
    names = [command[0] for command in commands()]
    assert names[0] == "models/lenet5.onnx" and {"verify", "vectors", "search", "finetune"} <= set(
        names
    )


@pytest.mark.parametrize("index", range(len(commands())), ids=lambda i: " ".join(commands()[i][:2]))
def test_each_readme_command_runs(index, scratch):
    if commands()[index][0] == "finetune":
        pytest.importorskip("torch", reason="the finetune command needs the finetune extra")
    assert_runs(["-m", "rcompile", *commands()[index]], scratch)


PYTHON = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("code", PYTHON, ids=lambda code: code.splitlines()[0])
def test_each_readme_python_example_runs(code, scratch):
    assert_runs(["-c", code], scratch)


BIT_TRUE = (ROOT / "docs" / "bit-true.md").read_text()


@pytest.mark.parametrize(
    "line", re.findall(r"^rcompile (.+)$", BIT_TRUE, re.M), ids=lambda line: line[:20]
)
def test_each_bit_true_doc_command_runs_after_the_readme(line, scratch):
    assert_runs(["-m", "rcompile", *shlex.split(line)], scratch)


@pytest.mark.parametrize("code", re.findall(r"```python\n(.*?)```", BIT_TRUE, re.S))
def test_the_bit_true_doc_python_example_runs(code, scratch):
    assert_runs(["-c", code], scratch)


FINETUNE = (ROOT / "docs" / "finetune.md").read_text()


def test_the_fine_tuning_doc_commands_run_in_order(tmp_path):
    """Compile, then fine-tune with nothing but the calibration data: the teacher is found."""
    pytest.importorskip("torch", reason="the finetune command needs the finetune extra")
    (tmp_path / "models").symlink_to(ROOT / "models")
    lines = re.findall(r"^rcompile (.+)$", FINETUNE, re.M)
    assert [shlex.split(line)[0] for line in lines] == ["models/lenet5.onnx", "finetune"]
    for line in lines:
        assert_runs(["-m", "rcompile", *shlex.split(line)], tmp_path)
    assert (tmp_path / "lenet5_dfp4_ft.onnx").is_file()


SEARCH = (ROOT / "docs" / "search.md").read_text()


def test_the_search_doc_commands_run_and_print_what_it_shows(scratch):
    text = re.sub(r"\\\n\s+", " ", SEARCH)
    lines = re.findall(r"^rcompile (search .+)$", text, re.M)
    assert len(lines) == 2
    printed = re.search(r"^top1 on \d+ search samples: .+$", SEARCH, re.M).group(0)
    for line in lines:
        run = subprocess.run(
            [sys.executable, "-m", "rcompile", *shlex.split(line)],
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, run.stderr
    assert printed in run.stdout.splitlines()
