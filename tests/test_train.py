"""The one training loop: resume equals an uninterrupted run; two processes train; divergence stops cleanly."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_train_config
from trilemma.train.loop import TrainConfig, TrainingDiverged, train


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_resume_gives_the_same_weights_as_one_run(tmp_path, tiny_autoencoder_dir):
    whole = train(TrainConfig.from_file(tiny_train_config(tmp_path / "a", tiny_autoencoder_dir, steps=6)), progress=False)
    cfg_b = tiny_train_config(tmp_path / "b", tiny_autoencoder_dir, steps=6)
    train(TrainConfig.from_file(cfg_b, steps=3), progress=False)  # stops at step 3 with a checkpoint
    resumed = train(TrainConfig.from_file(cfg_b), resume=True, progress=False)
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    # the first stage stayed frozen; the U-Net moved
    for k, v in _weights(tiny_autoencoder_dir).items():
        assert torch.equal(a["autoencoder." + k], v), k
    untrained = _weights(tmp_path / "b" / "run" / "checkpoints" / "step-000003")
    assert not torch.equal(untrained["unet.conv_in.weight"], a["unet.conv_in.weight"])
    ckpts = sorted((tmp_path / "b" / "run" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000003", "step-000006"]


def test_training_writes_log_grid_and_a_loadable_model(tmp_path, tiny_autoencoder_dir):
    import trilemma

    cfg = tiny_train_config(tmp_path, tiny_autoencoder_dir, steps=2, sample_every=2)
    final = train(TrainConfig.from_file(cfg), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all("loss" in r and "img_per_s" in r for r in log)
    assert (tmp_path / "run" / "samples" / "step-000002.png").is_file()
    assert trilemma.load(final).generate(["a red circle"], steps=2)[0].size == (64, 64)


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_autoencoder_dir, monkeypatch):
    from trilemma.diffusion.latent_diffusion import LatentDiffusion

    original = LatentDiffusion.training_step

    def explode(self, batch, name):
        losses = original(self, batch, name)
        if explode.calls >= 3:
            losses["loss"] = losses["loss"] * float("nan")
        explode.calls += 1
        return losses

    explode.calls = 0
    monkeypatch.setattr(LatentDiffusion, "training_step", explode)
    cfg = tiny_train_config(tmp_path, tiny_autoencoder_dir, steps=6, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match="diverged.*step-000002"):
        train(TrainConfig.from_file(cfg), progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()


def _launch(tmp_path, ae_dir, *flags):
    cfg = tiny_train_config(tmp_path, ae_dir, steps=2, checkpoint_every=2)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trilemma", "train", str(cfg)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    assert (ckpt / "model.safetensors").is_file() and (tmp_path / "run" / "final" / "config.json").is_file()
    return ckpt


def test_accelerate_launch_cpu_trains_and_writes_a_checkpoint(tmp_path, tiny_autoencoder_dir):
    # The command. accelerate's --cpu launcher starts one process (several need mpirun).
    ckpt = _launch(tmp_path, tiny_autoencoder_dir, "--cpu")
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 1


def test_two_processes_train_as_one_group_on_the_cpu(tmp_path, tiny_autoencoder_dir):
    # Through torchrun, the loop's Accelerator(cpu=True) forms a 2-process gloo group.
    ckpt = _launch(tmp_path, tiny_autoencoder_dir, "--multi_gpu")
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2
    rng = load_file(ckpt / "rng.safetensors")["torch"]
    assert rng.shape[0] == 2 and not torch.equal(rng[0], rng[1])  # each process keeps its own random stream


def test_resume_uses_the_recipes_learning_rate(tmp_path, tiny_autoencoder_dir):
    cfg = tiny_train_config(tmp_path, tiny_autoencoder_dir, steps=4, warmup_steps=1)
    train(TrainConfig.from_file(cfg, steps=2), progress=False)
    train(TrainConfig.from_file(cfg, learning_rate=1e-5), resume=True, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [1e-3, 1e-3, 1e-5, 1e-5]


def test_learning_rate_warms_up_then_decays_linearly():
    from trilemma.train.loop import lr_multiplier

    config = TrainConfig(model_class="LatentDiffusion", model={}, steps=100, warmup_steps=10, lr_decay_start=50, lr_final_fraction=0.1)
    assert lr_multiplier(config, 0) == 0.1 and lr_multiplier(config, 9) == 1.0
    assert lr_multiplier(config, 50) == 1.0
    assert abs(lr_multiplier(config, 75) - 0.55) < 1e-9
    assert abs(lr_multiplier(config, 100) - 0.1) < 1e-9


def test_resumed_run_reads_the_latent_cache(tmp_path, tiny_autoencoder_dir):
    cfg = tiny_train_config(tmp_path, tiny_autoencoder_dir, steps=2)
    train(TrainConfig.from_file(cfg), progress=False)
    cache = tmp_path / "run" / "latent_cache"
    assert (cache / "model.safetensors").is_file()
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    train(TrainConfig.from_file(cfg, steps=3), resume=True, progress=False)
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp  # read back, not written again


def test_resume_falls_back_past_a_damaged_checkpoint_cleans_leftovers_and_logs_each_step_once(tmp_path, tiny_autoencoder_dir):
    whole = train(TrainConfig.from_file(tiny_train_config(tmp_path / "a", tiny_autoencoder_dir, steps=6)), progress=False)
    cfg = tiny_train_config(tmp_path / "b", tiny_autoencoder_dir, steps=6, keep_checkpoints=3)
    train(TrainConfig.from_file(cfg, steps=5), progress=False)  # checkpoints at 3 and at its stop, 5
    run = tmp_path / "b" / "run"
    latest = run / "checkpoints" / "step-000005"
    (latest / "model.safetensors").write_bytes(b"damaged")  # a disk fault after it was written
    (run / "checkpoints" / ".step-000006.tmp-abc").mkdir()  # a write a kill interrupted
    resumed = train(TrainConfig.from_file(cfg), resume=True, progress=False)
    a, b = _weights(whole), _weights(resumed)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6  # from step 3, exactly
    assert not list((run / "checkpoints").glob(".*tmp*"))
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) == list(range(1, 7))


def test_a_second_training_into_a_live_runs_folder_is_refused(tmp_path, tiny_autoencoder_dir):
    recipe = tiny_train_config(tmp_path, tiny_autoencoder_dir, steps=100000, checkpoint_every=0)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    first = subprocess.Popen([sys.executable, "-m", "trilemma", "train", str(recipe)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "run" / ".trilemma.lock"
        for _ in range(600):
            if lock.exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert lock.exists()
        for args in (["train", str(recipe)], ["train", str(recipe), "--resume"]):
            second = subprocess.run([sys.executable, "-m", "trilemma", *args], env=env, capture_output=True, text=True,
                                    timeout=300)
            assert second.returncode == 2 and "in use by a running trilemma train" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
