"""What a CLIP has learnt on Shapes: retrieval and hard negatives, on `test` and `test-novel`.

    python bench/clip_eval.py --clip runs/shapes-clip/final --n 500 --out reports/shapes-clip-eval.json
    python bench/clip_eval.py --noise-aware runs/shapes-clip-noised-16/final --n 500 --out reports/shapes-clip-noised-16-eval.json

For the first N scenes of each split (renders at 64 px, canonical prompts):
- text-to-image recall@1: each prompt retrieves its own image among the N images (ties and scenes
  with identical prompts count as misses only if the retrieved image's prompt differs: two scenes
  captioned alike are equally right answers);
- image-to-text recall@1: each image retrieves its own prompt among the N prompts (same rule);
- hard negatives (NegCLIP's test): the share of images that score their own prompt above that
  prompt's hard negative (relation flipped, colors swapped between objects, count or one attribute
  changed; `trilemma.shapes.negatives`), per category. Chance is 0.5.
Recall at N = 500 is a harder test than at a batch of 128; the number of candidates is in the output.
With --noise-aware, the same for a noise-aware CLIP (`trilemma.clip.noise_aware`) reading the renders at its
resolution, noised to timesteps 0, 250, 500, 750 and 900 of its schedule (the noise drawn from a fixed seed).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trilemma.clip import load_clip  # noqa: E402
from trilemma.shapes.dataset import ShapesDataset  # noqa: E402
from trilemma.shapes.negatives import hard_negative  # noqa: E402


@torch.no_grad()
def evaluate_clip(source: str, split: str, n: int, seed: int = 0) -> dict:
    clip = load_clip(source)
    data = ShapesDataset(split, 64, seed, paraphrase=False)
    scenes = [data.scene(i) for i in range(n)]
    prompts = [s.prompt for s in scenes]
    images, texts, negatives = [], [], []
    rng = np.random.default_rng([seed, 3])
    for start in range(0, n, 100):
        idx = range(start, min(n, start + 100))
        images.append(clip.embed_images(torch.stack([data[i]["pixel_values"] for i in idx])))
        texts.append(clip.embed_text([prompts[i] for i in idx]))
        negatives.append(clip.embed_text([hard_negative(scenes[i], rng).prompt for i in idx]))
    images, texts, negatives = torch.cat(images), torch.cat(texts), torch.cat(negatives)
    sim = images @ texts.T  # (image, text)
    same = np.array([[a == b for b in prompts] for a in prompts])  # scenes captioned alike: both right
    t2i = np.array([same[j, int(sim[:, j].argmax())] for j in range(n)])
    i2t = np.array([same[i, int(sim[i].argmax())] for i in range(n)])
    wins = ((images * texts).sum(-1) > (images * negatives).sum(-1)).numpy()
    by_cat = {}
    for s, w, a, b in zip(scenes, wins, t2i, i2t):
        c = by_cat.setdefault(s.category, {"hard_negative": [], "t2i": [], "i2t": []})
        c["hard_negative"].append(w), c["t2i"].append(a), c["i2t"].append(b)
    return {"n": n, "candidates": n,
            "text_to_image_recall@1": float(t2i.mean()), "image_to_text_recall@1": float(i2t.mean()),
            "hard_negative": {**{k: float(np.mean(v["hard_negative"])) for k, v in sorted(by_cat.items())}, "overall": float(wins.mean())},
            "text_to_image_recall@1_by_category": {k: float(np.mean(v["t2i"])) for k, v in sorted(by_cat.items())},
            "image_to_text_recall@1_by_category": {k: float(np.mean(v["i2t"])) for k, v in sorted(by_cat.items())}}


@torch.no_grad()
def evaluate_noise_aware(source: str, split: str, n: int, timesteps=(0, 250, 500, 750, 900), seed: int = 0) -> dict:
    import torch.nn.functional as F

    from trilemma.clip import load_noise_aware_clip
    from trilemma.model import TrainableModel

    model = TrainableModel.from_pretrained(source) if Path(source).is_dir() else load_noise_aware_clip(source, 16)
    data = ShapesDataset(split, 64, seed, paraphrase=False)
    scenes = [data.scene(i) for i in range(n)]
    prompts = [s.prompt for s in scenes]
    rng = np.random.default_rng([seed, 3])
    texts = model.embed_text(prompts)
    negatives = model.embed_text([hard_negative(s, rng).prompt for s in scenes])
    x0 = F.interpolate(torch.stack([data[i]["pixel_values"] for i in range(n)]), size=(model.resolution,) * 2, mode="area")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    same = np.array([[a == b for b in prompts] for a in prompts])
    out = {"n": n, "clip": model.config.clip}
    for t in timesteps:
        x_t = model.noise_scheduler.add_noise(x0, noise, torch.full((n,), t, dtype=torch.long))
        images = torch.cat([model.embed_noisy_images(x_t[i:i + 100], torch.full((len(x_t[i:i + 100]),), t)) for i in range(0, n, 100)])
        sim = images @ texts.T
        wins = ((images * texts).sum(-1) > (images * negatives).sum(-1)).numpy()
        cats = {}
        for s, w in zip(scenes, wins):
            cats.setdefault(s.category, []).append(w)
        out[f"t={t}"] = {"image_to_text_recall@1": float(np.mean([same[i, int(sim[i].argmax())] for i in range(n)])),
                         "hard_negative": {**{k: float(np.mean(v)) for k, v in sorted(cats.items())}, "overall": float(wins.mean())}}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="shapes-clip")
    ap.add_argument("--noise-aware", help="evaluate this noise-aware CLIP (a folder or shipped name) instead")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = {"clip": args.clip, "command": "python bench/clip_eval.py " + " ".join(sys.argv[1:])}
    for split in ("test", "test-novel"):
        if args.noise_aware:
            result[split] = evaluate_noise_aware(args.noise_aware, split, args.n)
            print(split, json.dumps({k: v for k, v in result[split].items() if k.startswith("t=")}))
            continue
        result[split] = evaluate_clip(args.clip, split, args.n)
        r = result[split]
        print(f"{split}: t2i R@1 {r['text_to_image_recall@1']:.3f}, i2t R@1 {r['image_to_text_recall@1']:.3f}, "
              f"hard negatives {json.dumps({k: round(v, 3) for k, v in r['hard_negative'].items()})}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
