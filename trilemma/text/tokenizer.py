"""A word-level prompt tokenizer, built with HF `tokenizers`.

The Shapes vocabulary is a few dozen words, so a word-level model is exact and
tiny; any other text still encodes (unknown words become [UNK]).
"""

from __future__ import annotations

import warnings

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing

from trilemma.data.shapes import COLORS, COUNT_WORDS, RELATION_WORDS, SHAPES, SIZE_RANGES

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def shapes_vocabulary() -> list[str]:
    """Every word of the Shapes caption grammar, after the special tokens."""
    words = ["a", "an", "one", "and", *SIZE_RANGES, *COLORS, *SHAPES, *(s + "s" for s in SHAPES)]
    words += [*COUNT_WORDS.values(), *map(str, COUNT_WORDS)]
    words += [w for phrases in RELATION_WORDS.values() for p in phrases for w in p.split()]
    return list(SPECIAL_TOKENS) + list(dict.fromkeys(words))


class PromptTokenizer:
    """Prompts to fixed-length id tensors: [BOS] words [EOS] [PAD]..."""

    def __init__(self, vocab: list[str] | None = None, max_length: int = 16):
        self.vocab = list(vocab or shapes_vocabulary())
        if self.vocab[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}")
        self.max_length = max_length
        tok = Tokenizer(WordLevel({w: i for i, w in enumerate(self.vocab)}, unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
        tok.post_processor = TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS_ID), ("[EOS]", EOS_ID)])
        self._tok = tok

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each (len(prompts), max_length)."""
        ids = torch.full((len(prompts), self.max_length), PAD_ID, dtype=torch.long)
        for row, enc in enumerate(self._tok.encode_batch(list(prompts))):
            seq = enc.ids
            if len(seq) > self.max_length:
                warnings.warn(
                    f"prompt {prompts[row]!r} is {len(seq)} tokens long; truncated to {self.max_length}", stacklevel=2
                )
                seq = seq[: self.max_length - 1] + [EOS_ID]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids, (ids != PAD_ID).long()

    def tokens(self, prompt: str) -> list[str]:
        return self._tok.encode(prompt).tokens

    def to_config(self) -> dict:
        return {"vocab": self.vocab, "max_length": self.max_length}

    @classmethod
    def from_config(cls, config: dict) -> "PromptTokenizer":
        return cls(config["vocab"], config["max_length"])
