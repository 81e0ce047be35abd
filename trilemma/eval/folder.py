"""Scoring an image folder in the imagefolder layout (`metadata.jsonl` with `file_name`, `text`)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from trilemma.shapes.scenes import parse_prompt
from trilemma.shapes.scorer import score_image, summarize
from trilemma.progress import progress as progress_bar


def read_metadata(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"{folder} has no metadata.jsonl (one JSON line per image: file_name, text)")
    rows = []
    try:
        text = meta.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{meta} is not UTF-8 text; save it as UTF-8") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
            raise ValueError(f"{meta}:{n} is not a JSON object with file_name and text") from None
        if not isinstance(row["file_name"], str) or not isinstance(row["text"], str):
            raise ValueError(f"{meta}:{n}: file_name and text must be texts, got {row['file_name']!r} and {row['text']!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{meta} lists no images")
    return rows


def score_folder(folder: str | Path, progress: bool = True) -> tuple[dict, list[dict]]:
    """(summary, per-image records) for an image folder."""
    folder = Path(folder)
    records = []
    for row in progress_bar(read_metadata(folder), desc="scoring", enabled=progress, leave=False):
        parsed = parse_prompt(row["text"])
        path = folder / row["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"metadata.jsonl lists {row['file_name']}, which is not in {folder}")
        try:
            image = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path} is not a readable image ({e})") from None
        if image.size[0] != image.size[1]:
            raise ValueError(f"{path} is {image.size[0]}x{image.size[1]}; the scorer takes square images")
        verdict = score_image(image, parsed)
        records.append({"file_name": row["file_name"], "text": row["text"], "category": parsed.category,
                        "novel": parsed.novel, "passed": verdict.passed, "reason": verdict.reason})
    return summarize(records), records


def format_summary(summary: dict) -> str:
    lines = [f"{'':20s} {'pass rate':>9s} {'n':>6s}"]
    def line(key, v):
        rate = "-" if v["pass_rate"] is None else f"{v['pass_rate']:.3f}"
        return f"{key:20s} {rate:>9s} {v['n']:>6d}"

    lines += [line(k, v) for k, v in summary.items() if k != "by_pairs"]
    for group, cats in summary.get("by_pairs", {}).items():
        lines += [line(f"  {c} ({group})", v) for c, v in cats.items() if v["n"]]
    return "\n".join(lines)
