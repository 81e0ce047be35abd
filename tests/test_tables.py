"""A fourth data source in one file (trilemma/data/tables.py): Parquet files and Hugging Face `datasets`'
save_to_disk folders with an image column, read like an image folder and trained with `trilemma train --data`."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import run_cli
from test_data import COLORS, _image
from trilemma.config import ConfigError
from trilemma.data.sources import Epochs, build_dataset, parse_data_config

# datasets' Image feature: a struct of the encoded bytes and the file's path (None once embedded).
IMAGE_FEATURE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(color) -> bytes:
    buf = io.BytesIO()
    _image(color).save(buf, format="PNG")
    return buf.getvalue()


def _rows(n: int):
    names = [list(COLORS)[i % len(COLORS)] for i in range(n)]
    return names, [{"bytes": _png(COLORS[c]), "path": None} for c in names], [f"a {c} tile number {i}" for i, c in enumerate(names)]


def make_parquet(path, n: int = 12, row_group_size: int = 5):
    names, images, texts = _rows(n)
    table = pa.table({"image": pa.array(images, IMAGE_FEATURE), "text": texts})
    pq.write_table(table, path, row_group_size=row_group_size)  # several row groups: read one at a time
    return names, texts


def make_save_to_disk(root, n: int = 12):
    """The layout `datasets.DatasetDict.save_to_disk` writes: dataset_dict.json, a folder per split holding
    Arrow IPC stream files, dataset_info.json (the features) and state.json (the files, in order)."""
    names, images, texts = _rows(n)
    split = root / "train"
    split.mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    table = pa.table({"image": pa.array(images, IMAGE_FEATURE), "text": texts})
    files = []
    for k, (start, stop) in enumerate([(0, n // 2), (n // 2, n)]):
        name = f"data-{k:05d}-of-00002.arrow"
        with pa.OSFile(str(split / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(start, stop - start))
        files.append({"filename": name})
    (split / "state.json").write_text(json.dumps({"_data_files": files, "_split": "train"}))
    (split / "dataset_info.json").write_text(json.dumps({"features": {"image": {"_type": "Image"},
                                                                     "text": {"dtype": "string", "_type": "Value"}}}))
    return names, texts


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_a_table_reads_every_row_with_its_caption_and_image(tmp_path, layout):
    if layout == "parquet":
        path = tmp_path / "train.parquet"
        names, texts = make_parquet(path)
    else:
        path = tmp_path / "hf"
        names, texts = make_save_to_disk(path)
    data = build_dataset(parse_data_config({"type": "parquet", "path": str(path), "resolution": 16}))
    assert isinstance(data, Epochs) and len(data.source) == 12
    assert sorted(data.captions(100)) == sorted(texts)
    seen = {}
    for i in range(12):  # one epoch: every row once, each image the color its caption names
        sample = data[i]
        assert sample["pixel_values"].shape == (3, 16, 16)
        pixels = ((sample["pixel_values"] + 1) * 127.5).reshape(3, -1)
        mean = pixels[:, pixels.min(0).values < 200].mean(1)  # the tile's color: its pixels that are not the white ground
        nearest = min(COLORS, key=lambda c: float(((mean - torch.tensor(COLORS[c], dtype=torch.float32)) ** 2).sum()))
        assert sample["text"].split()[1] == nearest, sample["text"]
        seen[sample["text"]] = seen.get(sample["text"], 0) + 1
    assert sorted(seen) == sorted(texts) and set(seen.values()) == {1}


def test_a_table_refuses_what_it_cannot_read_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="needs 'path'"):
        parse_data_config({"type": "parquet"})
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"picture": [b"x"], "text": ["a caption"]}), path)
    with pytest.raises(ValueError, match="no 'image' column .* data.image_column"):
        build_dataset(parse_data_config({"type": "parquet", "path": str(path)}))
    data = build_dataset(parse_data_config({"type": "parquet", "path": str(path), "image_column": "picture"}))
    with pytest.raises(ValueError, match="not a readable image"):
        data[0]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        build_dataset(parse_data_config({"type": "parquet", "path": str(tmp_path / "bad.parquet")}))
    make_save_to_disk(tmp_path / "hf")
    with pytest.raises(ValueError, match="splits train, not 'test'"):
        build_dataset(parse_data_config({"type": "parquet", "path": str(tmp_path / "hf"), "split": "test"}))


def test_train_data_takes_a_save_to_disk_folder_and_a_parquet_file(tmp_path):
    make_save_to_disk(tmp_path / "hf")
    out = tmp_path / "run"
    rc, stdout, stderr = run_cli("train", "--data", tmp_path / "hf", "--family", "gan", "--minutes", "0.05",
                                 "--resolution", "16", "--out", out)
    assert rc == 0, stderr[-3000:]
    recipe = json.loads((out / "pipeline.json").read_text())
    assert recipe["generator"]["data"]["type"] == "parquet"
    assert "bpe" in recipe["tokenizer"]  # learnt from the table's captions
    rc, _, stderr = run_cli("generate", "a red tile", "--model", out, "--out", tmp_path / "gen")
    assert rc == 0, stderr[-3000:]
    assert Image.open(tmp_path / "gen" / "000000.png").size == (16, 16)
    make_parquet(tmp_path / "t.parquet")
    from trilemma.cli import data_spec

    assert data_spec(str(tmp_path / "t.parquet")) == {"type": "parquet", "path": str(tmp_path / "t.parquet")}


def test_a_hub_snapshot_reads_only_its_split(tmp_path):
    # The Hub's layout: data/{split}-00000-of-00001.parquet. The test rows must never reach training.
    (tmp_path / "hub" / "data").mkdir(parents=True)
    _, train_texts = make_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", n=6)
    names, images, _ = _rows(3)
    pq.write_table(pa.table({"image": pa.array(images, IMAGE_FEATURE), "text": [f"held out {i}" for i in range(3)]}),
                   tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    train = build_dataset(parse_data_config({"type": "parquet", "path": str(tmp_path / "hub")}))
    assert sorted(train.captions(100)) == sorted(train_texts)
    test = build_dataset(parse_data_config({"type": "parquet", "path": str(tmp_path / "hub"), "split": "test"}))
    assert sorted(test.captions(100)) == [f"held out {i}" for i in range(3)]
    with pytest.raises(ValueError, match="splits test, train, not 'validation'"):
        build_dataset(parse_data_config({"type": "parquet", "path": str(tmp_path / "hub"), "split": "validation"}))
    from trilemma.cli import data_spec

    assert data_spec(str(tmp_path / "hub"))["type"] == "parquet"  # found below data/, as the table finds it
