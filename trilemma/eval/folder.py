"""Scoring an image folder in the imagefolder layout (`metadata.jsonl` with `file_name`, `text`)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from trilemma.data.shapes import parse_prompt
from trilemma.eval.scorer import score_image, summarize


def read_metadata(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"{folder} has no metadata.jsonl (one JSON line per image: file_name, text)")
    rows = []
    for n, line in enumerate(meta.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{meta}:{n} is not a JSON object with file_name and text") from None
        rows.append(row)
    if not rows:
        raise ValueError(f"{meta} lists no images")
    return rows


def score_folder(folder: str | Path, progress: bool = True) -> tuple[dict, list[dict]]:
    """(summary, per-image records) for an image folder."""
    folder = Path(folder)
    records = []
    for row in tqdm(read_metadata(folder), desc="scoring", disable=not progress, leave=False):
        parsed = parse_prompt(row["text"])
        path = folder / row["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"metadata.jsonl lists {row['file_name']}, which is not in {folder}")
        verdict = score_image(Image.open(path), parsed)
        records.append({"file_name": row["file_name"], "text": row["text"], "category": parsed.category,
                        "novel": parsed.novel, "passed": verdict.passed, "reason": verdict.reason})
    return summarize(records), records


def format_summary(summary: dict) -> str:
    lines = [f"{'':10s} {'pass rate':>9s} {'n':>6s}"]
    for key, v in summary.items():
        rate = "-" if v["pass_rate"] is None else f"{v['pass_rate']:.3f}"
        lines.append(f"{key:10s} {rate:>9s} {v['n']:>6d}")
    return "\n".join(lines)
