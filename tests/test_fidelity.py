"""Fidelity metrics: precision/recall/density/coverage on constructed sets; the feature network trains."""

import torch

from trilemma.data.sources import parse_data_config
from trilemma.data.training import build_training_set

from trilemma.shapes.features import N_TARGETS, ShapesFeatureNet, scene_targets
from trilemma.shapes.scenes import sample_scene
from trilemma.eval.fidelity import precision_recall_density_coverage


def test_prdc_on_identical_disjoint_and_collapsed_sets():
    torch.manual_seed(0)
    real = torch.randn(300, 8)
    same = precision_recall_density_coverage(real, real.clone(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    # Each real ball holds its centre and the k - 1 neighbours strictly inside its k-th distance: density 1.
    assert abs(same["density"] - 1.0) < 1e-9
    far = precision_recall_density_coverage(real, torch.randn(300, 8) + 50.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # Mode collapse: every fake near one real point. Fidelity stays high, coverage and recall fall.
    collapsed = real[:1] + 0.01 * torch.randn(300, 8)
    c = precision_recall_density_coverage(real, collapsed, k=5)
    assert c["precision"] == 1.0 and c["coverage"] < 0.05 and c["recall"] < 0.05


def test_scene_targets_count_what_the_scene_holds():
    scene = sample_scene("test", 3)
    t = scene_targets(scene)
    assert t.shape == (N_TARGETS,)
    assert t[:18].sum() == len(scene.objects)
    assert t[18:36].sum() == sum(o.size == "large" for o in scene.objects)


def test_feature_network_trains_and_feeds_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(0)
    net = ShapesFeatureNet.from_config({"resolution": 32, "channels": [8, 16], "num_features": 16})
    data = build_training_set(parse_data_config({}, resolution=None), net.training_inputs(), 0, "unused", "cpu").dataset
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("pixel_values", "targets")}
    opt = net.configure_optimizers(3e-3)["model"]
    losses = []
    for _ in range(10):
        out = net(batch, "model")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]
    fid = FrechetInceptionDistance(feature=net.eval())
    x = torch.randint(0, 256, (20, 3, 64, 64), dtype=torch.uint8)  # other sizes are resized to the net's
    fid.update(x, real=True)
    fid.update(x, real=False)
    assert abs(float(fid.compute())) < 1e-3
