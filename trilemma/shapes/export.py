"""Writing Shapes (or generated images) as an image folder: PNGs + `metadata.jsonl`.

The layout of HF `datasets`' imagefolder and diffusers' training scripts, so
any tool can read it.
"""

from __future__ import annotations

import json
from pathlib import Path


from trilemma.folders import ensure_writable
from trilemma.shapes.scenes import render, sample_scene
from trilemma.progress import progress as progress_bar


def export_split(split: str, n: int, out: str | Path, resolution: int = 64, seed: int = 0, progress: bool = True) -> Path:
    out = ensure_writable(out)
    with open(out / "metadata.jsonl", "w") as meta:
        for i in progress_bar(range(n), desc=f"export {split}", enabled=progress, leave=False):
            scene = sample_scene(split, i, seed)
            name = f"{split}-{i:06d}.png"
            render(scene, resolution).save(out / name)
            meta.write(json.dumps({"file_name": name, "text": scene.prompt, "category": scene.category,
                                   "novel": scene.novel, "split": split, "index": i, "seed": seed}) + "\n")
    return out


def test_prompts(split: str, n: int, seed: int = 0) -> list[str]:
    """The canonical prompts of the first n scenes of a split: the evaluation's prompt set."""
    return [sample_scene(split, i, seed).prompt for i in range(n)]
