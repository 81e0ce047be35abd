"""FID on the shipped Shapes feature network behaves as a distance: near zero between two disjoint
sets of real renders, growing monotonically as images are blurred, noised or lose objects.

FID's estimate is biased upward by about c / N for N images (Chong & Forsyth, 2020): measured here,
real against real gives 21.8 at N = 200, 9.3 at 500 and 3.9 at 1000 on 256-d features. So "near
zero" is checked as that bias shrinking toward zero with N, and KID (unbiased) sitting at zero.
"""

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from trilemma.shapes.scenes import render, sample_scene
from trilemma.eval.fidelity import fid_kid, load_feature_network

N = 800


def _scenes(start, n=N):
    return [sample_scene("test", start + i) for i in range(n)]


def _noised(image, sigma, rng):
    arr = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (64, 64, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _dropped(scene, share, rng):
    """With probability `share`, the scene loses one of its objects."""
    if rng.random() >= share:
        return scene
    keep = list(scene.objects)
    keep.pop(rng.integers(len(keep)))
    return dataclasses.replace(scene, objects=keep)


@pytest.fixture(scope="module")
def setup():
    net = load_feature_network()
    reference = [render(s) for s in _scenes(0)]
    other = _scenes(N)
    return net, reference, other


def test_fid_between_disjoint_real_sets_shrinks_toward_zero_and_kid_is_zero(setup):
    net, reference, other = setup
    small = fid_kid(net, reference[:200], [render(s) for s in other[:200]])
    large = fid_kid(net, reference, [render(s) for s in other])
    rng = np.random.default_rng(1)
    damaged = fid_kid(net, reference, [render(_dropped(s, 1.0, rng)) for s in other])
    print(f"\nreal vs real: FID {small['fid']:.2f} at 200, {large['fid']:.2f} at {N}; KID {large['kid']:.3f} +- {large['kid_std']:.3f}"
          f" (an object dropped from every scene: KID {damaged['kid']:.2f})")
    assert large["fid"] < 0.4 * small["fid"]  # a 1/N bias: 4x the images, about a quarter of the FID
    assert abs(large["kid"]) < 3 * large["kid_std"] and abs(large["kid"]) < 0.05 * damaged["kid"]


def test_fid_grows_monotonically_with_damage(setup):
    net, reference, other = setup
    clean = [render(s) for s in other]
    base = fid_kid(net, reference, clean)["fid"]
    rng = np.random.default_rng(0)
    blur = [fid_kid(net, reference, [im.filter(ImageFilter.GaussianBlur(r)) for im in clean])["fid"] for r in (1.2, 2.4, 4.0)]
    noise = [fid_kid(net, reference, [_noised(im, s, rng) for im in clean])["fid"] for s in (25, 60, 100)]
    dropped = [fid_kid(net, reference, [render(_dropped(s, p, rng)) for s in other])["fid"] for p in (0.25, 0.5, 1.0)]
    print(f"\nFID real vs real {base:.3f}; blur {blur}; noise {noise}; dropped objects {dropped}")
    for series in (blur, noise, dropped):
        assert base < series[0] < series[1] < series[2], (base, series)
    assert dropped[-1] > 3 * base  # losing an object in every scene is far from the real distribution
