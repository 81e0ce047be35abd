"""Imagen's thresholding claim on the shipped cascade (slow: run with `pytest -m slow`)."""

import pytest
import torch

import trilemma
from trilemma.data.export import test_prompts as benchmark_prompts  # not collected as a test
from trilemma.data.shapes import parse_prompt
from trilemma.eval.scorer import score_image
from trilemma.model import to_pil
from trilemma.registry import shipped_models


@pytest.mark.slow
# Measured not to hold on Shapes (bench/imagen_ablations.py guidance, reports/imagen-ablations): at guidance 10,
# dynamic thresholding passes 0.12 of 200 test prompts against 0.605 without. Shapes' background sits at the top
# of the range; dividing x0 by s > 1 greys it, the guided model pushes it back harder, and s runs away (up to 8 by
# mid-sampling). strict: should a retrained model make the claim hold, this XPASS fails and the card must change.
@pytest.mark.xfail(strict=True, reason="Imagen's dynamic-thresholding claim measured false on Shapes (card, Limits)")
@pytest.mark.skipif("shapes-imagen" not in shipped_models(), reason="shapes-imagen is not shipped")
def test_dynamic_thresholding_keeps_range_and_scores_better_at_guidance_10():
    torch.set_num_threads(2)
    model = trilemma.load("shapes-imagen")
    prompts = benchmark_prompts("test", 96)
    figures = {}
    for mode in ("none", "dynamic"):
        x = model.sample_tensors(prompts, seed=0, guidance_scale=10.0, thresholding=mode)
        passed = [score_image(im, parse_prompt(p)).passed for im, p in zip(to_pil(x), prompts)]
        figures[mode] = {"outside [-1, 1]": float((x.abs() > 1.0 + 1e-3).float().mean()),
                         "max |x|": float(x.abs().max()), "pass rate": sum(passed) / len(passed)}
    print("\nguidance 10, 96 test prompts:", figures)
    assert figures["dynamic"]["outside [-1, 1]"] < 1e-3
    assert figures["none"]["outside [-1, 1]"] > figures["dynamic"]["outside [-1, 1]"]
    assert figures["dynamic"]["pass rate"] > figures["none"]["pass rate"]
