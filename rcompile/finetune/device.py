"""The torch device fine-tuning runs on: `cpu`, `cuda` (a CUDA GPU, with CuPy for rcompile's
quantizer kernels), or `auto` (CUDA where both are there, else the CPU)."""

from __future__ import annotations

import importlib.util

import torch

from rcompile.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def torch_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    usable = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
    if name == "auto":
        return torch.device("cuda" if usable else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no CUDA GPU on this machine")
    if name == "cuda" and not usable:
        raise UserError('--device cuda needs CuPy for the quantizers: pip install -e ".[cuda]"')
    return torch.device(name)
