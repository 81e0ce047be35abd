"""The shipped CLIPs: shapes-clip loads in transformers and torchmetrics, and knows Shapes; the noise-aware one
steers shapes-imagen."""

import numpy as np
import pytest
import torch

from trilemma.registry import shipped_clips

pytestmark = pytest.mark.skipif("shapes-clip" not in shipped_clips(), reason="shapes-clip is not shipped")


def test_shapes_clip_loads_in_transformers_and_torchmetrics():
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    from trilemma.clip import _TensorFeatures
    from trilemma.shapes.scenes import render, sample_scene

    folder = shipped_clips()["shapes-clip"]
    model = CLIPModel.from_pretrained(folder, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    scenes = [sample_scene("test", i) for i in range(8)]
    images = [torch.from_numpy(np.array(render(s, 64))).permute(2, 0, 1) for s in scenes]
    metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model), processor))
    matched = float(metric(images, [s.prompt for s in scenes]))
    metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model), processor))
    shuffled = float(metric(images, [s.prompt for s in scenes[1:] + scenes[:1]]))
    assert matched > shuffled + 5  # its own caption scores above another scene's


def test_shapes_clip_prefers_the_caption_to_its_hard_negative():
    from trilemma.clip import load_clip
    from trilemma.shapes.negatives import hard_negative
    from trilemma.shapes.scenes import render, sample_scene

    clip = load_clip("shapes-clip")
    rng = np.random.default_rng(0)
    scenes = [sample_scene("test", i) for i in range(100)]
    images = [render(s, 64) for s in scenes]
    own = clip.similarity(images, [s.prompt for s in scenes])
    other = clip.similarity(images, [hard_negative(s, rng).prompt for s in scenes])
    assert float((own > other).float().mean()) >= 0.8  # measured on 500: see the card


def test_rerank_and_clip_guidance_on_the_shipped_models_from_the_cli(tmp_path):
    import json

    from conftest import run_cli

    code, out, err = run_cli("generate", "a red circle above a blue square", "--model", "shapes-dfgan", "--rerank", "8",
                             "--out", tmp_path / "rerank")
    assert code == 0, err
    row = json.loads((tmp_path / "rerank" / "metadata.jsonl").read_text().splitlines()[0])
    assert row["rerank"] == 8 and 0 <= row["candidate"] < 8 and -1 <= row["clip_score"] <= 1
    # GLIDE's CLIP guidance: the cascade with the shipped noise-aware CLIP, the latent model with shapes-clip.
    for model in ("shapes-imagen", "shapes-ldm-f8"):
        code, out, err = run_cli("generate", "two green squares", "--model", model, "--steps", "3", "--clip-guidance", "100",
                                 "--out", tmp_path / model)
        assert code == 0, err
        assert (tmp_path / model / "000000.png").is_file()
