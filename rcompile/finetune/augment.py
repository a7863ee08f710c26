"""Augmentation for training on image folders: a random resized crop and a horizontal flip
of every image, seeded. The teacher labels the augmented image, so a hundred calibration
images give a new training set every epoch."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

AREA = (0.25, 1.0)
"""The share of the image a crop covers."""

ASPECT = (3 / 4, 4 / 3)
"""The crop's width over its height, relative to the image's."""


def random_resized_crops(
    inputs: dict[str, torch.Tensor], rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Each image input (samples, channels, height, width) cropped and resized back to its
    size (bilinear), and flipped with probability one half; other inputs as they are."""
    return {
        name: _crops(value, rng) if value.dim() == 4 and value.is_floating_point() else value
        for name, value in inputs.items()
    }


def _crops(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    count = images.shape[0]
    area = rng.uniform(*AREA, count)
    aspect = np.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1]), count))
    width = np.minimum(np.sqrt(area * aspect), 1.0)
    height = np.minimum(np.sqrt(area / aspect), 1.0)
    centre_x = rng.uniform(-1.0, 1.0, count) * (1.0 - width)
    centre_y = rng.uniform(-1.0, 1.0, count) * (1.0 - height)
    flip = np.where(rng.random(count) < 0.5, -1.0, 1.0)
    theta = np.zeros((count, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(
        torch.from_numpy(theta).to(images.device), list(images.shape), align_corners=False
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
