"""kill -9 at random moments of a training, some during checkpoint writes, then resume: the weights at the end
are those of an uninterrupted run (the checkpoint is written atomically, a stale lock is taken over, the log
keeps each step once). CRASH_KILLS sets more kills (the closing note of issue 16 reports a longer run)."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from conftest import tiny_train_config

KILLS = int(os.environ.get("CRASH_KILLS", "20"))
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")


def _train(recipe: Path, *flags) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trilemma", "train", str(recipe), *flags], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _logged_steps(log: Path) -> int:
    try:
        return len(log.read_text().splitlines())
    except OSError:
        return 0


def test_a_training_killed_twenty_times_ends_with_the_weights_of_one_run(tmp_path, tiny_autoencoder_dir):
    options = dict(steps=30 + 3 * KILLS, checkpoint_every=1, keep_checkpoints=2, log_every=1, ema_decay=0.9)
    reference = _train(tiny_train_config(tmp_path / "ref", tiny_autoencoder_dir, **options))
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-2000:]
    recipe = tiny_train_config(tmp_path / "kill", tiny_autoencoder_dir, **options)
    log = tmp_path / "kill" / "run" / "log.jsonl"
    rng, kills = random.Random(0), 0
    while kills < KILLS:
        before = _logged_steps(log)
        proc = _train(recipe, "--resume")
        deadline = time.time() + 120
        while _logged_steps(log) <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # until it trains: a kill during start-up would test nothing
        time.sleep(rng.uniform(0.0, 0.25))  # within a step or a checkpoint write (one every step)
        if proc.poll() is not None:
            break  # finished before the kill
        proc.kill()
        proc.wait()
        kills += 1
    assert kills == KILLS
    final = _train(recipe, "--resume")
    assert final.wait(timeout=600) == 0, final.stderr.read()[-2000:]
    a = load_file(tmp_path / "ref" / "run" / "final" / "model.safetensors")
    b = load_file(tmp_path / "kill" / "run" / "final" / "model.safetensors")
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, options["steps"] + 1))  # each step logged once
    assert not list((tmp_path / "kill" / "run" / "checkpoints").glob(".*tmp*"))
    assert not (tmp_path / "kill" / "run" / ".trilemma.lock").exists()
