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
