"""A trainable transformer text encoder, sized for Shapes.

Two architectures from transformers, chosen per model:

- ``clip``: CLIP's text tower (`CLIPTextModel`), Stable Diffusion's encoder.
  Its attention is causal, so a token's state sees only the words before it:
  in "a red circle to the left of a blue square" the states of "red circle"
  cannot know they are the left-hand object.
- ``t5``: T5's encoder stack (`T5EncoderModel`), Imagen's encoder family.
  Bidirectional attention with relative positions: every token's state sees
  the whole prompt, relation words included.

Both give per-token states for cross-attention and a pooled vector (CLIP: the
[EOS] state; T5, which has none: the mean over real tokens), the two outputs
Stable Diffusion's cross-attention and the GANs' sentence conditioning use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from trilemma.text.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class TextEncoderConfig:
    vocab_size: int
    max_length: int = 16
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    architecture: str = "clip"  # "clip" (causal) or "t5" (bidirectional)


ARCHITECTURES = ("clip", "t5")


class TransformerTextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        if config.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown text encoder architecture {config.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if config.architecture == "t5":
            self.transformer = T5EncoderModel(T5Config(
                vocab_size=config.vocab_size, d_model=config.hidden_size, d_kv=config.hidden_size // config.num_heads,
                d_ff=4 * config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
                relative_attention_num_buckets=16, relative_attention_max_distance=config.max_length,
                dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                is_encoder_decoder=False, use_cache=False,
            ))
            return
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
        if self.config.architecture == "t5":
            states = out.last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            return states, (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return out.last_hidden_state, out.pooler_output

    def to_config(self) -> dict:
        return asdict(self.config)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of token states over real tokens: the sentence vector DF-GAN's fusion reads."""
    weights = mask.to(states.device, states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
