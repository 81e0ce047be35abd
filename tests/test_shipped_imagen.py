"""Imagen's thresholding claim on the shipped cascade (slow: run with `pytest -m slow`)."""

import pytest
import torch

import trilemma
from trilemma.shapes.export import test_prompts as benchmark_prompts  # not collected as a test
from trilemma.shapes.scenes import parse_prompt
from trilemma.shapes.scorer import score_image
from trilemma.model import to_pil
from trilemma.registry import shipped_models

VARIANTS = {"none": {"thresholding": "none"}, "static": {"thresholding": "static"},
            # Imagen's pseudocode: s uncapped, percentile 0.995, every stage.
            "dynamic, uncapped": {"thresholding": "dynamic", "threshold_percentile": 0.995, "threshold_max_value": float("inf")},
            # DeepFloyd IF's settings, the cascade's defaults: percentile 0.95, s <= 1.5 in the base, SR static.
            "dynamic, capped": {"thresholding": "dynamic"}}


@pytest.mark.slow
# Measured (bench/imagen_ablations.py guidance, reports/imagen-ablations, 200 test prompts at guidance 10): capped
# dynamic thresholding passes as often as static clipping or none (about 0.6), where the uncapped variant collapses
# (below 0.1: s runs away, and dividing by it greys Shapes' light background). So on Shapes the cap is what makes
# dynamic thresholding usable at large guidance; it does not beat static clipping.
@pytest.mark.skipif("shapes-imagen" not in shipped_models(), reason="shapes-imagen is not shipped")
def test_capped_dynamic_thresholding_keeps_range_and_holds_at_guidance_10_where_uncapped_collapses():
    torch.set_num_threads(2)
    model = trilemma.load("shapes-imagen")
    prompts = benchmark_prompts("test", 96)
    figures = {}
    for name, options in VARIANTS.items():
        x = model.sample_tensors(prompts, seed=0, guidance_scale=10.0, **options)
        passed = [score_image(im, parse_prompt(p)).passed for im, p in zip(to_pil(x), prompts)]
        figures[name] = {"outside [-1, 1]": float((x.abs() > 1.0 + 1e-3).float().mean()),
                         "pass rate": sum(passed) / len(passed)}
    print("\nguidance 10, 96 test prompts:", figures)
    capped, uncapped = figures["dynamic, capped"], figures["dynamic, uncapped"]
    assert capped["outside [-1, 1]"] < 1e-3
    assert capped["pass rate"] >= uncapped["pass rate"] + 0.3
    assert abs(capped["pass rate"] - figures["static"]["pass rate"]) <= 0.1
    assert abs(capped["pass rate"] - figures["none"]["pass rate"]) <= 0.1
