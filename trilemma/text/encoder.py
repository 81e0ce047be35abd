"""A trainable transformer text encoder (CLIP's text tower, sized for Shapes).

Built on transformers' `CLIPTextModel` rather than written again: it gives
per-token states for cross-attention and a pooled vector (the [EOS] state),
the two outputs Stable Diffusion and the GANs' sentence conditioning use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from trilemma.text.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class TextEncoderConfig:
    vocab_size: int
    max_length: int = 16
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4


class TransformerTextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.transformer = CLIPTextModel(CLIPTextConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=4 * config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            max_position_embeddings=config.max_length,
            pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        ))

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states (B, L, D), pooled (B, D))."""
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output

    def to_config(self) -> dict:
        return asdict(self.config)
