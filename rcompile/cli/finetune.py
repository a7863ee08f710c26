"""`rcompile finetune`: training through the quantizers, taught by the FP32 model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rcompile.cli.app import (
    AsJson,
    Debug,
    Device,
    Preprocess,
    app,
    emit,
    input_paths,
    number_option,
)
from rcompile.data import parse_preprocessing
from rcompile.errors import UserError
from rcompile.exporter import check_targets, write_files
from rcompile.origin import find_teacher
from rcompile.sessions import on_device


def _share(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"{value} is not a share between 0 and 1", param_hint="--holdout")
    return value


@app.command(
    "finetune",
    help="Train an rcompile model's weights through its quantizers (full-precision shadow "
    "weights, straight-through gradients), taught by the FP32 model it was compiled from, and "
    "write it with the same plan and storage. Labels are optional. Needs PyTorch (the "
    "`finetune` extra).",
)
def finetune_command(
    model: Annotated[Path, typer.Argument(help="A model written by rcompile.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
    train: Annotated[
        Path,
        typer.Option(help="Training data: a folder of images, or a .npz (labels optional)."),
    ],
    val: Annotated[
        Path | None,
        typer.Option(help="Validation data for early stopping (default: --holdout of --train)."),
    ] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(help="The FP32 teacher (default: the model MODEL was compiled from)."),
    ] = None,
    epochs: Annotated[
        int,
        typer.Option(min=0, help="At most this many passes of end-to-end training (0: none)."),
    ] = 10,
    rounding_steps: Annotated[
        int,
        typer.Option(
            min=0,
            help="Steps per layer of learned rounding (AdaRound) before end-to-end training "
            "(0: none).",
        ),
    ] = 300,
    lr: Annotated[
        float,
        number_option(
            "--lr",
            "Peak learning rate, in quantization steps per update (Adam, cosine schedule).",
            positive=True,
        ),
    ] = 0.001,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per training step.")] = 32,
    seed: Annotated[
        int, typer.Option(help="Seed of the shuffling, augmentation, hold-out and rounding.")
    ] = 0,
    temperature: Annotated[
        float,
        number_option(
            "--temperature",
            "Softening of both models' outputs in the distillation loss.",
            positive=True,
        ),
    ] = 1.0,
    feature_loss: Annotated[
        float,
        number_option(
            "--feature-loss",
            "Weight of the squared error of the quantized layers' outputs against the "
            "teacher's (0: outputs only).",
        ),
    ] = 0.0,
    holdout: Annotated[
        float,
        typer.Option(callback=_share, help="Share of --train held out when there is no --val."),
    ] = 0.2,
    augment: Annotated[
        bool,
        typer.Option(help="Random resized crops and flips of image-folder training data."),
    ] = True,
    stochastic_rounding: Annotated[
        bool,
        typer.Option("--stochastic-rounding", help="Round weights stochastically in training."),
    ] = False,
    patience: Annotated[
        int,
        typer.Option(min=0, help="Stop after this many epochs without a better validation."),
    ] = 3,
    refit_activations: Annotated[
        bool,
        typer.Option(
            "--refit-activations",
            help="After training, re-choose each activation's fractional length where one "
            "bit finer or coarser lowers the training loss (changes the plan).",
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the run's record (.json: the options, the teacher's SHA-256, "
            "every epoch). Default: beside the output."
        ),
    ] = None,
    device: Device = "cpu",
    preprocess: Preprocess = "imagenet",
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    try:
        from rcompile.finetune import TrainOptions, finetune, read_quantized
    except ImportError as error:
        raise UserError(
            f'fine-tuning needs PyTorch ({error}); install it with pip install -e ".[finetune]"'
        ) from None
    options = TrainOptions(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        stochastic_rounding=stochastic_rounding,
        patience=patience,
        temperature=temperature,
        feature_loss=feature_loss,
        holdout=holdout,
        augment=augment,
        device=device,
        rounding_steps=rounding_steps,
        refit_activations=refit_activations,
    )
    report = report or output.with_name(f"{output.stem}.finetune.json")
    check_targets([output, report], input_paths(model, train, val, teacher))
    if teacher is None:
        teacher = find_teacher(read_quantized(model), model)
    inputs = input_paths(model, train, val, teacher)
    check_targets([output, report], inputs)
    with on_device(device):
        result = finetune(
            model,
            train,
            val,
            options,
            parse_preprocessing(preprocess),
            sys.stderr.isatty(),
            teacher,
        )
    summary = {"output": str(output), "report": str(report), **result.as_dict()}
    write_files(
        {
            output: result.model.SerializeToString(deterministic=True),
            report: json.dumps(summary, indent=2).encode() + b"\n",
        },
        inputs,
    )
    emit(summary, as_json, _finetune_lines)


def _finetune_lines(summary: dict) -> list[str]:
    metric = "top-1" if summary["metric"] == "top-1" else "agreement with FP32"
    rounding = summary["rounding"]
    learned = (
        [
            f"learned rounding: {sum(r['changed'] for r in rounding):,} of "
            f"{sum(r['weights'] for r in rounding):,} weights of {len(rounding)} layers take "
            "the other neighbour than the nearest"
        ]
        if rounding
        else []
    )
    return [
        f"wrote {summary['output']} and {summary['report']} (teacher {summary['teacher']}, "
        f"on {summary['device']})",
        *learned,
        *_refit_lines(summary),
        f"validation {metric} {summary['val_before']:.2f} % before, "
        f"{summary['val_after']:.2f} % after (best epoch {summary['best_epoch']} of "
        f"{len(summary['history']) - 1}; validation: {summary['validation']})",
    ]


def _refit_lines(summary: dict) -> list[str]:
    if not summary["options"]["refit_activations"]:
        return []
    changes = summary["refit_activations"]
    if not changes:
        return ["refit activations: every fractional length stays (none lowers the loss)"]
    moved = ", ".join(
        f"{c['tensors'][0]} {'/'.join(c['before'])} -> {'/'.join(c['after'])}" for c in changes
    )
    return [f"refit activations: {len(changes)} re-chosen ({moved})"]
