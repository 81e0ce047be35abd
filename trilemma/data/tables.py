"""Captioned images held in a table, the way many users hold their data: Parquet files with an image column
(what the Hugging Face Hub serves and `Dataset.to_parquet` writes), or a folder written by Hugging Face
`datasets`' `save_to_disk` (Arrow files, one folder per split for a `DatasetDict`).

    {"type": "parquet", "path": "data/train.parquet"}               one file, or a folder of *.parquet
    {"type": "parquet", "path": "my_dataset", "split": "train"}     a save_to_disk folder
    {"image_column": "image", "caption_column": "text"}             the columns to read (these defaults)

The image column may hold `datasets`' Image feature (a struct of `bytes` and `path`), raw encoded bytes, or a
path relative to the table's folder. A caption may be a text or a list of texts (one per epoch in turn, as in
an image folder). Read with pyarrow (no `datasets` needed): Arrow files are memory-mapped and Parquet files
read a row group at a time, so a large table is never whole in memory. Samples are drawn epoch by epoch like
an image folder's (`trilemma.data.sources.Epochs`), with the same transforms and encode-once cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trilemma.config import ConfigError
from trilemma.data.sources import DataConfig, DataSource, Epochs, open_image, transform


# Row groups (or Arrow files, memory-mapped) kept read: an epoch visits rows in a random order, so a table much
# larger than this many row groups re-reads one per sample; write such a table with small row groups.
CACHED_PARTS = 16
SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-\d{5}-of-\d{5}")  # the Hub's {split}-00000-of-00003.parquet
SPLIT_FOLDERS = ("train", "test", "validation", "valid", "dev")


def split_of(relative: Path) -> str | None:
    """The split a Parquet file of a Hub snapshot belongs to, by its name or its folder; None if it says none."""
    named = SPLIT_FILE.match(relative.name)
    if named:
        return named["split"]
    return next((part for part in relative.parts[:-1] if part in SPLIT_FOLDERS), None)


class ParquetSource(DataSource):
    """The registered `parquet` source: a `Table` read epoch by epoch."""

    @classmethod
    def check_config(cls, data: DataConfig, where: str) -> None:
        if not data.path:
            raise ConfigError(f"{where}: a parquet source needs 'path': a .parquet file, a folder of them, or a folder "
                              "written by datasets' save_to_disk")
        data.image_column = data.image_column or "image"

    @classmethod
    def build(cls, data: DataConfig, seed: int, rank: int | None, world: int | None) -> Epochs:
        return Epochs(Table(data), seed)


class Table:
    """A finite table of captioned images: row k is image k."""

    def __init__(self, data: DataConfig):
        self.data = data
        self.root = Path(data.path)
        self.files = self._files()
        self.parts: list[tuple[Path, int, int]] = []  # (file, row group or -1 for a whole Arrow file, rows)
        captions = []
        for path in self.files:
            schema, groups, texts = self._read_captions(path)
            for column in (data.image_column, data.caption_column):
                if column not in schema.names:
                    which = "image" if column == data.image_column else "caption"
                    raise ValueError(f"{path} has no {column!r} column (it has {', '.join(schema.names)}); name the "
                                     f"{which} column with data.{which}_column")
            self.parts += groups
            captions += texts
        self.captions = [self._texts(t, k) for k, t in enumerate(captions)]
        self.offsets = np.cumsum([0] + [n for _, _, n in self.parts])
        if not self.captions:
            raise ValueError(f"{self.root} holds no rows; give a table of images with captions")
        self._cached: OrderedDict[int, pa.Table] = OrderedDict()  # the last row groups read

    def _files(self) -> list[Path]:
        root = self.root
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise ValueError(f"no table at {root}; give a .parquet file, a folder of them, or a save_to_disk folder")
        if (root / "dataset_dict.json").is_file():  # a DatasetDict: one folder per split
            splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
            if self.data.split not in splits:
                raise ValueError(f"{root} has the splits {', '.join(splits)}, not {self.data.split!r}; set data.split")
            root = root / self.data.split
        if (root / "state.json").is_file():  # save_to_disk: the Arrow files it lists, in order
            state = json.loads((root / "state.json").read_text())
            return [root / f["filename"] for f in state.get("_data_files", [])]
        files = sorted(root.rglob("*.parquet"))
        if not files:
            raise ValueError(f"{root} holds no .parquet file and is not a save_to_disk folder")
        # A Hub snapshot keeps its splits apart, as data/{split}-00000-of-00001.parquet or {split}/*.parquet:
        # read only data.split's files, never another split's rows.
        splits = {f: split_of(f.relative_to(root)) for f in files}
        if any(splits.values()):
            mine = [f for f in files if splits[f] == self.data.split]
            if not mine:
                raise ValueError(f"{root} has the splits {', '.join(sorted(set(filter(None, splits.values()))))}, "
                                 f"not {self.data.split!r}; set data.split")
            return mine
        return files

    def _read_captions(self, path: Path) -> tuple[pa.Schema, list[tuple[Path, int, int]], list]:
        try:
            if path.suffix == ".arrow":
                table = self._arrow(path)
                column = table.column(self.data.caption_column).to_pylist() if self.data.caption_column in table.column_names else []
                return table.schema, [(path, -1, table.num_rows)], column
            meta = pq.ParquetFile(path)
            groups = [(path, g, meta.metadata.row_group(g).num_rows) for g in range(meta.num_row_groups)]
            names = meta.schema_arrow.names
            column = meta.read(columns=[self.data.caption_column]).column(0).to_pylist() if self.data.caption_column in names else []
            return meta.schema_arrow, groups, column
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{path} is not a readable Parquet or Arrow file ({e}); rewrite or remove it") from None

    @staticmethod
    def _arrow(path: Path) -> pa.Table:
        """An Arrow file as `datasets` writes it (the IPC stream format), memory-mapped."""
        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).read_all()

    def _texts(self, text, k: int) -> list[str]:
        texts = [text] if isinstance(text, str) else text if isinstance(text, list) else []
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{self.root}: row {k}'s caption must be text or a list of texts, got {text!r}")
        return texts

    def __len__(self) -> int:
        return len(self.captions)

    def _row(self, k: int) -> dict:
        part = int(np.searchsorted(self.offsets, k, side="right") - 1)
        if part not in self._cached:
            path, group, _ = self.parts[part]
            columns = [self.data.image_column]
            self._cached[part] = self._arrow(path).select(columns) if group < 0 else \
                pq.ParquetFile(path).read_row_group(group, columns=columns)
            while len(self._cached) > CACHED_PARTS:
                self._cached.popitem(last=False)
        self._cached.move_to_end(part)
        return self._cached[part].slice(k - int(self.offsets[part]), 1).to_pylist()[0]

    def image(self, k: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        value, name = self._row(k)[self.data.image_column], f"{self.root} row {k}"
        if isinstance(value, dict):  # datasets' Image feature: encoded bytes, or a path when the bytes are not kept
            value = value.get("bytes") or value.get("path")
        if isinstance(value, str):
            path = (self.root if self.root.is_dir() else self.root.parent) / value
            if not path.resolve().is_relative_to((self.root if self.root.is_dir() else self.root.parent).resolve()):
                raise ValueError(f"{name}: the image path {value!r} leads outside {self.root}")
            value = path.read_bytes() if path.is_file() else None
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"{name}: the {self.data.image_column!r} column holds no image (encoded bytes, datasets' "
                             "Image feature, or a path); name the image column with data.image_column")
        return transform(open_image(io.BytesIO(value), name), self.data, rng)

    def caption(self, k: int, draw: int = 0) -> str:
        texts = self.captions[k]
        return texts[draw % len(texts)]

    def all_captions(self) -> list[str]:
        return [t for texts in self.captions for t in texts]

    def fingerprint(self) -> str:
        """Changes when a file or a transform does: the key of an encoding cache."""
        h = hashlib.sha256(json.dumps(asdict(self.data), sort_keys=True).encode())
        for path in self.files:
            stat = path.stat()
            h.update(json.dumps([str(path), stat.st_size, stat.st_mtime_ns]).encode())
        return h.hexdigest()[:16]
