"""Where training images come from: a recipe's `data` object, read into a dataset that any model trains on.

    {"type": "shapes", "split": "train", "resolution": 64}
    {"type": "imagefolder", "path": "DIR", "caption_column": "text", "image_column": "file_name"}
    {"type": "webdataset", "urls": "shards/{00000..00099}.tar"}
    {"type": "parquet", "path": "DIR or FILE.parquet", "image_column": "image", "caption_column": "text"}

Sources are registered by type the way models are (`trilemma.registry.DATA_SOURCES`: a type to a
"module:Class" string, imported when named), so a new source is one new file plus one line there; this
module depends on none of them. Every source meets the `DataSource` interface below: what a model may ask of
its data beyond images and captions (hard negative captions, object boxes, a vocabulary) is asked through it.

The batch contract, what every model's `training_step` reads: each sample is a dict with
`pixel_values` (3, R, R) floats in [-1, 1] and `text` (its caption); a Shapes sample adds `prompt` (the
canonical wording). A model that trains on a frozen first stage's encodings gets `latents` or
`image_tokens` in place of `pixel_values` (`trilemma.data.cache`).

Two kinds of dataset come out:
- indexed (Shapes, an image folder): the loop asks for sample i; a finite folder is read epoch by epoch,
  each epoch a fresh permutation drawn from (seed, epoch), so every image is seen once per epoch and a
  resumed run sees the batches an unbroken one would;
- streamed (webdataset shards): read in order, never whole into memory; each process takes its own
  shards (shard k goes to process k mod P), and each data-loader worker its own share of those, so P
  processes read each sample once per epoch between them.

Transforms follow diffusers' training scripts: resize the short side to `resolution`, `center_crop` (else a
random crop), `random_flip`. Random choices are drawn from (seed, sample index), never from global state.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset

from trilemma.config import ConfigError, parse_config
from trilemma.registry import DATA_SOURCES, data_source

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass
class DataConfig:
    type: str = "shapes"  # a key of trilemma.registry.DATA_SOURCES
    resolution: int | None = None  # None: the model's own resolution
    center_crop: bool = True  # else a random crop of the resized image
    random_flip: bool = False  # a horizontal mirror, half the time (not for Shapes: "left of" would lie)
    split: str = "train"  # Shapes' split; a Hugging Face dataset's split
    # An endless source (Shapes) is encoded once up to these many samples for a latent or token model.
    cache_latents: int = 20000
    cache_tokens: int = 20000
    # imagefolder: HF datasets' layout (metadata.jsonl beside the images), or x.png beside x.txt;
    # parquet: a Parquet file or folder of them, or a folder written by datasets' save_to_disk
    path: str | None = None
    caption_column: str = "text"
    image_column: str | None = None  # None: the source's own ("file_name" in a folder's metadata, "image" in a table)
    # webdataset: brace-expanded tar shards, an image (.jpg/.png/.webp) and a caption (.txt/.json) per sample
    urls: str | list[str] | None = None
    shuffle_buffer: int = 1000  # samples shuffled in memory as they stream past


def parse_data_config(raw: dict | None, where: str = "data", resolution: int | None = 64) -> DataConfig:
    """A recipe's `data` object, checked: one line naming the fix for a bad key, type or value. A data
    object that names no resolution takes `resolution` (None: the model's, filled in when it is known)."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(raw).__name__}")
    config = parse_config(DataConfig, dict(raw or {}), where)
    if config.resolution is None:
        config.resolution = resolution
    if config.type not in DATA_SOURCES:
        raise ConfigError(f"{where}: 'type' must be one of {', '.join(DATA_SOURCES)}, got {config.type!r}")
    data_source(config.type).check_config(config, where)
    if config.resolution is not None and config.resolution < 8:
        raise ConfigError(f"{where}: 'resolution' must be at least 8, got {config.resolution}")
    return config


def build_dataset(data: DataConfig, seed: int = 0, rank: int | None = None, world: int | None = None) -> "DataSource":
    """The dataset a recipe names, built by its registered source: indexed and endless (Shapes, folders, tables)
    or streamed (webdataset)."""
    return data_source(data.type).build(data, seed, rank, world)


class DataSource:
    """What every source supplies, and what a model may ask of it (a documented interface, not `hasattr`).

    Samples: `dataset[i]` (indexed, endless: the loop asks for sample i) or `stream(skip)` (streamed), each a
    dict of `pixel_values` (3, R, R) in [-1, 1] and `text`. Beyond samples, a source answers:
    - `captions(limit)`: captions read without decoding images (to learn a tokenizer, fit text statistics);
    - `validation_prompts()`: a few prompts for the loop's sample grids (None: the recipe's own);
    - `vocabulary()`: a word list that covers every caption, or None (a byte-level BPE is then learnt
      from the captions);
    - `hard_negative(i, rng)`: a caption that contradicts sample i's image (NegCLIP's hard negatives), or
      None when the source cannot make one (`makes_hard_negatives` says which);
    - `object_boxes(i)`: the (x, y, size) boxes of sample i's objects, fractions of the side, or None;
    - for an encode-once cache (`trilemma.data.cache`), indexed sources: `cache_size()`, `cache_images(n)`,
      `cached_sample(i, n)` and `fingerprint()`.
    """

    makes_hard_negatives = False
    seed = 0

    @classmethod
    def check_config(cls, data: DataConfig, where: str) -> None:
        """Refuse, in one line naming the fix, a data object this source cannot read; fill in its own defaults."""

    @classmethod
    def build(cls, data: DataConfig, seed: int, rank: int | None, world: int | None) -> "DataSource":
        raise NotImplementedError

    def captions(self, limit: int) -> list[str]:
        return [self[i]["text"] for i in range(limit)]

    def validation_prompts(self) -> list[str] | None:
        return None

    @classmethod
    def vocabulary(cls) -> list[str] | None:
        return None

    def hard_negative(self, index: int, rng: np.random.Generator) -> str | None:
        return None

    def object_boxes(self, index: int) -> list[tuple[float, float, float]] | None:
        return None


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB to (3, H, W) float in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparent pixels on white (emoji, icons and logos are drawn on transparency)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")


def transform(image: Image.Image, data: DataConfig, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Resize the short side to the resolution, crop a square (centre, or random when rng is given and
    center_crop is off), flip (when rng is given and random_flip is on)."""
    image = to_rgb(image)
    r = data.resolution
    w, h = image.size
    scale = r / min(w, h)
    size = (max(r, round(w * scale)), max(r, round(h * scale)))
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    w, h = image.size
    if rng is not None and not data.center_crop:
        x0, y0 = int(rng.integers(w - r + 1)), int(rng.integers(h - r + 1))
    else:
        x0, y0 = (w - r) // 2, (h - r) // 2
    image = image.crop((x0, y0, x0 + r, y0 + r))
    if rng is not None and data.random_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image_to_tensor(image)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def open_image(source, name: str) -> Image.Image:
    try:
        image = Image.open(source)
        image.load()
        return ImageOps.exif_transpose(image)  # photos stand the way the camera held them
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name} is not a readable image ({e}); remove it or replace it") from None


class ImageFolderSource(DataSource):
    """The registered `imagefolder` source: an `ImageFolder` read epoch by epoch."""

    @classmethod
    def check_config(cls, data: DataConfig, where: str) -> None:
        if not data.path:
            raise ConfigError(f"{where}: an imagefolder needs 'path', the folder of images")
        data.image_column = data.image_column or "file_name"

    @classmethod
    def build(cls, data: DataConfig, seed: int, rank: int | None, world: int | None) -> Epochs:
        return Epochs(ImageFolder(data), seed)


class ImageFolder(Dataset):
    """A finite folder of captioned images: sample k is image k, resized and centre-cropped.

    Two layouts: Hugging Face `datasets`' imagefolder (a `metadata.jsonl` whose rows name the image file
    and its caption; a list of captions is allowed, one per epoch in turn), or DALLE-pytorch's `x.png`
    beside `x.txt` (one caption a line). Files are read when asked for, never all at once.
    """

    def __init__(self, data: DataConfig):
        self.data = data
        self.root = Path(data.path)
        if not self.root.is_dir():
            raise ValueError(f"no image folder at {self.root}; pass a folder of images with captions")
        meta = self.root / "metadata.jsonl"
        self.files, self.captions = self._read_metadata(meta) if meta.is_file() else self._read_pairs()
        for path in self.files:  # headers only: a broken file is named now, not mid-training
            try:
                with Image.open(path):
                    pass
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{path} is not a readable image ({e}); remove it or replace it") from None
        if not self.files:
            raise ValueError(f"{self.root} holds no captioned images: add a metadata.jsonl "
                             f"({{\"{data.image_column}\": \"x.png\", \"{data.caption_column}\": \"a caption\"}} a line) "
                             "or x.txt captions beside x.png images")

    def _read_metadata(self, meta: Path) -> tuple[list[Path], list[list[str]]]:
        files, captions = [], []
        for n, line in enumerate(_read_text(meta).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta}:{n} is not valid JSON ({e.msg})") from None
            for column in (self.data.image_column, self.data.caption_column):
                if not isinstance(row, dict) or column not in row:
                    raise ValueError(f"{meta}:{n} has no {column!r} column; name the right one with "
                                     f"data.{'image' if column == self.data.image_column else 'caption'}_column")
            text, name = row[self.data.caption_column], row[self.data.image_column]
            texts = [text] if isinstance(text, str) else text if isinstance(text, list) else []
            if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"{meta}:{n}: the caption must be text or a list of texts, got {text!r}")
            path = self.root / name if isinstance(name, str) else None
            if path is None or not path.resolve().is_relative_to(self.root.resolve()):
                raise ValueError(f"{meta}:{n}: {self.data.image_column} must name a file inside {self.root}, got {name!r}")
            if not path.is_file():
                raise ValueError(f"{meta}:{n} names {name}, which is not in {self.root}")
            files.append(path)
            captions.append(texts)
        return files, captions

    def _read_pairs(self) -> tuple[list[Path], list[list[str]]]:
        files, captions = [], []
        for path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            text = path.with_suffix(".txt")
            if text.is_file():
                lines = [line.strip() for line in _read_text(text).splitlines() if line.strip()]
                if lines:
                    files.append(path)
                    captions.append(lines)
        return files, captions

    def __len__(self) -> int:
        return len(self.files)

    def image(self, k: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        return transform(open_image(self.files[k], str(self.files[k])), self.data, rng)

    def caption(self, k: int, draw: int = 0) -> str:
        texts = self.captions[k]
        return texts[draw % len(texts)]

    def all_captions(self) -> list[str]:
        return [t for texts in self.captions for t in texts]

    def __getitem__(self, k: int) -> dict:
        return {"pixel_values": self.image(k), "text": self.caption(k)}

    def fingerprint(self) -> str:
        """Changes when a file, a caption or a transform does: the key of an encoding cache."""
        h = hashlib.sha256(json.dumps(asdict(self.data), sort_keys=True).encode())
        for path, texts in zip(self.files, self.captions):
            stat = path.stat()
            h.update(json.dumps([str(path.relative_to(self.root)), stat.st_size, stat.st_mtime_ns, texts]).encode())
        return h.hexdigest()[:16]


class Epochs(DataSource, Dataset):
    """A finite dataset read endlessly: sample i is item perm_e[i mod N] of epoch e = i // N.

    The permutation is drawn from (seed, e), crops and flips from (seed, i): a pure function of i, as the
    loop needs for exact resumption. `source` is any finite table of captioned images: it answers `len`,
    `image(k, rng)`, `caption(k, draw)`, `all_captions()`, `fingerprint()` and has `data` (an image folder,
    a Parquet table).
    """

    def __init__(self, source, seed: int = 0):
        self.source, self.seed = source, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def captions(self, limit: int) -> list[str]:
        return self.source.all_captions()[:limit]

    def validation_prompts(self) -> list[str]:
        """Eight captions spread over the data."""
        n = len(self.source)
        return [self.source.caption(k * n // 8) for k in range(min(8, n))]

    def cache_size(self, limit: int) -> int:
        return len(self.source)  # finite: every image

    def __len__(self) -> int:
        return 2**31 - 1

    def source_index(self, i: int) -> int:
        n = len(self.source)
        epoch = i // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 7]).permutation(n))
        return int(self._perm[1][i % n])

    def __getitem__(self, i: int) -> dict:
        k = self.source_index(i)
        rng = np.random.default_rng([self.seed, i, 8])
        return {"pixel_values": self.source.image(k, rng), "text": self.source.caption(k, i // len(self.source))}

    # --- what an encoding cache needs (trilemma.data.cache) -------------------------------
    def cache_images(self, n: int):
        """Every image, centre-cropped, in folder order."""
        for k in range(n):
            yield self.source.image(k)

    def cached_sample(self, i: int, n: int) -> dict:
        """Sample i of the epoch stream over the cached images: its index, whether mirrored, a caption."""
        k = self.source_index(i)
        flip = self.source.data.random_flip and np.random.default_rng([self.seed, i, 8]).random() < 0.5
        return {"index": k, "flip": bool(flip), "text": self.source.caption(k, i // len(self.source))}

    def fingerprint(self) -> str:
        return self.source.fingerprint()


def expand_urls(urls: str | list[str]) -> list[str]:
    import braceexpand

    urls = [urls] if isinstance(urls, str) else list(urls)
    return [u for pattern in urls for u in braceexpand.braceexpand(pattern)]


def _process() -> tuple[int, int]:
    """(rank, world) of this process: torch.distributed once accelerate has set it up, else one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class WebDatasetStream(DataSource, IterableDataset):
    """Webdataset shards (img2dataset's and open_clip's layout), streamed with the `webdataset` package.

    Shards are split by process, then by data-loader worker, before any is opened, so each sample is read
    by one reader per epoch. Each epoch reshuffles the shard order and a buffer of samples from (seed,
    epoch): the stream is a pure function of the seed, so a resumed run can skip to where it stopped.
    """

    def __init__(self, data: DataConfig, seed: int = 0, rank: int | None = None, world: int | None = None):
        self.data, self.seed = data, seed
        self.shards = expand_urls(data.urls)
        missing = [s for s in self.shards if "://" not in s and not Path(s).is_file()]
        if missing:
            raise ValueError(f"no shard at {missing[0]} ({len(missing)} of {len(self.shards)} missing); check data.urls")
        if rank is None or world is None:
            rank, world = _process()
        self.rank, self.world = rank, world
        if len(self.shards) < world:
            raise ValueError(f"{len(self.shards)} shards cannot feed {world} processes; write at least one shard each")

    @classmethod
    def check_config(cls, data: DataConfig, where: str) -> None:
        if not data.urls:
            raise ConfigError(f"{where}: a webdataset needs 'urls', for example \"shards/{{00000..00009}}.tar\"")

    @classmethod
    def build(cls, data: DataConfig, seed: int, rank: int | None, world: int | None) -> "WebDatasetStream":
        return cls(data, seed, rank, world)

    def validation_prompts(self) -> list[str]:
        return self.captions(8)

    def my_shards(self, epoch: int) -> list[str]:
        order = np.random.default_rng([self.seed, epoch, 9]).permutation(len(self.shards))
        mine = [self.shards[k] for k in order[self.rank::self.world]]
        info = torch.utils.data.get_worker_info()
        return mine[info.id::info.num_workers] if info is not None else mine

    def _raw(self, epoch: int):
        """(n, raw sample, caption) of one pass over this reader's shards, for samples with an image and a
        caption; images undecoded."""
        import webdataset as wds

        def unreadable(exn):
            raise ValueError(f"a shard of {self.data.urls} is not a readable tar file ({exn}); rewrite or remove it")

        # Splitting is done above, by (rank, worker); the package's own splitters would split again.
        pipeline = wds.WebDataset(self.my_shards(epoch), shardshuffle=False, nodesplitter=None,
                                  workersplitter=None, empty_check=False, handler=unreadable)
        if self.data.shuffle_buffer > 1:
            pipeline = pipeline.shuffle(self.data.shuffle_buffer, rng=_seeded_random(self.seed, epoch, self.rank))
        n = 0
        for sample in pipeline:
            text = self._caption(sample) if any(k in sample for k in IMAGE_KEYS) else None
            if text is None:
                continue  # a sample without an image or a caption: img2dataset writes such failures too
            yield n, sample, text
            n += 1

    def _caption(self, sample: dict) -> str | None:
        text = sample.get("txt")
        if text is None:
            if "json" not in sample:
                return None
            try:
                meta = json.loads(sample["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
            text = (meta.get(self.data.caption_column) or meta.get("caption")) if isinstance(meta, dict) else None
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return text.strip() if isinstance(text, str) and text.strip() else None

    def epoch(self, epoch: int, skip: int = 0):
        """One pass over this reader's shards: samples as the batch contract has them. The first `skip` are
        passed over undecoded (a resumed run), their random draws untouched: each is keyed by its place."""
        for n, sample, text in self._raw(epoch):
            if n < skip:
                continue
            image_key = next(k for k in IMAGE_KEYS if k in sample)
            rng = np.random.default_rng([self.seed, epoch, self.rank, n])
            image = open_image(io.BytesIO(sample[image_key]), f"{sample['__url__']}:{sample['__key__']}")
            yield {"pixel_values": transform(image, self.data, rng), "text": text}

    def captions(self, limit: int) -> list[str]:
        """Up to `limit` captions of the first pass, without decoding an image (to learn a tokenizer)."""
        out = []
        for _, _, text in self._raw(0):
            out.append(text)
            if len(out) >= limit:
                break
        return out

    def stream(self, skip: int = 0):
        """Endless: epoch after epoch. `skip` samples are passed over first, undecoded."""
        epoch, empty = 0, 0
        while True:
            got = 0
            for sample in self.epoch(epoch, skip):
                got += 1
                yield sample
            seen = sum(1 for _ in self._raw(epoch)) if skip else got
            skip = max(0, skip - seen)
            empty = 0 if seen else empty + 1
            if empty >= 2:
                raise ValueError(f"the shards {self.my_shards(epoch)[:2]}... hold no image with a caption")
            epoch += 1

    def __iter__(self):
        return self.stream()


def _seeded_random(*seed):
    """A `random.Random` seeded from a tuple (webdataset's shuffle takes one)."""
    import random

    return random.Random(int(np.random.default_rng(list(seed)).integers(2**63)))
