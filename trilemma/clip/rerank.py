"""CLIP reranking: draw N candidates per prompt, keep the one CLIP scores highest against its prompt.

DALL-E (Ramesh et al., 2021, "Zero-Shot Text-to-Image Generation") draws 512 samples per caption and
keeps the best by a CLIP's image-text similarity; dalle-mini/Craiyon does the same with fewer. The
generator is untouched: reranking trades N times the sampling cost for images that agree with their
prompt more often, and it works for every family here because it only calls `model.generate`.

The reranker must never be the benchmark's own judge: choosing by the Shapes scorer and then reporting
the Shapes scorer's pass rate would measure the choice, not the model (a rate that only says "one of N
passed"). CLIP, trained on its own, is a separate and imperfect judge; the gap between the pass rate of
its choices and the oracle rate (any of the N passes) is what its imperfection costs.

Seeds: candidate j of image k uses seed ``seed + k + j * CANDIDATE_STRIDE``. Candidate 0 is thus
exactly the image plain generation gives (``model.generate(prompts, seed=seed)``), and the candidates of
N are the first N of those of any larger N (nested): a benchmark can draw the largest N once and read
every smaller N off it exactly as ``trilemma generate --rerank N`` would produce. Candidate j of all
prompts is one batched call, ``model.generate(prompts, seed=seed + j * CANDIDATE_STRIDE)``. Ties in CLIP
score go to the lower candidate index.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from trilemma.clip import DEFAULT_CLIP, CLIPScorer, load_clip
from trilemma.model import check_prompts
from trilemma.options import CANDIDATES, check_seed

CANDIDATE_STRIDE = 10**9  # seed distance between candidates; more prompts than this in one call would overlap
MAX_CANDIDATES = CANDIDATES.high  # 64


class Reranked(NamedTuple):
    """`images[k]` is the chosen image of prompt k; `choices[k]` says which candidate it is: "candidate" (j),
    "candidate_seed" (its seed), "clip_score" (its cosine with the prompt) and "clip_scores" (every candidate's)."""
    images: list[Image.Image]
    choices: list[dict]


def check_candidates(candidates) -> int:
    """`candidates` if it is a whole number in [1, 64], else one ValueError naming the range."""
    return CANDIDATES.check(candidates)


def candidate_seed(seed: int, k: int, j: int) -> int:
    """The seed of candidate j of image k of a call with `seed`."""
    return seed + k + j * CANDIDATE_STRIDE


def as_scorer(clip: CLIPScorer | str | Path | None) -> CLIPScorer:
    """A CLIPScorer as it is, or the one `load_clip` gives for a shipped CLIP's name or a folder (None: the default)."""
    return clip if isinstance(clip, CLIPScorer) else load_clip(DEFAULT_CLIP if clip is None else clip)


def draw_candidate(model, prompts: list[str], seed: int, j: int, **options) -> list[Image.Image]:
    """Candidate j of every prompt: one batched `generate` call."""
    return model.generate(prompts, seed=seed + j * CANDIDATE_STRIDE, **options)


@torch.no_grad()
def clip_scores(scorer: CLIPScorer, images: list[Image.Image], prompts: list[str], batch_size: int = 256) -> list[float]:
    """CLIP cosine of image i with prompt i."""
    out = []
    for start in range(0, len(images), batch_size):
        out += scorer.similarity(images[start:start + batch_size], prompts[start:start + batch_size]).tolist()
    return [float(s) for s in out]


def best_candidate(scores: list[float]) -> int:
    """The index of the highest score; the lowest index among ties."""
    return max(range(len(scores)), key=lambda j: (scores[j], -j))


def generate_reranked(model, prompts: list[str], seed: int = 0, candidates: int = 4,
                      clip: CLIPScorer | str | Path | None = DEFAULT_CLIP, **options) -> Reranked:
    """One image per prompt, the best of `candidates` by CLIP (a CLIPScorer, a shipped CLIP's name or a CLIP
    folder); `options` go to `model.generate` unchanged. Image k's candidates use seeds
    seed + k + j * CANDIDATE_STRIDE, j = 0 .. candidates - 1 (see the module docstring)."""
    prompts = check_prompts(prompts)
    candidates = check_candidates(candidates)
    check_seed(seed)
    if len(prompts) > CANDIDATE_STRIDE:
        raise ValueError(f"at most {CANDIDATE_STRIDE:,} prompts a call when reranking; split them into several calls")
    try:
        check_seed(candidate_seed(seed, len(prompts) - 1, candidates - 1))
    except ValueError:
        raise ValueError(f"seed {seed} is too large for {candidates} candidates (candidate seeds reach seed + "
                         f"{candidates - 1} x {CANDIDATE_STRIDE:,}); use a smaller seed") from None
    scorer = as_scorer(clip)
    scores: list[list[float]] = [[] for _ in prompts]
    best: list[Image.Image | None] = [None] * len(prompts)
    for j in range(candidates):
        images = draw_candidate(model, prompts, seed, j, **options)
        for k, s in enumerate(clip_scores(scorer, images, prompts)):
            scores[k].append(s)
            if best_candidate(scores[k]) == j:
                best[k] = images[k]
    choices = []
    for k, row in enumerate(scores):
        j = best_candidate(row)
        choices.append({"candidate": j, "candidate_seed": candidate_seed(seed, k, j), "clip_score": row[j], "clip_scores": row})
    return Reranked(best, choices)
