"""The `trilemma` command: a thin layer over the Python API.

    trilemma generate "two red circles above a blue square" -n 4 --seed 0 --out out/
    trilemma score out/ --json
    trilemma data preview --out preview.png
    trilemma data export --split test --n 1000 --out data/test
    trilemma train configs/shapes-ldm.json [--resume]
    trilemma models [--default]
    trilemma serve [--models ...] [--host 127.0.0.1] [--port 7860]

Bad input gets one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trilemma.diffusion.options import RESAMPLE, SAMPLER
from trilemma.gan.options import TRUNCATION
from trilemma.options import BATCH_SIZE, CANDIDATES, GUIDANCE_SCALE, NEGATIVE_PROMPT, SEED, STEPS


def _positive(kind, most: int | None = None):
    def parse(text):
        value = kind(text)
        if value < 1 or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"must be at least 1{f' and at most {most}' if most else ''}, got {text}")
        return value
    return parse


def _checked(option):
    """An argument type from an option's declaration (trilemma.options.Option): its type and range, checked by it."""
    def parse(text):
        try:
            value = text if option.type is str else int(text) if option.type is int else float(text)
            return option.check(value)
        except ValueError as e:
            message = str(e) if str(e).startswith(option.name) else f"must be a number, got {text!r}"
            raise argparse.ArgumentTypeError(message.removeprefix(option.name + " ")) from None
    return parse


def _add_option(parser, option, default=None, help: str | None = None, **extra) -> None:
    """A flag built from an option's declaration: its name, type, range and choices, and its help with the range."""
    bounds = "" if option.choices or option.low is None else f", in {option.bounds()}"
    text = f"{option.help if help is None else help}{bounds}"
    if option.choices:
        parser.add_argument(option.flag, choices=option.choices, default=default, help=text, **extra)
    else:
        parser.add_argument(option.flag, type=_checked(option), default=default, help=text,
                            metavar=option.metavar or option.name.upper(), **extra)


# Options that `generate` sets itself rather than handing to the model as they are: --seed is the first image's (image
# k gets seed + k), --batch-size the command's own chunking.
CLI_OWN = ("seed", "batch_size")


def model_options() -> dict[str, tuple]:
    """Each generation option of the registered models, by name: (its declaration, the classes that take it), from
    the light declaration modules (trilemma.registry.generate_options), so `--help` imports no model."""
    from trilemma.registry import GENERATE_OPTIONS, generate_options

    found = {}
    for class_name in GENERATE_OPTIONS:
        for option in generate_options(class_name):
            found.setdefault(option.name, (option, []))[1].append(class_name)
    return {name: (option, tuple(classes)) for name, (option, classes) in found.items()}


MAX_IMAGES_PER_PROMPT, MAX_IMAGES_PER_RUN, MAX_PROMPTS_FILE_MB = 10_000, 1_000_000, 50


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage block: the rule for every bad input (`--help` shows usage).
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trilemma", description="Text-to-image models, trained, run and compared side by side.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="[Shapes benchmark] the Shapes data set: preview, export, prompts").add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    prev = data.add_parser("preview", help="write a captioned grid of Shapes scenes")
    prev.add_argument("--split", default="train")
    prev.add_argument("--n", type=_positive(int, 1000), default=24, help="scenes (at most 1000)")
    prev.add_argument("--resolution", type=_positive(int, 1024), default=64, help="pixels (at most 1024)")
    prev.add_argument("--seed", type=_checked(SEED), default=0)
    prev.add_argument("--out", default="shapes-preview.png")
    exp = data.add_parser("export", help="write an image folder with metadata.jsonl")
    exp.add_argument("--split", default="test")
    exp.add_argument("--n", type=_positive(int, 1_000_000), default=1000, help="images (at most 1,000,000)")
    exp.add_argument("--resolution", type=_positive(int, 1024), default=64, help="pixels (at most 1024)")
    exp.add_argument("--seed", type=_checked(SEED), default=0)
    exp.add_argument("--out", required=True)
    pr = data.add_parser("prompts", help="write the canonical prompts of a split, one a line")
    pr.add_argument("--split", default="test")
    pr.add_argument("--n", type=_positive(int, 1_000_000), default=500, help="prompts (at most 1,000,000)")
    pr.add_argument("--seed", type=_checked(SEED), default=0)
    pr.add_argument("--out", default="-")

    tr = sub.add_parser("train", help="train a model: from your images in one command (--data, --family), or from a recipe",
                        description="trilemma train --data DIR_OR_SHARDS --family diffusion|autoregressive|gan "
                                    "[--resolution 64] [--minutes 30] [--out DIR]; or trilemma train RECIPE.json")
    tr.add_argument("config", nargs="?", help="a recipe: one model's (model_class) or a whole family's (family)")
    tr.add_argument("--data", help="a folder of captioned images (metadata.jsonl, or x.txt beside x.png), "
                                   "webdataset shards (\"shards/{00000..00009}.tar\"), Parquet files or a folder "
                                   "from datasets' save_to_disk (an 'image' and a 'text' column), or 'shapes'")
    tr.add_argument("--family", choices=["diffusion", "autoregressive", "gan"])
    tr.add_argument("--resolution", type=_positive(int, 1024), help="with --data: image size (default 64, at most 1024)")
    tr.add_argument("--minutes", type=float, help="with --data: training time, both stages (default 30)")
    tr.add_argument("--out", help="with --data: the model folder to write (default runs/FAMILY)")
    tr.add_argument("--backbone", choices=["unet", "mmdit"],
                    help="with --data --family diffusion: the denoiser, Stable Diffusion's U-Net (default) or SD3's "
                         "joint-attention transformer trained by rectified flow")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output folder")
    tr.add_argument("--steps", type=_positive(int))
    tr.add_argument("--output-dir")
    tr.add_argument("--max-minutes", type=float)
    tr.add_argument("--text-encoder", metavar="PATH",
                    help="a frozen pretrained text encoder: a local T5, CLIP or BERT folder, 'all-minilm-l6-v2', or a shipped CLIP's name (shapes-clip: its text tower)")

    gen = sub.add_parser("generate", help="generate images from prompts")
    gen.add_argument("prompt", nargs="*")
    gen.add_argument("--prompts", help="a file of prompts, one a line (UTF-8, at most 50 MB; at most 1,000,000 images a run)")
    gen.add_argument("--model", default=None, help="a shipped model name or a checkpoint folder (default: the default model)")
    gen.add_argument("-n", "--num-images", type=_positive(int, MAX_IMAGES_PER_PROMPT), default=1,
                     help=f"images per prompt (at most {MAX_IMAGES_PER_PROMPT})")
    gen.add_argument("--seed", type=_checked(SEED), default=0)
    # One flag per declared option of the registered models (trilemma.options), default None: the model's own.
    for name, (option, classes) in model_options().items():
        if name not in CLI_OWN:
            _add_option(gen, option, help=f"{option.help} ({', '.join(classes)})")
    gen.add_argument("--init-image", metavar="IMAGE", help="diffusion models: image-to-image (SDEdit) from this PNG or JPEG "
                                                           "(--strength: how far into the noise it goes)")
    gen.add_argument("--batch-size", type=_checked(BATCH_SIZE), default=50, help="images per forward pass (at most 1024)")
    gen.add_argument("--rerank", type=_checked(CANDIDATES), metavar="N",
                     help="CLIP reranking (DALL-E's): draw N candidates per image (at most 64) and keep the one CLIP "
                          "scores highest against its prompt; N times the sampling cost")
    gen.add_argument("--clip", metavar="NAME_OR_DIR", help="with --rerank: the CLIP that chooses, a shipped CLIP's name or "
                                                           "a transformers CLIP folder (default shapes-clip)")
    gen.add_argument("--out", default="out")
    gen.add_argument("--resume", action="store_true",
                     help="carry on an interrupted run into the same --out (same prompts, -n and --seed)")

    it = sub.add_parser("interpolate", help="a strip of images from one prompt (and z) to another (GANs), or from one "
                                            "image to another (unCLIP: --images A.png B.png)")
    it.add_argument("prompt_a", nargs="?")
    it.add_argument("prompt_b", nargs="?")
    it.add_argument("--images", nargs=2, metavar=("A", "B"),
                    help="unCLIP: interpolate between two images' CLIP image embeddings (slerp), decoded with one seed")
    it.add_argument("--model", required=True)
    it.add_argument("--steps", type=_positive(int, 256), default=8, help="images in the strip (at most 256)")
    it.add_argument("--seed", type=_checked(SEED), default=0, help="z of the first end; the second end's z is seed + 1")
    it.add_argument("--mode", choices=["both", "text", "z"], default="both",
                    help="move the sentence embedding, z (spherically), or both")
    it.add_argument("--truncation", type=_checked(TRUNCATION))
    it.add_argument("--out", default="out")

    ed = sub.add_parser("edit", help="inpainting: redraw the masked region of an image to match a prompt (diffusion models)")
    ed.add_argument("image", help="the image to edit (PNG or JPEG; resized to the model's side)")
    # Required, not nargs="?": an optional positional is filled (with nothing) before --box on Python 3.11, and the
    # prompt written after the options would then be refused as an unknown argument.
    ed.add_argument("prompt", help="what the whole edited image shows")
    where = ed.add_mutually_exclusive_group()
    where.add_argument("--mask", metavar="MASK", help="a mask image: white where the model draws, black where the image stays")
    where.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                       help="the region to redraw, in pixels of IMAGE (X1 and Y1 excluded)")
    ed.add_argument("--model", default=None, help="a diffusion model: shipped name or folder (default: the shipped "
                                                  "inpainting model, or the default model)")
    ed.add_argument("--method", choices=["model", "repaint"],
                    help="model: an inpainting model reads the mask (its default); repaint: any diffusion model, training-free")
    _add_option(ed, RESAMPLE, default=1, help="repaint: RePaint's resamplings per step (above 1 needs --sampler ddpm or ddim)")
    ed.add_argument("-n", "--num-images", type=_positive(int, 1000), default=1, help="images (at most 1000)")
    ed.add_argument("--seed", type=_checked(SEED), default=0)
    for option in (STEPS, GUIDANCE_SCALE, SAMPLER):  # the same declarations as generate's
        _add_option(ed, option)
    _add_option(ed, NEGATIVE_PROMPT, default="")
    ed.add_argument("--keep-unmasked", action="store_true",
                    help="paste the input's pixels back outside the mask (otherwise they pass through the autoencoder)")
    ed.add_argument("--batch-size", type=_checked(BATCH_SIZE), default=50)
    ed.add_argument("--out", default="out")

    ex = sub.add_parser("export", help="write a model in another library's layout (diffusers)")
    ex.add_argument("model", help="a shipped model name or a checkpoint folder")
    ex.add_argument("out", help="the folder to write")
    ex.add_argument("--format", choices=["diffusers"], default="diffusers")

    va = sub.add_parser("vary", help="unCLIP: variations of images (their CLIP image embedding, decoded with other seeds)")
    va.add_argument("images", nargs="+", metavar="IMAGE")
    va.add_argument("--model", default="shapes-unclip", help="an unCLIP model: shipped name or folder (default shapes-unclip)")
    va.add_argument("-n", "--num-images", type=_checked(CANDIDATES), default=4, help="variations per image (at most 64)")
    va.add_argument("--seed", type=_checked(SEED), default=0, help="variation k of image i uses seed + i x n + k")
    va.add_argument("--caption", help="also give the decoder this caption (default: the image embedding alone)")
    _add_option(va, STEPS, help="the decoder's sampling steps")
    _add_option(va, GUIDANCE_SCALE, help="the decoder's classifier-free guidance")
    va.add_argument("--batch-size", type=_checked(BATCH_SIZE), default=50, help="images per forward pass (at most 1024)")
    va.add_argument("--out", default="out")

    ev = sub.add_parser("evaluate", help="[Shapes benchmark, or your held-out images with --data] alignment, FID/KID, "
                                         "precision/recall/density/coverage and cost of one model")
    ev.add_argument("--model", required=True)
    ev.add_argument("--split", default="test", choices=["train", "test", "test-novel"])
    ev.add_argument("--n", type=_positive(int, 100_000), help="prompts (default 500; at most 100,000); with --data: held-out images (default all)")
    ev.add_argument("--out", help="folder for report.json and report.md (default reports/eval/MODEL)")
    ev.add_argument("--cache", default="reports/eval-cache", help="generated images are kept here and reused")
    ev.add_argument("--inception-weights", metavar="PATH", help="FID on Inception-v3 features from this weights file")
    ev.add_argument("--data", metavar="DIR", help="a held-out image folder: one image per caption, FID/KID against "
                                                  "its images (instead of the Shapes splits)")
    ev.add_argument("--train-data", metavar="DIR", help="with --data: the training folder, measured as a reference")
    ev.add_argument("--clip", metavar="NAME_OR_DIR", help="the CLIP of the CLIP score (and of --features clip): a shipped CLIP "
                                                          "or a local transformers CLIP folder (default: shapes-clip when "
                                                          "shipped; with --data, no CLIP score unless given)")
    ev.add_argument("--features", choices=["shapes", "clip"], default="shapes",
                    help="FID/KID/P/R/D/C on the Shapes feature network (default) or the CLIP's image embeddings (FD_CLIP)")
    ev.add_argument("--seed", type=_checked(SEED), default=0)

    cm = sub.add_parser("compare", help="[Shapes benchmark] evaluate several models and write one table, plots and a "
                                        "side-by-side grid")
    cm.add_argument("models", nargs="+")
    cm.add_argument("--split", default="test", choices=["train", "test", "test-novel"])
    cm.add_argument("--n", type=_positive(int, 100_000), default=500, help="prompts (at most 100,000)")
    cm.add_argument("--out", default="reports/compare")
    cm.add_argument("--cache", default="reports/eval-cache")
    cm.add_argument("--fresh", action="store_true", help="evaluate again even where a report for the same split and n exists")
    cm.add_argument("--clip", metavar="NAME_OR_DIR", help="the CLIP of the CLIP score column: a shipped CLIP or a local "
                                                          "transformers CLIP folder (default: shapes-clip when shipped)")

    sc = sub.add_parser("score", help="[Shapes benchmark] score an image folder (metadata.jsonl) with the Shapes scorer")
    sc.add_argument("folder")
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.add_argument("--out", help="where to write the JSON (default: FOLDER/scores.json)")

    se = sub.add_parser("serve", help="a web page and an HTTP API: generate, edit, compare models side by side")
    se.add_argument("--models", nargs="+", metavar="NAME_OR_DIR",
                    help="shipped model names or model folders (default: every shipped model; 'all' stands for them, so "
                         "'--models all runs/mine' serves yours beside them); requests can use these only")
    se.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    se.add_argument("--port", type=_positive(int, 65535), default=7860)
    se.add_argument("--api-key", default=os.environ.get("TRILEMMA_API_KEY"),
                    help="require this key (header X-API-Key) on the API (default: $TRILEMMA_API_KEY, else none)")
    se.add_argument("--outdir", default="outputs/serve", help="where the images are written (PNG with their parameters)")
    se.add_argument("--queue-size", type=_positive(int, 10_000), default=32, help="jobs that may wait; more get HTTP 429")
    se.add_argument("--max-batch", type=_positive(int, 1024), default=32,
                    help="images per forward pass when waiting requests are batched (1: one request at a time)")
    se.add_argument("--max-images", type=_positive(int, 1000), default=8, help="images per request (at most)")
    se.add_argument("--max-steps", type=_positive(int, 1000), default=200, help="sampling steps per request (at most)")

    mo = sub.add_parser("models", help="list the shipped models")
    mo.add_argument("--default", action="store_true", help="print the default model's name")
    return p


def cmd_data(args) -> None:
    from trilemma.folders import ensure_writable
    from trilemma.shapes.export import export_split, test_prompts

    if args.data_command == "preview":
        from trilemma.shapes.scenes import render, sample_scene
        from trilemma.grid import image_grid

        scenes = [sample_scene(args.split, i, args.seed) for i in range(args.n)]
        out = Path(args.out)
        ensure_writable(out.parent if str(out.parent) else Path("."))
        image_grid([render(s, args.resolution) for s in scenes], [s.prompt for s in scenes], cols=6).save(out)
        print(out)
    elif args.data_command == "export":
        print(export_split(args.split, args.n, args.out, args.resolution, args.seed))
    else:
        text = "\n".join(test_prompts(args.split, args.n, args.seed)) + "\n"
        if args.out == "-":
            sys.stdout.write(text)
        else:
            Path(args.out).write_text(text)


def data_spec(text: str) -> dict:
    """--data as a recipe's data object: 'shapes', shards (a .tar pattern), a table (a .parquet file, a folder of
    them, or a folder written by datasets' save_to_disk), or a folder of images."""
    path = Path(text)
    if text == "shapes":
        return {"type": "shapes"}
    if ".tar" in text and not path.is_dir():
        return {"type": "webdataset", "urls": text}
    if path.suffix == ".parquet" and path.is_file():
        return {"type": "parquet", "path": text}
    if not path.is_dir():
        raise ValueError(f"--data {text}: no such folder; pass a folder of captioned images, shards "
                         "(\"shards/{00000..00009}.tar\"), a .parquet file or 'shapes'")
    tables = any((path / name).is_file() for name in ("state.json", "dataset_dict.json")) or \
        (not (path / "metadata.jsonl").is_file() and any(path.rglob("*.parquet")))
    return {"type": "parquet", "path": text} if tables else {"type": "imagefolder", "path": text}


def _family_recipe(path: str | None) -> dict | None:
    """The recipe at `path` if it names a `family` (both stages); None for a one-model recipe or a bad file,
    which TrainConfig.from_file then explains."""
    try:
        raw = json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) and "family" in raw else None


def cmd_train(args) -> None:
    from trilemma.train.loop import TrainConfig, train
    from trilemma.train.pipeline import load_recipe, run_pipeline

    pipeline_flags = {k: getattr(args, k) for k in ("data", "family", "resolution", "minutes", "out", "backbone")
                      if getattr(args, k) is not None}
    one_model_flags = [k for k in ("steps", "max_minutes", "text_encoder") if getattr(args, k) is not None]
    family_recipe = _family_recipe(args.config)
    if args.config is None or family_recipe is not None:
        if one_model_flags:
            raise ValueError(f"--{one_model_flags[0].replace('_', '-')} is for a one-model recipe; with --data or a family "
                             "recipe use --minutes, or set the stage's keys in a recipe (docs/your-own-images.md)")
    if args.config is None:
        if args.output_dir:
            raise ValueError("with --data, name the model folder with --out")
        if "data" not in pipeline_flags or "family" not in pipeline_flags:
            raise ValueError("give a recipe (trilemma train RECIPE.json) or your data and a family "
                             "(trilemma train --data DIR --family diffusion)")
        data = data_spec(args.data)
        if args.resolution:
            data["resolution"] = args.resolution
        raw = {"family": args.family, "data": data, "output_dir": args.out or f"runs/{args.family}"}
        if args.minutes is not None:
            raw["minutes"] = args.minutes
        if args.backbone is not None:
            raw["backbone"] = args.backbone
        print(run_pipeline(load_recipe(raw, "--data/--family"), resume=args.resume))
        return
    if pipeline_flags:
        raise ValueError(f"--{next(iter(pipeline_flags))} goes with --data, not with a recipe file; "
                         "set it in the recipe instead")
    if family_recipe is not None:
        family_recipe.pop("_comment", None)
        if args.output_dir:
            family_recipe["output_dir"] = args.output_dir
        print(run_pipeline(load_recipe(family_recipe, args.config), resume=args.resume))
        return
    config = TrainConfig.from_file(args.config, steps=args.steps, output_dir=args.output_dir, max_minutes=args.max_minutes)
    if args.text_encoder:
        # A frozen pretrained encoder in place of the recipe's trained one (Imagen's comparison).
        from trilemma.registry import model_class

        if "text_encoder" not in model_class(config.model_class).config_class.__dataclass_fields__:
            raise ValueError(f"--text-encoder: a {config.model_class} has no text encoder to replace")
        config.model["text_encoder"] = {"pretrained": args.text_encoder}
    print(train(config, resume=args.resume))


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"no prompts file at {path}")
        if path.stat().st_size > MAX_PROMPTS_FILE_MB * 2**20:
            raise ValueError(f"{path} is over {MAX_PROMPTS_FILE_MB} MB; split it into smaller prompt files")
        try:
            prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    if not prompts:
        raise ValueError("no prompt given: pass a prompt, for example trilemma generate \"a red circle\", or --prompts FILE")
    for p in prompts:
        if not p.strip():
            raise ValueError("a prompt is empty; give some text, for example 'a red circle'")
    return prompts


def cmd_generate(args) -> None:
    import inspect

    import trilemma
    from PIL import Image

    from trilemma.folders import FolderLock, ensure_writable
    from trilemma.grid import image_grid
    from trilemma.model import require_generator
    from trilemma.progress import progress

    prompts = read_prompts(args)
    scorer = None
    if args.clip is not None and args.rerank is None:
        raise ValueError("--clip chooses among --rerank's candidates; give --rerank N too")
    if args.rerank is not None:
        from trilemma.clip import DEFAULT_CLIP, load_clip

        scorer = load_clip(args.clip or DEFAULT_CLIP)  # before the model loads or --out is made: one line if missing
    if args.strength is not None and not args.init_image:
        raise ValueError("--strength is image-to-image's; give --init-image IMAGE too")
    init_image = _read_images([args.init_image])[0] if args.init_image else None  # before the model loads
    out = ensure_writable(args.out)
    model = require_generator(trilemma.load(args.model), args.model)
    # The declared options given on the command line (an empty text counts as not given: the model's default).
    options = {name: getattr(args, name) for name in model_options() if name not in CLI_OWN
               and getattr(args, name) not in (None, "")}
    if args.init_image:
        options["init_image"] = init_image
    if init_image is not None:  # refused before metadata.jsonl is rewritten: a previous run's stays whole
        steps = args.steps or getattr(getattr(model, "config", None), "sampling_steps", None)
        if steps and int(steps * (args.strength if args.strength is not None else 0.6)) < 1:
            raise ValueError(f"--strength {args.strength} x {steps} steps leaves no denoising step; raise --strength or --steps")
    accepted = {o.name for o in getattr(model, "generate_options", ())} | set(inspect.signature(model.generate).parameters)
    unsupported = [k for k in options if k not in accepted]
    if unsupported:
        flags = ", ".join("--" + k.replace("_", "-") for k in unsupported)
        raise ValueError(f"{args.model} ({type(model).__name__}) does not take {flags}"
                         + ("; image-to-image takes a diffusion model" if "init_image" in unsupported else ""))
    if len(prompts) * args.num_images > MAX_IMAGES_PER_RUN:
        raise ValueError(f"{len(prompts)} prompts x {args.num_images} images is over {MAX_IMAGES_PER_RUN:,} images a run; "
                         "split the prompts into several runs")
    # Image k gets seed + k, so a run's bytes do not depend on the batch size.
    jobs = [(p, args.seed + k) for k, p in enumerate(p for p in prompts for _ in range(args.num_images))]
    if scorer is not None:
        from trilemma.clip.rerank import CANDIDATE_STRIDE
        try:
            SEED.check(jobs[-1][1] + (args.rerank - 1) * CANDIDATE_STRIDE)
        except ValueError:
            raise ValueError(f"--seed {args.seed} is too large for --rerank {args.rerank} (candidate j of image k uses seed "
                             f"--seed + k + j x {CANDIDATE_STRIDE:,}); use a smaller --seed") from None
    with FolderLock(out, "trilemma generate"):
        done = _finished_rows(out, jobs, args.rerank) if args.resume else []
        meta = out / "metadata.jsonl"
        # metadata.jsonl grows batch by batch, flushed: an interrupted run leaves images that it names, and
        # `--resume` carries on from the first job it does not name.
        with open(meta, "a" if done else "w") as f:
            bar = progress(range(len(done), len(jobs), args.batch_size), desc="generating",
                           enabled=len(jobs) - len(done) > args.batch_size)
            for start in bar:
                chunk = jobs[start:start + args.batch_size]
                rows = [{"file_name": f"{k:06d}.png", "text": prompt, "seed": seed} for k, (prompt, seed) in enumerate(chunk, start=start)]
                if scorer is None:
                    batch = model.generate([p for p, _ in chunk], seed=chunk[0][1], **options)
                else:  # image k's candidate j uses seed --seed + k + j * CANDIDATE_STRIDE; "seed" stays --seed + k
                    from trilemma.clip.rerank import generate_reranked

                    batch, choices = generate_reranked(model, [p for p, _ in chunk], seed=chunk[0][1], candidates=args.rerank,
                                                       clip=scorer, **options)
                    for row, c in zip(rows, choices):
                        row.update({"rerank": args.rerank, "candidate": c["candidate"], "candidate_seed": c["candidate_seed"],
                                    "clip_score": round(c["clip_score"], 6)})
                for k, image in enumerate(batch, start=start):
                    image.save(out / f"{k:06d}.png")
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                f.flush()
        shown = [Image.open(out / f"{k:06d}.png") for k in range(min(64, len(jobs)))]
        image_grid(shown, [p for p, _ in jobs[:64]], cols=min(8, len(shown))).save(out / "grid.png")
    resumed = f" ({len(done)} were there already)" if done else ""
    print(f"wrote {len(jobs)} images{resumed}, metadata.jsonl and grid.png to {out}")


def _finished_rows(out: Path, jobs: list[tuple[str, int]], rerank: int | None = None) -> list[dict]:
    """The rows of an interrupted run's metadata.jsonl, checked against this run's jobs: a resume must be the
    same command, or its images would be named for other prompts (or chosen among another number of candidates)."""
    meta = out / "metadata.jsonl"
    if not meta.is_file():
        return []
    rows = []
    for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short when the run was killed: redo it
    for k, row in enumerate(rows):
        if k >= len(jobs) or not isinstance(row, dict) or (row.get("text"), row.get("seed")) != jobs[k] \
                or not (out / f"{k:06d}.png").is_file():
            raise ValueError(f"{meta} does not continue this command (row {k + 1}: {str(row)[:60]}); resume with the "
                             "same prompts, -n and --seed, or write to a new --out")
        if row.get("rerank") != rerank:
            how = f"with --rerank {row['rerank']}" if row.get("rerank") else "without --rerank"
            raise ValueError(f"{meta} was written {how}; resume with the same --rerank, or write to a new --out")
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))  # drop a torn last line
    return rows


MAX_VARY_IMAGES = 1000


def _read_images(paths: list[str]) -> list:
    """The images at `paths` as RGB, or one line naming the file that is missing or unreadable."""
    from PIL import Image

    from trilemma.data.sources import open_image

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no image at {path}")
        try:
            images.append(open_image(path, path).convert("RGB"))
        except (ValueError, Image.DecompressionBombError) as e:  # a mode PIL cannot convert; an image too large to trust
            raise ValueError(f"{path} cannot be read as an RGB image ({str(e).splitlines()[0][:120]}); give a PNG or JPEG") from None
    return images


def default_edit_model() -> str:
    from trilemma.registry import INPAINTING_MODEL, shipped_models

    return INPAINTING_MODEL if INPAINTING_MODEL in shipped_models() else "shapes-ldm-f8"


def cmd_edit(args) -> None:
    import numpy as np
    from PIL import Image

    import trilemma
    from trilemma.diffusion.editing import box_mask, inpainting_method, mask_tensor
    from trilemma.folders import FolderLock, ensure_writable
    from trilemma.grid import image_grid

    if not args.prompt or not args.prompt.strip():
        raise ValueError("give a prompt for the edited image: trilemma edit IMAGE --box X0 Y0 X1 Y1 \"a red circle\"")
    if args.mask is None and args.box is None:
        raise ValueError("say where to draw: --mask MASK.png (white: redraw) or --box X0 Y0 X1 Y1 (pixels)")
    image = _read_images([args.image])[0]  # before the model loads: a bad file costs nothing
    if args.box is not None:
        mask = box_mask(tuple(args.box), *image.size)
    else:
        mask = _read_images([args.mask])[0].convert("L")
        if mask.size != image.size:
            raise ValueError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {image.size[0]}x{image.size[1]}; "
                             "give a mask of the image's size")
        if not np.asarray(mask).max() >= 128:
            raise ValueError(f"{args.mask} has no white pixel: paint white where the image should change")
    name = args.model or default_edit_model()
    model = trilemma.load(name)
    if not hasattr(model, "inpaint"):
        raise ValueError(f"{name} ({type(model).__name__}) does not inpaint; edit takes a diffusion model "
                         "(shapes-ldm-f8-inpaint, or any other by --method repaint)")
    # Everything that can be refused is refused before --out is touched: a bad flag must not erase a previous run.
    method = inpainting_method(model, args.method, args.sampler, args.resample)
    mask_tensor(mask, model.resolution)  # one line if the mask is empty at the model's side
    out = ensure_writable(args.out)
    options = {k: v for k, v in {"steps": args.steps, "guidance_scale": args.guidance_scale, "sampler": args.sampler,
                                 "method": args.method}.items() if v is not None}
    n = args.num_images
    with FolderLock(out, "trilemma edit"), open(out / "metadata.jsonl", "w") as f:
        done = []
        for start in range(0, n, args.batch_size):
            k = min(args.batch_size, n - start)
            batch = model.inpaint([args.prompt] * k, image, mask, seed=args.seed + start, negative_prompt=args.negative_prompt or "",
                                  resample=args.resample, **options)
            for j, result in enumerate(batch, start=start):
                if args.keep_unmasked:
                    keep = mask.resize(result.size, Image.Resampling.NEAREST).point(lambda v: 255 if v >= 128 else 0)
                    result = Image.composite(result, image.convert("RGB").resize(result.size, Image.Resampling.BICUBIC), keep)
                result.save(out / f"{j:06d}.png")
                done.append(result)
                f.write(json.dumps({"file_name": f"{j:06d}.png", "text": args.prompt, "seed": args.seed + j,
                                    "source": str(args.image), "mask": args.mask or {"box": args.box},
                                    "method": method, "model": name}) + "\n")
            f.flush()
        shown = [image.convert("RGB").resize(done[0].size), mask.convert("RGB").resize(done[0].size)] + done[:62]
        image_grid(shown, ["input", "mask"] + [f"seed {args.seed + j}" for j in range(len(shown) - 2)],
                   cols=min(8, len(shown))).save(out / "grid.png")
    print(f"wrote {n} edited images, metadata.jsonl and grid.png to {out}")


def cmd_export(args) -> None:
    from trilemma.interop.diffusers_layout import export_diffusers

    path = export_diffusers(args.model, args.out)
    if (path / "model_index.json").is_file():
        print(f"wrote a diffusers folder to {path}; load it with diffusers' "
              f"{json.loads((path / 'model_index.json').read_text())['_class_name']}.from_pretrained")
    else:  # unCLIP: its prior alone (no diffusers pipeline fits the whole model; the folder's README.md says why)
        print(f"wrote the prior as a diffusers PriorTransformer to {path / 'prior'}; no diffusers pipeline loads the whole "
              f"model (see {path / 'README.md'})")


def cmd_vary(args) -> None:
    import trilemma
    from trilemma.folders import FolderLock, ensure_writable
    from trilemma.grid import image_grid

    if len(args.images) > MAX_VARY_IMAGES:
        raise ValueError(f"{len(args.images)} images is over {MAX_VARY_IMAGES} a run; split them into several runs")
    sources = _read_images(args.images)  # before the model loads: a bad file costs nothing
    model = trilemma.load(args.model)
    if not hasattr(model, "vary"):
        raise ValueError(f"{args.model} ({type(model).__name__}) draws no variations of images; vary takes an unCLIP "
                         "model (shapes-unclip)")
    out = ensure_writable(args.out)
    options = {k: v for k, v in {"steps": args.steps, "guidance_scale": args.guidance_scale}.items() if v is not None}
    n = args.num_images
    with FolderLock(out, "trilemma vary"), open(out / "metadata.jsonl", "w") as f:
        shown, captions = [], []
        for i, (path, image) in enumerate(zip(args.images, sources)):
            seed = args.seed + i * n
            variations = model.vary([image], n=n, seed=seed, caption=args.caption, batch_size=args.batch_size, **options)[0]
            for k, v in enumerate(variations):
                name = f"{i * n + k:06d}.png"
                v.save(out / name)
                row = {"file_name": name, "source": str(path), "seed": seed + k}
                if args.caption:
                    row["text"] = args.caption
                f.write(json.dumps(row) + "\n")
            f.flush()
            if i < 8:  # the grid: each source, then its variations
                shown += [image.resize(variations[0].size)] + variations
                captions += [Path(path).name] + [f"seed {seed + k}" for k in range(n)]
    image_grid(shown, captions, cols=n + 1).save(out / "grid.png")
    print(f"wrote {len(sources) * n} variations, metadata.jsonl and grid.png to {out}")


def cmd_interpolate(args) -> None:
    import trilemma
    from trilemma.folders import ensure_writable
    from trilemma.grid import image_grid

    if args.images:
        if args.prompt_a or args.prompt_b:
            raise ValueError("give two prompts or --images A B, not both")
        if not 2 <= args.steps <= 64:
            raise ValueError(f"--steps with --images must be between 2 and 64, got {args.steps}")
        if args.mode != "both" or args.truncation is not None:
            raise ValueError("--mode and --truncation are a GAN's; --images interpolates image embeddings and takes neither")
        sources = _read_images(args.images)
        model = trilemma.load(args.model)
        if not hasattr(model, "interpolate_images"):
            raise ValueError(f"{args.model} ({type(model).__name__}) does not interpolate between images; --images takes "
                             "an unCLIP model (shapes-unclip)")
        out = ensure_writable(args.out)
        images = model.interpolate_images(sources[0], sources[1], steps=args.steps, seed=args.seed)
        for k, image in enumerate(images):
            image.save(out / f"{k:03d}.png")
        strip = [sources[0].resize(images[0].size)] + images + [sources[1].resize(images[0].size)]
        captions = [Path(args.images[0]).name] + [""] * len(images) + [Path(args.images[1]).name]
        image_grid(strip, captions, cols=len(strip)).save(out / "strip.png")
        print(f"wrote {len(images)} images and strip.png (the two sources at its ends) to {out}")
        return
    if not (args.prompt_a and args.prompt_b):
        raise ValueError("give two prompts (trilemma interpolate \"a red circle\" \"a blue square\" --model M) or --images A B")
    model = trilemma.load(args.model)
    if not hasattr(model, "interpolate"):
        raise ValueError(f"{args.model} ({type(model).__name__}) has no latent space to interpolate; interpolate takes a GAN (or, with --images, an unCLIP model)")
    out = ensure_writable(args.out)
    images = model.interpolate(args.prompt_a, args.prompt_b, steps=args.steps, seed=args.seed, mode=args.mode,
                               truncation=args.truncation)
    for k, image in enumerate(images):
        image.save(out / f"{k:03d}.png")
    # In z mode the text stays at prompt_a: say so at the far end instead of naming prompt_b.
    end = f"{args.prompt_a} (z of seed {args.seed + 1})" if args.mode == "z" else args.prompt_b
    captions = [args.prompt_a] + [""] * (len(images) - 2) + [end]
    image_grid(images, captions, cols=len(images)).save(out / "strip.png")
    print(f"wrote {len(images)} images and strip.png to {out}")


def cmd_evaluate(args) -> None:
    from trilemma.eval.evaluate import evaluate, report_markdown

    if args.data:
        from trilemma.eval.heldout import evaluate_heldout, heldout_markdown

        out = Path(args.out or Path("reports/eval") / Path(args.model).name)
        report = evaluate_heldout(args.model, args.data, args.train_data, n=args.n, seed=args.seed, out=out,
                                  inception_weights=args.inception_weights, clip=args.clip,
                                  clip_features=args.features == "clip")
        print(heldout_markdown(report))
        print(f"(report.json, report.md and samples.png in {out})")
        return

    out = Path(args.out or Path("reports/eval") / Path(args.model).name)
    report = evaluate(args.model, args.split, args.n or 500, out, Path(args.cache), args.inception_weights, progress=sys.stderr.isatty(),
                      clip=args.clip, features=args.features)
    print(report_markdown(report))
    print(f"(report.json and report.md in {out})")


def cmd_compare(args) -> None:
    from trilemma.eval.evaluate import compare

    path = compare(args.models, Path(args.out), args.split, args.n, Path(args.cache), reuse=not args.fresh,
                   progress=sys.stderr.isatty(), clip=args.clip)
    print(path.read_text())


def cmd_score(args) -> None:
    from trilemma.checkpoint import write_json
    from trilemma.eval.folder import format_summary, score_folder

    summary, records = score_folder(args.folder, progress=not args.json)
    out = Path(args.out) if args.out else Path(args.folder) / "scores.json"
    try:
        write_json(out, {"summary": summary, "images": records})
    except OSError as e:
        print(f"warning: could not write {out}: {e.strerror}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
        print(f"(details in {out})")


def cmd_serve(args) -> None:
    from trilemma.folders import ensure_writable
    from trilemma.serve import resolve_models, serve
    from trilemma.serve.api import Limits

    resolve_models(args.models)  # one line for a bad --models before anything starts
    ensure_writable(args.outdir)
    serve(args.host, args.port, models=args.models, outdir=args.outdir, api_key=args.api_key, queue_size=args.queue_size,
          max_batch_images=args.max_batch, limits=Limits(max_images=args.max_images, max_steps=args.max_steps))


def cmd_models(args) -> None:
    from trilemma.registry import DEFAULT_MODEL, model_info, shipped_clips, shipped_models

    if args.default:
        print(DEFAULT_MODEL)
        return
    models = shipped_models()
    if not models:
        print("no shipped models")
    for name, path in models.items():
        info = model_info(path)
        scores = info.get("scores", {})
        mark = " (default)" if name == DEFAULT_MODEL else ""
        if scores.get("benchmark", "shapes") != "shapes":  # a model of another data set: its held-out KID
            held = scores.get("heldout", {})
            measured = f"trained on {scores['benchmark']}; held-out KID {held['kid']:.4f} (n={held['n']}, {held['features']})" \
                if "kid" in held else f"trained on {scores['benchmark']}"
        else:
            rates = ", ".join(f"{split} {scores[split]:.3f}" for split in ("test", "test-novel") if split in scores)
            measured = f"pass rate {rates or 'not measured'}" + \
                (f" (n={scores['n_per_split']} per split)" if "n_per_split" in scores else "")
        print(f"{name}{mark}: {info['family']} / {info['model_class']}, {info['size_mb']} MB, "
              f"{scores.get('parameters', 0) / 1e6:.1f}M parameters; {measured}")
    for name, path in shipped_clips().items():  # the CLIPs that score images (CLIP score, reranking, guidance)
        try:
            info = model_info(path)
        except (OSError, ValueError, KeyError):
            info = {"size_mb": None}
        scores = info.get("scores") if isinstance(info.get("scores"), dict) else {}
        parameters = f", {scores['parameters'] / 1e6:.1f}M parameters" if isinstance(scores.get("parameters"), (int, float)) else ""
        print(f"{name}: clip / CLIP, {info['size_mb']} MB{parameters}; {_clip_retrieval(scores)}")


def _clip_retrieval(scores: dict) -> str:
    """A CLIP's measured retrieval from its scores.json: recall@k and hard negatives, per split where it has splits."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def summary(d: dict) -> list[str]:
        parts = [f"{k.replace('_', ' ')} {v:.3f}" for k, v in d.items() if "recall@" in k and number(v)]
        hard = d.get("hard_negative")
        if number(hard):
            parts.append(f"beats hard negatives {hard:.3f}")
        elif isinstance(hard, dict):
            overall = hard.get("overall")
            overall = overall.get("overall") if isinstance(overall, dict) else overall
            cats = [f"{c} {v['overall']:.3f}" for c, v in hard.items() if c != "overall" and isinstance(v, dict) and number(v.get("overall"))]
            if number(overall) or cats:
                parts.append("beats hard negatives " + (f"{overall:.3f}" if number(overall) else "") +
                             (f" ({', '.join(cats)})" if cats and number(overall) else ", ".join(cats)))
        return parts

    pieces = [", ".join(summary(scores))] if summary(scores) else []
    pieces += [f"{split}: {', '.join(summary(v))}" for split, v in scores.items() if isinstance(v, dict) and summary(v)]
    return "; ".join(pieces) or "retrieval not measured"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trilemma.checkpoint import CheckpointError
    from trilemma.train.loop import TrainingDiverged

    handlers = {"data": cmd_data, "train": cmd_train, "generate": cmd_generate, "score": cmd_score, "models": cmd_models,
                "interpolate": cmd_interpolate, "vary": cmd_vary, "edit": cmd_edit, "export": cmd_export, "serve": cmd_serve, "evaluate": cmd_evaluate, "compare": cmd_compare}
    try:
        handlers[args.command](args)
    except (CheckpointError, TrainingDiverged, ValueError, OSError, KeyError) as e:  # a bad prompt is a ValueError
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"trilemma {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"trilemma {args.command}: error: out of memory; use fewer images, a smaller --batch-size or a smaller model",
              file=sys.stderr)
        return 2
    except Exception as e:  # a defect of trilemma's, not of the input: one line, exit 1, the traceback on request
        if os.environ.get("TRILEMMA_DEBUG"):
            raise
        print(f"trilemma {args.command}: internal error: {type(e).__name__}: {str(e)[:300]} (a bug; please report it, "
              "with the traceback that TRILEMMA_DEBUG=1 prints)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
