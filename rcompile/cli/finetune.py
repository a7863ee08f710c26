"""`rcompile finetune`: training through the quantizers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rcompile.cli.app import (
    AsJson,
    Debug,
    Preprocess,
    app,
    emit,
    finite,
    input_paths,
)
from rcompile.data import parse_preprocessing
from rcompile.errors import UserError
from rcompile.exporter import check_targets, write_model


@app.command(
    "finetune",
    help="Train an rcompile model's weights through its quantizers (full-precision shadow "
    "weights, straight-through gradients) and write it with the same plan. Needs PyTorch "
    "(the `finetune` extra).",
)
def finetune_command(
    model: Annotated[Path, typer.Argument(help="A model written by rcompile.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
    train: Annotated[Path, typer.Option(help="Labelled training data.")],
    val: Annotated[Path, typer.Option(help="Labelled validation data (early stopping).")],
    epochs: Annotated[
        int, typer.Option(min=1, help="At most this many passes over the data.")
    ] = 10,
    lr: Annotated[
        float,
        typer.Option(
            callback=lambda value: finite(value, "--lr", positive=True),
            help="Peak learning rate (Adam, cosine schedule).",
        ),
    ] = 3e-4,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per training step.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the shuffling and the rounding.")] = 0,
    stochastic_rounding: Annotated[
        bool,
        typer.Option("--stochastic-rounding", help="Round weights stochastically in training."),
    ] = False,
    patience: Annotated[
        int,
        typer.Option(min=0, help="Stop after this many epochs without a better validation top-1."),
    ] = 3,
    preprocess: Preprocess = "imagenet",
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    inputs = input_paths(model, train, val)
    check_targets([output], inputs)
    try:
        from rcompile.finetune import TrainOptions, finetune
    except ImportError as error:
        raise UserError(
            f'fine-tuning needs PyTorch ({error}); install it with pip install -e ".[finetune]"'
        ) from None
    options = TrainOptions(epochs, lr, batch_size, seed, stochastic_rounding, patience)
    result = finetune(
        model, train, val, options, parse_preprocessing(preprocess), sys.stderr.isatty()
    )
    write_model(result.model, output, inputs)
    emit({"output": str(output), **result.as_dict()}, as_json, _finetune_lines)


def _finetune_lines(summary: dict) -> list[str]:
    return [
        f"wrote {summary['output']}",
        f"validation top-1 {summary['val_top1_before']:.2f} % before, "
        f"{summary['val_top1_after']:.2f} % after (best epoch {summary['best_epoch']} of "
        f"{len(summary['history'])})",
    ]
