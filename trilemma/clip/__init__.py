"""CLIP, and what stands on it: scoring images against prompts (CLIP score, reranking), steering a
diffusion sampler (CLIP guidance), and conditioning a generator on its text tower.

`load_clip(source)` takes the name of a shipped CLIP (``shapes-clip``) or any local transformers CLIP
folder (`CLIPModel` + `CLIPProcessor` files, weights as model.safetensors): nothing is downloaded and
pickled weights are refused. Every user of CLIP in the project goes through it, so a CLIP trained
here and one brought from elsewhere are used the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trilemma.checkpoint import file_sha256
from trilemma.model import TrainableModel
from trilemma.registry import WEIGHTS_DIR, shipped_clips

DEFAULT_CLIP = "shapes-clip"
DEFAULT_NOISE_AWARE_CLIP = {16: "shapes-clip-noised-16"}  # by the guided model's resolution


class CLIPLoadError(ValueError):
    """A CLIP folder that cannot be found, read or trusted."""


def resolve_clip(source: str | Path) -> Path:
    """The folder of a shipped CLIP's name or of a local path; one line naming the fix if neither."""
    shipped = WEIGHTS_DIR / str(source)
    folder = shipped if "/" not in str(source) and (shipped / "config.json").is_file() else Path(source).expanduser()
    if not folder.is_dir():
        raise CLIPLoadError(f"no CLIP at {source}: give a shipped CLIP's name ({DEFAULT_CLIP}) or a folder holding a "
                            "transformers CLIP (config.json, model.safetensors, tokenizer and preprocessor files)")
    if not (folder / "config.json").is_file():
        raise CLIPLoadError(f"{folder} has no config.json; it is not a transformers CLIP folder")
    if not (folder / "model.safetensors").is_file():
        # Pickled weights (pytorch_model.bin) are refused: loading them can run code.
        raise CLIPLoadError(f"{folder} has no model.safetensors (pickled weights are not loaded)")
    return folder


class CLIPScorer(torch.nn.Module):
    """A frozen CLIP that embeds prompts and images into its joint space and scores them.

    Images go in as tensors in [-1, 1] (B, 3, H, W) or as PIL images; they are center-cropped, resized to the
    processor's crop size and normalized with its mean and std in torch, so the same path is differentiable
    (CLIP guidance backpropagates through it) and matches `CLIPProcessor` on square inputs.
    """

    def __init__(self, folder: Path):
        super().__init__()
        from transformers import CLIPModel, CLIPProcessor
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # trilemma's extra keys in config.json are not a fault
        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a model of a few MB
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval().requires_grad_(False)
            self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CLIPLoadError(f"{folder} does not load as a transformers CLIP ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        self.folder = folder
        ip = self.processor.image_processor
        crop = ip.crop_size if getattr(ip, "do_center_crop", True) and ip.crop_size else ip.size
        self.image_size = (int(crop.get("height", crop.get("shortest_edge"))), int(crop.get("width", crop.get("shortest_edge"))))
        self.register_buffer("mean", torch.tensor(ip.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(ip.image_std).view(1, 3, 1, 1), persistent=False)
        self.max_length = min(int(self.model.config.text_config.max_position_embeddings),
                              int(getattr(self.processor.tokenizer, "model_max_length", 77) or 77))

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    # --- the two towers -------------------------------------------------------------------
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Projected text embeddings (B, D), not normalized (GALIP conditions on them as they are)."""
        enc = self.processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device))
        return feature_tensor(out)

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings (B, D)."""
        return F.normalize(self.text_features(prompts), dim=-1)

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unit-norm embeddings (B, D), the text tower's last hidden states (B, L, H), their mask (B, L)), padded
        to the tower's full length L: what unCLIP's prior reads (the embedding and the caption's token states)."""
        enc = self.processor.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        out = self.model.text_model(input_ids=ids, attention_mask=mask)
        return F.normalize(self.model.text_projection(out.pooler_output), dim=-1), out.last_hidden_state, mask

    def pixel_values(self, images) -> torch.Tensor:
        """PIL images or a [-1, 1] tensor to the tower's normalized input (differentiable for tensors)."""
        if not torch.is_tensor(images):
            arr = np.stack([np.array(im.convert("RGB"), dtype=np.float32) for im in images])
            images = torch.from_numpy(arr).permute(0, 3, 1, 2).div(127.5).sub(1.0)
        x = images.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        side = min(h, w)
        if h != w:  # CLIP's center crop after a shortest-side resize
            top, left = (h - side) // 2, (w - side) // 2
            x = x[..., top:top + side, left:left + side]
        if (side, side) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=side > self.image_size[0], align_corners=False)
        return ((x + 1) / 2 - self.mean) / self.std

    def embed_images(self, images) -> torch.Tensor:
        """Unit-norm image embeddings (B, D) of PIL images or a [-1, 1] tensor."""
        return F.normalize(feature_tensor(self.model.get_image_features(pixel_values=self.pixel_values(images))), dim=-1)

    @torch.no_grad()
    def similarity(self, images, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of image i with prompt i (B,)."""
        return (self.embed_images(images) * self.embed_text(prompts)).sum(-1)


def feature_tensor(out) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4, an output object in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class _TensorFeatures(torch.nn.Module):
    """A CLIPModel whose get_*_features return tensors, as torchmetrics 1.x expects (transformers 5 returns
    output objects from them)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values):
        return feature_tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return feature_tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


_LOADED: dict[str, CLIPScorer] = {}


def pinned_clip(config) -> CLIPScorer:
    """The frozen CLIP a model names in `config.clip` (a shipped name or a folder), checked against the sha256 it
    was trained with (`config.clip_sha256`, recorded on first use); one line naming the fix if it changed. The
    config keeps a shipped CLIP's name, or the folder's absolute path."""
    folder = resolve_clip(config.clip)
    digest = file_sha256(folder / "model.safetensors")
    if config.clip_sha256 is not None and digest != config.clip_sha256:
        raise ValueError(f"{folder}/model.safetensors: sha256 {digest} differs from the {config.clip_sha256} this model "
                         "was trained with; give the CLIP it was trained on")
    scorer = load_clip(config.clip)
    config.clip_sha256 = digest
    config.clip = config.clip if config.clip in shipped_clips() else str(folder.resolve())
    return scorer


def load_clip(source: str | Path = DEFAULT_CLIP) -> CLIPScorer:
    """A frozen CLIPScorer for a shipped CLIP's name or a local CLIP folder (loaded once per process)."""
    folder = resolve_clip(source).resolve()
    key = str(folder)
    if key not in _LOADED:
        _LOADED[key] = CLIPScorer(folder)
    return _LOADED[key]


def clip_score(images: list[Image.Image], prompts: list[str], source: str | Path = DEFAULT_CLIP, batch_size: int = 100) -> float:
    """CLIP score (Hessel et al., 2021) as torchmetrics computes it, 100 * max(cos, 0) averaged over the pairs,
    with the CLIP of `source` (torchmetrics loads it from the local folder through its callable hook)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    scorer = load_clip(source)
    metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(scorer.model), scorer.processor))
    for start in range(0, len(images), batch_size):
        batch = [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images[start:start + batch_size]]
        metric.update(batch, list(prompts[start:start + batch_size]))
    return float(metric.compute())


_NOISE_AWARE: dict[str, torch.nn.Module] = {}


def load_noise_aware_clip(source: str | Path | None, resolution: int):
    """A noise-aware CLIP (`trilemma.clip.noise_aware`) by shipped name or folder; None: the shipped one for `resolution`."""
    if source is None:
        if resolution not in DEFAULT_NOISE_AWARE_CLIP:
            raise CLIPLoadError(f"no noise-aware CLIP is shipped for {resolution} px images; train one "
                                "(configs/shapes-clip-noised-16.json shows how) and give it with --guidance-clip")
        source = DEFAULT_NOISE_AWARE_CLIP[resolution]
    shipped = WEIGHTS_DIR / str(source)
    folder = shipped if "/" not in str(source) and (shipped / "config.json").is_file() else Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise CLIPLoadError(f"no noise-aware CLIP at {source}: give a shipped one's name "
                            f"({', '.join(DEFAULT_NOISE_AWARE_CLIP.values())}) or a folder that `trilemma train` wrote")
    key = str(folder.resolve())
    if key not in _NOISE_AWARE:
        model = TrainableModel.from_pretrained(folder)
        if type(model).__name__ != "NoiseAwareCLIP":
            raise CLIPLoadError(f"{source} holds a {type(model).__name__}, not a noise-aware CLIP: CLIP guidance of a pixel "
                                "model reads noisy images, which only a CLIP trained on them can")
        _NOISE_AWARE[key] = model.eval().requires_grad_(False)
    model = _NOISE_AWARE[key]
    if model.resolution != resolution:
        raise CLIPLoadError(f"{source} reads {model.resolution} px images; this model's base draws {resolution} px")
    return model
