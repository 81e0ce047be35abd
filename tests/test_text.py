"""Prompt tokenizer and the trainable text encoder."""

import pytest
import torch

from trilemma.text.encoder import TextEncoderConfig, TransformerTextEncoder
from trilemma.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, PromptTokenizer


def test_known_words_round_trip_and_unknown_words_map_to_unk():
    tok = PromptTokenizer()
    ids, mask = tok(["a red circle", "a fluffy red dragon"])
    assert ids[0, 0] == BOS_ID and ids[0, 4] == EOS_ID and ids[0, 5] == PAD_ID
    assert mask[0].sum() == 5
    assert ids[1, 2] == UNK_ID and ids[1, 4] == UNK_ID
    assert tok.tokens("A Red  CIRCLE")[1:4] == ["a", "red", "circle"]


def test_long_prompts_are_truncated_with_a_warning():
    tok = PromptTokenizer(max_length=8)
    with pytest.warns(UserWarning, match="truncated"):
        ids, _ = tok(["a red circle and a blue square and a green triangle"])
    assert ids.shape == (1, 8) and ids[0, -1] == EOS_ID


def test_tokenizer_rebuilds_from_its_config():
    tok = PromptTokenizer(max_length=12)
    again = PromptTokenizer.from_config(tok.to_config())
    assert torch.equal(tok(["three blue squares"])[0], again(["three blue squares"])[0])


def test_encoder_gives_token_states_and_a_pooled_vector():
    tok = PromptTokenizer()
    enc = TransformerTextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2))
    states, pooled = enc(*tok(["a red circle", "two blue squares"]))
    assert states.shape == (2, tok.max_length, 32) and pooled.shape == (2, 32)
    assert not torch.allclose(pooled[0], pooled[1])


def _first_object_state(architecture: str, relation: str) -> torch.Tensor:
    tok = PromptTokenizer()
    torch.manual_seed(0)
    enc = TransformerTextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1,
                                                   num_heads=2, architecture=architecture)).eval()
    states, _ = enc(*tok([f"a red circle {relation} a blue square"]))
    return states[0, 2]  # [BOS] a red ...: the state of "red"


def test_t5_encoder_states_see_the_whole_prompt_and_clip_states_do_not():
    # Why the T5 option exists: a causal encoder cannot tell "red" it is the left-hand object.
    assert not torch.allclose(_first_object_state("t5", "to the left of"), _first_object_state("t5", "to the right of"))
    assert torch.equal(_first_object_state("clip", "to the left of"), _first_object_state("clip", "to the right of"))


def test_t5_pooled_vector_ignores_padding():
    tok = PromptTokenizer()
    enc = TransformerTextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1,
                                                   num_heads=2, architecture="t5")).eval()
    ids, mask = tok(["a red circle"])
    states, pooled = enc(ids, mask)
    assert torch.allclose(pooled[0], states[0, mask[0].bool()].mean(0), atol=1e-6)


def test_unknown_encoder_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown text encoder architecture"):
        TransformerTextEncoder(TextEncoderConfig(vocab_size=10, architecture="lstm"))
