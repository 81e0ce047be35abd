"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision"),
trained here from scratch.

The networks are transformers' own `CLIPModel` (a ViT image tower and a causal text tower, each
projected into one joint space, with a learned temperature); what is written here is the training
(symmetric InfoNCE over the batch) and the data around it. On Shapes, each image also gets a hard
negative caption (NegCLIP, Yuksekgonul et al., 2023: its relation flipped, its colors swapped between
objects, its count or one attribute changed), a negative of that image only: in-batch negatives
almost never differ from a caption in its relation alone, and a CLIP trained without them reads
captions as bags of words.

The tokenizer is CLIP's own (transformers' `CLIPTokenizer`: lower-cased byte-level BPE with an
end-of-word suffix), its merges learnt from the training captions, as no CLIP vocabulary can be
downloaded here.

A saved folder is at once a trilemma checkpoint and a transformers CLIP folder: `config.json` holds
`CLIPConfig`'s fields beside trilemma's own keys (transformers keeps unknown keys as attributes),
`model.safetensors` holds `CLIPModel`'s state dict under its own names, and the tokenizer and image
processor files sit beside them, so `CLIPModel.from_pretrained(DIR)`, `CLIPProcessor.from_pretrained(DIR)`
and torchmetrics' `CLIPScore` load it offline.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from trilemma.checkpoint import save_checkpoint
from trilemma.clip import feature_tensor
from trilemma.clip.contrastive import contrastive_loss
from trilemma.config import parse_config
from trilemma.model import TrainableModel
from trilemma.data.training import TrainingInputs, TrainingSet

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

TOKENIZER_CAPTIONS = 20000  # captions a CLIP's BPE is learnt from when training starts


@dataclass
class CLIPTowerConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4


@dataclass
class CLIPConfig:
    resolution: int = 64
    patch_size: int = 8
    vision: dict = field(default_factory=lambda: asdict(CLIPTowerConfig()))
    text: dict = field(default_factory=lambda: asdict(CLIPTowerConfig()))
    projection_dim: int = 128
    max_length: int = 32
    vocab_size: int = 2048  # the BPE's size when it is learnt (at most; the captions may need fewer)
    tokenizer: str | None = None  # the learnt tokenizer (tokenizers JSON); learnt from the captions when training starts
    hard_negatives: bool | None = None  # None: on for Shapes (whose scenes make them), off for other data


def learn_tokenizer(captions: list[str], vocab_size: int, max_length: int):
    """A CLIPTokenizer whose BPE merges are learnt from `captions` (CLIP's normalizer and pre-tokenizer)."""
    from tokenizers import pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend.train_from_iterator(captions, BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                                     initial_alphabet=alphabet, end_of_word_suffix="</w>"))
    model = json.loads(backend.to_str())["model"]
    vocab = dict(model["vocab"])
    # Every byte, alone and word-final, so that any text encodes (an unseen word as its bytes), as in CLIP's vocabulary.
    for c in sorted(alphabet):
        for token in (c, c + "</w>"):
            vocab.setdefault(token, len(vocab))
    return _tokenizer({"vocab": vocab, "merges": [list(m) if isinstance(m, (list, tuple)) else m.split(" ") for m in model["merges"]]},
                      max_length)


def _tokenizer(spec: dict, max_length: int):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=spec["vocab"], merges=[tuple(m) for m in spec["merges"]], model_max_length=max_length)


def image_processor(resolution: int):
    """CLIP's image processor, set to map [0, 255] pixels to [-1, 1] at `resolution` (the training range)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution},
                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


class CLIP(TrainableModel):
    family = "clip"
    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.resolution = config.resolution
        if config.resolution % config.patch_size:
            raise ValueError(f"CLIP: resolution {config.resolution} is not a multiple of patch_size {config.patch_size}")
        self.tokenizer = _tokenizer(json.loads(config.tokenizer), config.max_length) if config.tokenizer else None
        self.clip = self._build()

    def _build(self):
        from transformers import CLIPConfig as HFConfig, CLIPModel

        v = parse_config(CLIPTowerConfig, self.config.vision, "model: vision")
        t = parse_config(CLIPTowerConfig, self.config.text, "model: text")
        vocab = len(self.tokenizer) if self.tokenizer is not None else self.config.vocab_size
        ids = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # the learnt tokenizer puts its two specials first
        if self.tokenizer is not None:
            ids = {"bos_token_id": self.tokenizer.bos_token_id, "eos_token_id": self.tokenizer.eos_token_id,
                   "pad_token_id": self.tokenizer.pad_token_id}
        hf = HFConfig(
            text_config=dict(vocab_size=vocab, hidden_size=t.hidden_size, intermediate_size=t.hidden_size * t.mlp_ratio,
                             num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                             max_position_embeddings=self.config.max_length, projection_dim=self.config.projection_dim, **ids),
            vision_config=dict(image_size=self.config.resolution, patch_size=self.config.patch_size, hidden_size=v.hidden_size,
                               intermediate_size=v.hidden_size * v.mlp_ratio, num_hidden_layers=v.num_layers,
                               num_attention_heads=v.num_heads, projection_dim=self.config.projection_dim),
            projection_dim=self.config.projection_dim)
        return CLIPModel(hf)

    # --- the two towers -----------------------------------------------------------
    def _device(self):
        return self.clip.logit_scale.device

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise RuntimeError("this CLIP has no tokenizer yet: it is learnt when training starts")
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.config.max_length,
                             return_tensors="pt")
        return {k: v.to(self._device()) for k, v in enc.items()}

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(feature_tensor(self.clip.get_text_features(**self.tokenize(prompts))), dim=-1)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] at the model's resolution (others are resized, bilinear with antialiasing)."""
        if pixels.shape[-1] != self.resolution or pixels.shape[-2] != self.resolution:
            pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                                   align_corners=False)
        return F.normalize(feature_tensor(self.clip.get_image_features(pixel_values=pixels.to(self._device()))), dim=-1)

    def set_tokenizer(self, tokenizer) -> None:
        """Take a CLIPTokenizer (kept in the config, so a checkpoint rebuilds it) and rebuild the towers for its
        vocabulary (fresh weights)."""
        self.tokenizer = tokenizer
        self.config.tokenizer = json.dumps({"vocab": tokenizer.get_vocab(), "merges": _merges(tokenizer)})
        self.clip = self._build()

    # --- training -----------------------------------------------------------------
    def training_inputs(self) -> TrainingInputs:
        """Pixels; the captions to learn a tokenizer from when it has none yet; hard negatives where the data makes
        them, unless the config says."""
        return TrainingInputs(self.resolution, hard_negatives=self.config.hard_negatives,
                              captions=TOKENIZER_CAPTIONS if self.tokenizer is None else 0)

    def fit_data(self, training: TrainingSet) -> None:
        if self.tokenizer is None:
            self.set_tokenizer(learn_tokenizer(training.captions, self.config.vocab_size, self.config.max_length))

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        images = self.embed_images(batch["pixel_values"])
        texts = self.embed_text(batch["text"] + batch.get("negative_text", []))
        return contrastive_loss(images, texts, self.clip.logit_scale)

    def preview(self, prompts, seed=0):  # a CLIP draws nothing; the loop's sample grid is skipped
        return [], []

    # --- saving: a trilemma checkpoint that is also a transformers CLIP folder ------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.clip.state_dict())

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.clip.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")

    def save_pretrained(self, directory, dtype=None, extra_files=None) -> None:
        tensors = self.checkpoint_tensors()
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        files = dict(extra_files or {})
        if self.tokenizer is not None:
            with tempfile.TemporaryDirectory() as tmp:
                self.tokenizer.save_pretrained(tmp)
                image_processor(self.resolution).save_pretrained(tmp)
                for f in Path(tmp).iterdir():
                    files.setdefault(f.name, f.read_text())
        hf = self.clip.config.to_dict()
        hf["architectures"] = ["CLIPModel"]
        if dtype is not None:
            hf["dtype"] = str(dtype).removeprefix("torch.")
        config = {**hf, "family": self.family, "model_class": type(self).__name__, "config": self.to_config()}
        save_checkpoint(directory, config, tensors, files)


def _merges(tokenizer) -> list[list[str]]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return [list(m) if isinstance(m, (list, tuple)) else m.split(" ") for m in model["merges"]]
