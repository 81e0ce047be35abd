"""Shared fixtures: tiny models the tests build and save themselves."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

# At most two threads (a many-core machine runs the tiny models no faster); OMP_NUM_THREADS, when set, decides, so
# that the suite runs at one thread or at two as asked (the golden test also draws at one thread itself).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))

TINY_AUTOENCODER = {"resolution": 64, "block_out_channels": [8, 8, 16], "latent_channels": 4, "layers_per_block": 1,
                    "norm_num_groups": 4, "mid_block_attention": False, "kl_weight": 1e-6}
TINY_LDM = {"resolution": 64, "autoencoder": TINY_AUTOENCODER, "unet_channels": [16, 32], "layers_per_block": 1,
            "attention_head_dim": 8, "text_encoder": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
            "sampling_steps": 3}


@pytest.fixture(scope="session")
def tiny_autoencoder_dir(tmp_path_factory) -> Path:
    from trilemma.autoencoders.kl import KLAutoencoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-ae"
    KLAutoencoder.from_config(TINY_AUTOENCODER).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_ldm_dir(tmp_path_factory) -> Path:
    from trilemma.diffusion.latent_diffusion import LatentDiffusion

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-ldm"
    LatentDiffusion.from_config(TINY_LDM).save_pretrained(path)
    return path


TINY_CLIP = {"resolution": 64, "patch_size": 16, "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
             "text": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}, "projection_dim": 16, "vocab_size": 600}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIP (random weights, a tokenizer learnt from 500 Shapes captions) saved as trilemma saves CLIPs:
    a folder transformers' CLIPModel and CLIPProcessor load."""
    from trilemma.clip.clip import CLIP, learn_tokenizer
    from trilemma.shapes.dataset import ShapesDataset

    torch.manual_seed(0)
    data = ShapesDataset("train")
    tokenizer = learn_tokenizer([data.caption(i, i) for i in range(500)], 600, 32)
    model = CLIP.from_config(TINY_CLIP)
    model.set_tokenizer(tokenizer)
    path = tmp_path_factory.mktemp("models") / "tiny-clip"
    model.save_pretrained(path)
    return path


def tiny_train_config(tmp_path: Path, ae_dir: Path, **overrides) -> Path:
    config = {"model_class": "LatentDiffusion", "model": TINY_LDM, "init": {"autoencoder": str(ae_dir)},
              "data": {"cache_latents": 64}, "output_dir": str(tmp_path / "run"), "steps": 6, "batch_size": 4,
              "learning_rate": 1e-3, "warmup_steps": 2, "ema_decay": 0.9, "checkpoint_every": 3,
              "sample_every": 0, "log_every": 1, "validation_prompts": ["a red circle", "two blue squares"]}
    config.update(overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def run_cli(*args, cwd=None):
    """Run `python -m trilemma ARGS` in a fresh process; (returncode, stdout, stderr)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "trilemma", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def save_tiny_text_model(kind: str, path: Path) -> Path:
    """A tiny randomly initialised transformers text model (t5, clip or bert) and tokenizer, saved as a local folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (BertConfig, BertModel, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast,
                              T5Config, T5EncoderModel)

    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "red", "blue", "circle", "square", "above", "left", "of", "to", "the"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    torch.manual_seed(0)
    if kind == "t5":
        model = T5EncoderModel(T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                        pad_token_id=0, decoder_start_token_id=0))
    elif kind == "clip":
        model = CLIPTextModel(CLIPTextConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, max_position_embeddings=32, pad_token_id=0,
                                             bos_token_id=2, eos_token_id=3))
    else:
        model = BertModel(BertConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=32, pad_token_id=0))
    model.save_pretrained(path, safe_serialization=True)
    return path


def assert_same_image(a, b, what="") -> None:
    """One image (same prompt and seed) drawn in two batches of other shapes: equal up to float rounding. Another
    batch shape sums in another order, which on some CPUs moves a pixel by a grey level (README, determinism);
    another seed's image differs by tens on average. Exact equality would hold on the machine that wrote the test only."""
    import numpy as np

    diff = np.abs(np.asarray(a.convert("RGB"), dtype=int) - np.asarray(b.convert("RGB"), dtype=int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (what, int(diff.max()), float(diff.mean()))
