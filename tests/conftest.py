"""Shared fixtures: tiny models the tests build and save themselves."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_AUTOENCODER = {"resolution": 64, "block_out_channels": [8, 8, 16], "latent_channels": 4, "layers_per_block": 1,
                    "norm_num_groups": 4, "mid_block_attention": False, "kl_weight": 1e-6}
TINY_LDM = {"resolution": 64, "autoencoder": TINY_AUTOENCODER, "unet_channels": [16, 32], "layers_per_block": 1,
            "attention_head_dim": 8, "text_encoder": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
            "sampling_steps": 3}


@pytest.fixture(scope="session")
def tiny_autoencoder_dir(tmp_path_factory) -> Path:
    from trilemma.diffusion.autoencoder import KLAutoencoder

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
