"""Prompt tokenizers, built with HF `tokenizers`.

Two kinds, one interface:
- a word vocabulary that a data source supplies (Shapes: a few dozen words, so a word-level model is exact
  and tiny; unknown words become [UNK]); Shapes recipes and the shipped models use it;
- a byte-level BPE trained on a data set's own captions (`train_caption_tokenizer`), as GPT-2 and CLIP
  tokenize: any text encodes, an unseen word as pieces of the bytes it is made of, never as [UNK].
  The tokenizer's JSON is saved inside the model's config, so a checkpoint rebuilds it.
"""

from __future__ import annotations

import warnings

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer
from tokenizers.processors import TemplateProcessing

from trilemma.registry import DEFAULT_DATA_SOURCE, data_source

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def default_vocabulary() -> list[str]:
    """The word vocabulary of the default data source (the registry's; Shapes), which a model built without a
    tokenizer of its own takes. `trilemma train --data` builds the generator's tokenizer from its data instead
    (`tokenizer_for_data`); a recipe for other data names its tokenizer in the model config."""
    return data_source(DEFAULT_DATA_SOURCE).vocabulary()


def tokenizer_for_data(vocabulary: list[str] | None, captions: list[str], vocab_size: int = 2000) -> "PromptTokenizer":
    """A data source's tokenizer: word-level over its vocabulary when it has one, else a BPE learnt from its captions."""
    if vocabulary is not None:
        return PromptTokenizer(vocabulary)
    return train_caption_tokenizer(captions, vocab_size)


def train_caption_tokenizer(captions: list[str], vocab_size: int = 2000, max_length: int = 32) -> "PromptTokenizer":
    """A byte-level BPE tokenizer learnt from a data set's captions (lower-cased, NFKC)."""
    tok = Tokenizer(BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    # The special tokens first, so their ids are the fixed PAD/UNK/BOS/EOS ids every model relies on; the
    # byte alphabet next, so that any text, in any script, encodes without [UNK].
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(captions, trainer)
    tok.post_processor = TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS_ID), ("[EOS]", EOS_ID)])
    return PromptTokenizer(max_length=max_length, bpe=tok.to_str())


class PromptTokenizer:
    """Prompts to fixed-length id tensors: [BOS] tokens [EOS] [PAD]..."""

    def __init__(self, vocab: list[str] | None = None, max_length: int = 16, bpe: str | None = None):
        self.max_length, self.bpe = max_length, bpe
        if bpe is not None:
            tok = Tokenizer.from_str(bpe)
            tok.encode_special_tokens = True  # "[EOS]" typed in a caption is text, not the end of it
            vocab_map = tok.get_vocab()
            self.vocab = sorted(vocab_map, key=vocab_map.get)
        else:
            self.vocab = list(vocab or default_vocabulary())
            tok = Tokenizer(WordLevel({w: i for i, w in enumerate(self.vocab)}, unk_token="[UNK]"))
            tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
            tok.post_processor = TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS_ID), ("[EOS]", EOS_ID)])
        if self.vocab[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}")
        self._tok = tok

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True).strip()

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
        if self.bpe is not None:
            return {"bpe": self.bpe, "max_length": self.max_length}
        return {"vocab": self.vocab, "max_length": self.max_length}

    @classmethod
    def from_config(cls, config: dict) -> "PromptTokenizer":
        if "bpe" in config:
            return cls(max_length=config["max_length"], bpe=config["bpe"])
        return cls(config["vocab"], config["max_length"])
