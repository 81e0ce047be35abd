"""Does a sentence vector tell a prompt from the prompt that contradicts it?

    python bench/sentence_encoders.py --matching runs/shapes-matching/final \
        --encoders trilemma/weights/shapes-ldm-f8 trilemma/weights/shapes-ldm --n 500 --out reports/sentence-encoders.json

For the canonical prompts of the first N `test` scenes, each encoder's sentence vector (the masked
mean of its token states, what DF-GAN reads), whitened with statistics of 5,000 training captions
as the GAN whitens it. Per category, the median over prompts of

    distance(prompt, its hard negative) / distance(prompt, a paraphrase of it)

where the paraphrase is another training-style wording of the same scene ("B right of A" for "A
left of B"). Below 1, the encoder moves less for a contradiction than for a rewording: a generator
conditioned on it cannot see the difference. The matching model's own image-text score also gets
the share of test images that score their prompt above its hard negative.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from trilemma.shapes.dataset import ShapesDataset
from trilemma.model import TrainableModel
from trilemma.text.encoder import masked_mean
from trilemma.shapes.negatives import hard_negative
from trilemma.eval.hard_negatives import hard_negative_accuracy
from trilemma.text.matching import SentenceMatching


def sentence_function(model):
    """The unwhitened masked-mean sentence vector of a model's text encoder."""
    if isinstance(model, SentenceMatching):
        return model.sentence
    encoder = model.text_encoder if hasattr(model, "text_encoder") else model.text_encoders[0]
    tokenize = model.tokenize if hasattr(model, "tokenize") else model.tokenizer

    def sentence(prompts):
        ids, mask = tokenize(prompts)
        return masked_mean(encoder(ids, mask)[0], mask)
    return sentence


@torch.no_grad()
def contradiction_ratios(sentence, n: int) -> dict:
    train = ShapesDataset("train", 64, 0)
    captions = [train.scene(i).caption(np.random.default_rng(i)) for i in range(5000)]
    s = torch.cat([sentence(captions[i:i + 1000]) for i in range(0, 5000, 1000)]).double()
    mean = s.mean(0)
    eigenvalues, vectors = torch.linalg.eigh(torch.cov((s - mean).T))
    whitening = (vectors * (eigenvalues.clamp(min=0) + 1e-3).rsqrt()) @ vectors.T
    embed = lambda p: (sentence(p).double() - mean) @ whitening  # noqa: E731
    test = ShapesDataset("test", 64, 0)
    rng = np.random.default_rng(0)
    rows = {}
    for i in range(n):
        scene = test.scene(i)
        # A rewording that says the same thing, and a wording that contradicts it.
        for _ in range(20):
            paraphrase = scene.caption(rng)
            if paraphrase != scene.prompt:
                break
        if paraphrase == scene.prompt:
            continue  # single objects and counts have few wordings
        e = embed([scene.prompt, paraphrase, hard_negative(scene, rng).prompt])
        rows.setdefault(scene.category, []).append(float((e[0] - e[2]).norm() / (e[0] - e[1]).norm()))
    out = {k: {"median": float(np.median(v)), "n": len(v)} for k, v in sorted(rows.items())}
    out["overall"] = {"median": float(np.median([r for v in rows.values() for r in v])), "n": sum(map(len, rows.values()))}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--matching", required=True)
    ap.add_argument("--encoders", nargs="*", default=[], help="models whose text encoder to compare")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)  # beside a training run, if one is going
    report = {"command": "python " + " ".join(sys.argv), "n": args.n, "encoders": {}}
    matching = TrainableModel.from_pretrained(args.matching)
    report["matching_hard_negative_accuracy"] = hard_negative_accuracy(matching, "test", args.n)
    print("image scores its prompt above the hard negative:", report["matching_hard_negative_accuracy"])
    for path in [args.matching, *args.encoders]:
        model = matching if path == args.matching else TrainableModel.from_pretrained(path)
        report["encoders"][path] = contradiction_ratios(sentence_function(model), args.n)
        print(path, json.dumps(report["encoders"][path]))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
