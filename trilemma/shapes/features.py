"""The feature network for FID, KID and precision/recall on Shapes, trained here and shipped.

FID's Inception-v3 weights cannot be downloaded in this project's world, and ImageNet features are
a poor ruler for flat shapes anyway. So the default features come from a small CNN trained on
Shapes renders to predict what a scene holds: how many objects of each (color, shape), how many of
them large, and where each color sits on a 4x4 grid. Its pooled 256-d activations then move with
the things the benchmark cares about (objects, colors, sizes, layout) and with image damage (blur,
noise), which the tests check: FID between two disjoint sets of real renders is near zero and grows
monotonically as images are blurred, noised or lose objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trilemma.shapes.scenes import COLORS, SHAPES
from trilemma.data.training import TrainingInputs
from trilemma.shapes.dataset import ShapesDataset
from trilemma.model import TrainableModel

GRID = 4
_COLORS, _SHAPES = list(COLORS), list(SHAPES)


def scene_targets(scene) -> torch.Tensor:
    """[count per (color, shape), large count per (color, shape), color occupancy of a 4x4 grid]."""
    counts = np.zeros((len(_COLORS), len(_SHAPES)), np.float32)
    large = np.zeros_like(counts)
    grid = np.zeros((len(_COLORS), GRID, GRID), np.float32)
    for o in scene.objects:
        c, s = _COLORS.index(o.color), _SHAPES.index(o.shape)
        counts[c, s] += 1
        large[c, s] += o.size == "large"
        grid[c, min(GRID - 1, int(o.cy * GRID)), min(GRID - 1, int(o.cx * GRID))] = 1.0
    return torch.from_numpy(np.concatenate([counts.ravel(), large.ravel(), grid.ravel()]))


N_COUNTS = len(_COLORS) * len(_SHAPES)
N_TARGETS = 2 * N_COUNTS + len(_COLORS) * GRID * GRID


FEATURE_NETWORK = "shapes-features"  # shipped under trilemma/weights beside the models: an evaluation network


@dataclass
class FeatureNetConfig:
    resolution: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256)
    num_features: int = 256


class ShapesFeatureNet(TrainableModel):
    """images (B, 3, R, R) in [0, 1] -> features (B, num_features); torchmetrics calls it so."""

    family = "evaluation"
    config_class = FeatureNetConfig

    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1), nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, config.num_features)
        self.head = nn.Linear(config.num_features, N_TARGETS)
        self.num_features = config.num_features  # what torchmetrics reads to size its statistics

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1]; images of another size are resized to the training resolution."""
        if x.shape[-1] != self.config.resolution:
            x = F.interpolate(x, size=(self.config.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return F.silu(self.proj(self.body(x).mean(dim=(2, 3))))

    def forward(self, images, optimizer_name: str | None = None):
        if isinstance(images, dict):  # the training loop's call
            return self.training_step(images, optimizer_name)
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return self.features(images * 2 - 1)

    def training_inputs(self) -> TrainingInputs:
        """Shapes renders, each with its scene's targets (counts and layout)."""
        return TrainingInputs(self.config.resolution, per_sample=with_scene_targets)

    def fit_data(self, training) -> None:
        if not isinstance(training.source, ShapesDataset):  # refused now, not at the first batch
            raise ValueError("the Shapes feature network learns from Shapes scenes; give it Shapes data ({\"type\": \"shapes\"})")

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        pred = self.head(self.features(batch["pixel_values"]))
        target = batch["targets"]
        counts = F.mse_loss(pred[:, :2 * N_COUNTS], target[:, :2 * N_COUNTS])
        layout = F.binary_cross_entropy_with_logits(pred[:, 2 * N_COUNTS:], target[:, 2 * N_COUNTS:])
        with torch.no_grad():
            exact = (pred[:, :N_COUNTS].round() == target[:, :N_COUNTS]).all(1).float().mean()
        return {"loss": counts + layout, "counts_mse": counts.detach(), "layout_bce": layout.detach(), "counts_exact": exact}

    def preview(self, prompts, seed: int = 0):
        raise NotImplementedError("the feature network draws no images")


def with_scene_targets(sample: dict, index: int, data) -> dict:
    """The scene targets of Shapes sample `index` (the feature network trains on Shapes data only)."""
    if not isinstance(data, ShapesDataset):
        raise ValueError("the Shapes feature network learns from Shapes scenes; give it Shapes data ({\"type\": \"shapes\"})")
    return {"pixel_values": sample["pixel_values"], "targets": scene_targets(data.scene(index))}

