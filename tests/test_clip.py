"""CLIP trained here: a trilemma checkpoint that is also a transformers CLIP folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CLIP


def test_tiny_clip_loads_in_transformers_and_torchmetrics(tiny_clip_dir):
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    from trilemma.clip import _TensorFeatures, load_clip
    from trilemma.model import TrainableModel

    hf = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir, local_files_only=True)
    ours = TrainableModel.from_pretrained(tiny_clip_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    prompts = ["a red circle to the left of a blue square", "three green triangles"]
    inputs = processor(text=prompts, images=[image, image], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf(**inputs)
        # The same weights give the same embeddings through transformers, trilemma's model and trilemma's scorer.
        scorer = load_clip(tiny_clip_dir)
        ours_text = ours.embed_text(prompts)
        ours_image = ours.embed_images(scorer.pixel_values([image]))
    torch.testing.assert_close(torch.nn.functional.normalize(out.text_embeds, dim=-1), ours_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.nn.functional.normalize(out.image_embeds[:1], dim=-1), ours_image, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(scorer.embed_text(prompts), ours_text, atol=1e-5, rtol=1e-4)
    metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(hf), processor))
    metric.update([torch.from_numpy(np.array(image)).permute(2, 0, 1)], [prompts[0]])
    expected = 100 * max(float((scorer.embed_images([image]) * scorer.embed_text(prompts[:1])).sum()), 0.0)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-3)


def test_learnt_tokenizer_encodes_any_text(tiny_clip_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    ids = tok("a red circle")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 5  # whole words: one token each
    weird = tok("Ünïcödé 🙂 zebra")["input_ids"]
    assert tok.unk_token_id not in weird[1:-1]  # unseen text falls back to bytes, never to <unk>


def test_clip_trains_and_resumes(tmp_path):
    from trilemma.train.loop import TrainConfig, train
    from trilemma.model import TrainableModel

    cfg = {"model_class": "CLIP", "model": TINY_CLIP, "data": {"resolution": 64}, "output_dir": str(tmp_path / "run"),
           "steps": 4, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 1, "ema_decay": 0, "checkpoint_every": 2,
           "sample_every": 0, "log_every": 1}
    final = train(TrainConfig.from_dict(cfg), progress=False)
    model = TrainableModel.from_pretrained(final)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"beats_hard_negative"' in log  # Shapes data: every image had a hard negative
    assert model.embed_text(["a red circle"]).shape == (1, 16)
    again = train(TrainConfig.from_dict({**cfg, "steps": 5}), resume=True, progress=False)
    assert (again / "config.json").is_file()


def test_clip_refuses_bad_folders(tmp_path, tiny_clip_dir):
    from trilemma.clip import CLIPLoadError, load_clip

    with pytest.raises(CLIPLoadError, match="no CLIP at"):
        load_clip(tmp_path / "nothing")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CLIPLoadError, match="pickled weights"):
        load_clip(tmp_path / "pickled")
