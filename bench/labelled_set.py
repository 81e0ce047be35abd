"""The labelled set of generated images: is the scorer measuring what a person sees?

    python bench/labelled_set.py pick shapes-dfgan shapes-dalle shapes-ldm-f8 shapes-ldm --tag a --random 35 \
        --disagreements 20 --old-scorer OLD_SCORER.py --work /tmp/label
    python bench/labelled_set.py build --work /tmp/label --out tests/fixtures/labelled
    python bench/labelled_set.py agreement tests/fixtures/labelled

`pick` draws images from the sample cache that `trilemma evaluate` and
`bench/score_model.py --cache` fill (the 500 `test` and `test-novel` samples of
each model): per model `--random` from each split, plus up to
`--disagreements` images on which the previous scorer (a copy of its file)
and this one disagree, which is where the failure shapes are. It writes the
items and contact sheets (tiles at 4x, id and prompt under each, models not
named) for people to label by looking, by the rules in docs/shapes.md, one
JSON line per tile into WORK/TAG/labels-NAME.jsonl.

`build` takes each image's majority label over its labellers (an odd number
of them) and writes the fixture: the 64 px PNGs and labels.jsonl.
`agreement` scores the fixture and prints how often the scorer agrees with
the labels, and the disagreements by kind.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from trilemma.shapes.export import test_prompts
from trilemma.shapes.scorer import score_image

CACHE = Path("reports/eval-cache")


def sample_folder(model: str, split: str) -> Path:
    """The cached default-option samples of a shipped model (`trilemma evaluate`'s cache)."""
    import trilemma
    from trilemma.eval.evaluate import sample_folder as folder_of

    folder = folder_of(trilemma.load(model), model, split, CACHE)
    if not folder.is_dir():
        raise SystemExit(f"no samples of {model} {split} in {CACHE}: run bench/score_model.py --model {model} --cache {CACHE}")
    return folder


def pick(args) -> None:
    spec = importlib.util.spec_from_file_location("old_scorer", args.old_scorer)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    rng = random.Random(args.seed)
    used = set()
    for tag_dir in args.work.glob("*/items.json"):
        used |= {(it["model"], it["split"], it["index"]) for it in json.loads(tag_dir.read_text())}
    items = []
    for model in args.models:
        folders = {split: sample_folder(model, split) for split in ("test", "test-novel")}
        chosen, disagree = [], []
        for split in ("test", "test-novel"):
            pool = [i for i in range(args.n) if (model, split, i) not in used]
            chosen += [(split, i) for i in rng.sample(pool, args.random)]
        for split in ("test", "test-novel"):
            folder, prompts = folders[split], test_prompts(split, args.n)
            for i in range(args.n):
                if (split, i) in chosen or (model, split, i) in used:
                    continue
                image = Image.open(folder / f"{i:06d}.png").convert("RGB")
                if old.score_image(image, prompts[i]).passed != score_image(image, prompts[i]).passed:
                    disagree.append((split, i))
        chosen += rng.sample(disagree, min(args.disagreements, len(disagree)))
        for split, i in chosen:
            items.append({"model": model, "split": split, "index": i, "prompt": test_prompts(split, args.n)[i],
                          "src": str(folders[split] / f"{i:06d}.png")})
    rng.shuffle(items)  # models mixed, so a labeller cannot tell them apart
    out = args.work / args.tag
    out.mkdir(parents=True, exist_ok=True)
    for k, item in enumerate(items):
        item["id"] = f"{args.tag}{k:03d}"
    (out / "items.json").write_text(json.dumps(items, indent=1) + "\n")
    contact_sheets(items, out)
    reference_sheet(args.work)
    print(f"{len(items)} items, sheets in {out}, reference.png in {args.work}")


def reference_sheet(out: Path, cell: int = 256) -> None:
    """The six colors, and each shape small and large, rendered as the data set draws them, at the tiles' 4x."""
    from trilemma.shapes.scenes import COLORS, Scene, ShapeObject, render

    font = ImageFont.load_default(size=15)
    sheet = Image.new("RGB", (6 * (cell + 16), 2 * (cell + 40)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, color in enumerate(COLORS):
        for row, (size, s) in enumerate((("small", 0.18), ("large", 0.31))):
            places = ((0.03, 0.03), (0.23, 0.3), (0.62, 0.62)) if size == "small" else ((0.03, 0.03), (0.36, 0.5), (0.64, 0.03))
            objects = [ShapeObject(color, shape, size, s, x, y) for shape, (x, y) in zip(("circle", "square", "triangle"), places)]
            x, y = k * (cell + 16) + 8, row * (cell + 40) + 4
            sheet.paste(render(Scene("single", objects), 64).resize((cell, cell), Image.NEAREST), (x, y))
            draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline="black")
            draw.text((x, y + cell + 4), f"{color}: {size} circle, square, triangle", fill="black", font=font)
    sheet.save(out / "reference.png")


def contact_sheets(items: list[dict], out: Path, cols: int = 4, rows: int = 3, cell: int = 256) -> None:
    font = ImageFont.load_default(size=15)
    for s in range(0, len(items), cols * rows):
        sheet = Image.new("RGB", (cols * (cell + 16), rows * (cell + 58)), "white")
        draw = ImageDraw.Draw(sheet)
        for j, item in enumerate(items[s:s + cols * rows]):
            x, y = (j % cols) * (cell + 16) + 8, (j // cols) * (cell + 58) + 4
            sheet.paste(Image.open(item["src"]).convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
            draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline="black")
            lines = [""]
            for word in item["prompt"].split():
                if len(lines[-1]) + len(word) > 30:
                    lines.append("")
                lines[-1] += (" " if lines[-1] else "") + word
            lines[0] = f"{item['id']}: {lines[0]}"
            for li, line in enumerate(lines):
                draw.text((x, y + cell + 3 + 17 * li), line, fill="black", font=font)
        sheet.save(out / f"sheet-{s // (cols * rows):02d}.png")


def read_votes(folder: Path) -> dict[str, list[dict]]:
    votes: dict[str, list[dict]] = {}
    for labels_file in sorted(folder.glob("labels-*.jsonl")):
        for line in labels_file.read_text().splitlines():
            vote = json.loads(line)
            votes.setdefault(vote["id"], []).append(vote)
    return votes


def build(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    # A relabelling round (a rule made precise, every image of a category labelled again) replaces the
    # earlier votes of the images it covers.
    relabelled = {}
    for folder in args.relabel:
        relabelled.update({k: (folder.name, v) for k, v in read_votes(folder).items()})
    more = {}  # further labellers, each over all the images, under the rules as they now stand
    for folder in args.more:
        for k, v in read_votes(folder).items():
            more.setdefault(k, []).extend(v)
    rows = []
    for items_file in sorted(args.work.glob("*/items.json")):
        if items_file.parent in args.relabel:
            continue
        votes = read_votes(items_file.parent)
        for item in json.loads(items_file.read_text()):
            round_name, v = relabelled.get(item["id"], (items_file.parent.name, votes.get(item["id"], [])))
            v = v + more.get(item["id"], [])
            if len(v) % 2 == 0:
                raise SystemExit(f"{item['id']} has {len(v)} labels: give every image an odd number, for a majority")
            passes = sum(x["label"] == "pass" for x in v)
            shutil.copy(item["src"], args.out / f"{item['id']}.png")
            rows.append({"file": f"{item['id']}.png", "prompt": item["prompt"], "model": item["model"],
                         "split": item["split"], "index": item["index"],
                         "label": "pass" if 2 * passes > len(v) else "fail", "votes": f"{passes} pass / {len(v) - passes} fail",
                         "round": round_name,
                         "unsure": sum(bool(x.get("unsure")) for x in v),
                         "why": sorted({x["why"] for x in v if x.get("why")})})
    (args.out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference_sheet(args.out)  # what the labellers compared colors and shapes with
    print(f"{len(rows)} labelled images in {args.out}: {Counter(r['label'] for r in rows)}")


def agreement(fixture: Path) -> tuple[float, dict[str, list[str]], int]:
    """Share of labelled images on which the scorer agrees, and the disagreements by kind."""
    rows = [json.loads(line) for line in (fixture / "labels.jsonl").read_text().splitlines()]
    kinds: dict[str, list[str]] = {"passed what a person fails": [], "failed what a person passes": []}
    for r in rows:
        verdict = score_image(Image.open(fixture / r["file"]).convert("RGB"), r["prompt"])
        if verdict.passed != (r["label"] == "pass"):
            kind = "passed what a person fails" if verdict.passed else "failed what a person passes"
            note = f"{r['file']} ({r['model']}) '{r['prompt']}': scorer {verdict.reason}; people {r['votes']}"
            kinds[kind].append(note + (f" ({'; '.join(r['why'])})" if r["why"] else ""))
    wrong = sum(len(v) for v in kinds.values())
    return 1 - wrong / len(rows), kinds, len(rows)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pick")
    p.add_argument("models", nargs="+")
    p.add_argument("--tag", required=True)
    p.add_argument("--random", type=int, default=35, help="random images per split and model")
    p.add_argument("--disagreements", type=int, default=20, help="images per model where --old-scorer disagrees")
    p.add_argument("--old-scorer", required=True,
                   help="the previous scorer's file (v1: git show 82dcf3d:trilemma/shapes/scorer.py > old_scorer.py)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--work", type=Path, required=True)
    b = sub.add_parser("build")
    b.add_argument("--work", type=Path, required=True)
    b.add_argument("--out", type=Path, default=Path("tests/fixtures/labelled"))
    b.add_argument("--relabel", type=Path, action="append", default=[],
                   help="a folder of a relabelling round, whose votes replace the earlier ones of its images")
    b.add_argument("--more", type=Path, action="append", default=[],
                   help="a folder of further labels (any images), added to each image's votes")
    a = sub.add_parser("agreement")
    a.add_argument("fixture", type=Path, nargs="?", default=Path("tests/fixtures/labelled"))
    args = ap.parse_args()
    if args.command == "pick":
        pick(args)
    elif args.command == "build":
        build(args)
    else:
        share, kinds, n = agreement(args.fixture)
        print(f"scorer agrees with people on {share:.3f} of {n} images")
        for kind, notes in kinds.items():
            print(f"\n{kind}: {len(notes)}")
            print("\n".join("  " + x for x in notes))


if __name__ == "__main__":
    main()
