"""Fidelity and diversity of a set of images against real renders.

FID (Heusel et al., 2017) and KID (Binkowski et al., 2018) are torchmetrics', given a feature
network as a module. Precision and recall (Kynkaanniemi et al., 2019) and density and coverage
(Naeem et al., 2020) are written here on the same features: torchmetrics has none of them, and the
reference implementation (the `prdc` package) is forty lines of numpy over scikit-learn distances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from trilemma.clip import feature_tensor, load_clip
from trilemma.registry import WEIGHTS_DIR
from trilemma.shapes.features import FEATURE_NETWORK, ShapesFeatureNet


def load_feature_network(inception_weights: str | None = None, clip: str | Path | None = None):
    """The shipped Shapes feature network, Inception-v3 (FID's standard) from a local weights file, or the image
    tower of a CLIP (a shipped CLIP's name or a local CLIP folder: FD_CLIP)."""
    if clip is not None:

        if inception_weights:
            raise ValueError("--inception-weights and --features clip name two feature spaces; give one")
        return CLIPFeatures(load_clip(clip))
    if inception_weights:
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise ValueError("--inception-weights needs torch-fidelity (and torchvision), which this environment lacks; "
                             "pip install torch-fidelity on a machine where torchvision works") from None
        if not Path(inception_weights).is_file():
            raise ValueError(f"no Inception weights file at {inception_weights}")
        return {"feature": 2048, "feature_extractor_weights_path": inception_weights}

    folder = WEIGHTS_DIR / FEATURE_NETWORK
    if not (folder / "config.json").is_file():
        raise ValueError(f"the Shapes feature network ({folder}) is not shipped; "
                         "train it with trilemma train configs/shapes-features.json")
    return ShapesFeatureNet.from_pretrained(folder).eval()


class CLIPFeatures(torch.nn.Module):
    """uint8 images (B, 3, H, W) -> a CLIP's image embeddings, as torchmetrics feeds its feature extractor: FD_CLIP
    (Kynkaanniemi et al., 2023, "The Role of ImageNet Classes in Frechet Inception Distance") and KID, precision,
    recall, density and coverage in the same space.

    The features are the projected image embeddings *before* normalisation (get_image_features, the output of
    the visual projection), as clean-fid's FD_CLIP takes them (encode_image, unnormalised): the norm carries
    information that the unit sphere would drop, and FID's Gaussian fit is meant for an unconstrained space."""

    def __init__(self, scorer):
        super().__init__()
        self.scorer = scorer
        self.num_features = int(scorer.model.config.projection_dim)  # what torchmetrics reads to size its statistics

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.scorer.pixel_values(images.float() / 127.5 - 1.0)
        return feature_tensor(self.scorer.model.get_image_features(pixel_values=pixels)).double()


def to_uint8_tensor(images: list[Image.Image], resolution: int | None = None) -> torch.Tensor:
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if resolution and im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def extract(network, images: list[Image.Image], batch_size: int = 200) -> torch.Tensor:
    """Features of PIL images (uint8 in, as torchmetrics feeds them)."""
    x = to_uint8_tensor(images)
    return torch.cat([network(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double()


def fid_kid(network, real: list[Image.Image], fake: list[Image.Image], kid_subset: int = 100) -> dict:
    """FID and KID by torchmetrics with `network` (a module with `num_features`) as the feature extractor."""
    kwargs = network if isinstance(network, dict) else {"feature": network}
    fid = FrechetInceptionDistance(**kwargs, reset_real_features=True)
    subset = max(2, min(kid_subset, len(real), len(fake)))
    kid = KernelInceptionDistance(**kwargs, subset_size=subset, reset_real_features=True)
    real_x, fake_x = to_uint8_tensor(real), to_uint8_tensor(fake)
    for metric in (fid, kid):
        for start in range(0, len(real_x), 200):
            metric.update(real_x[start:start + 200], real=True)
        for start in range(0, len(fake_x), 200):
            metric.update(fake_x[start:start + 200], real=False)
    torch.manual_seed(0)  # KID draws random subsets
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict:
    """On feature rows. Each real point's k-NN radius (among real points) defines the real manifold;
    precision: share of fakes inside it; recall: share of reals inside the fakes' manifold; density:
    how many real balls hold each fake, over k; coverage: share of real balls that hold a fake."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set")
    real, fake = real.double(), fake.double()
    real_radii = _kth_neighbour_distance(real, k)
    fake_radii = _kth_neighbour_distance(fake, k)
    d = torch.cdist(real, fake)  # (n_real, n_fake)
    inside_real = d < real_radii[:, None]
    return {
        "precision": float(inside_real.any(0).double().mean()),
        "recall": float((d < fake_radii[None, :]).any(1).double().mean()),
        "density": float(inside_real.double().sum(0).mean() / k),
        "coverage": float((d.min(1).values < real_radii).double().mean()),
    }


def _kth_neighbour_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # k + 1: each point is its own nearest neighbour
