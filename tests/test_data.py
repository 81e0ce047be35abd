"""Your own images: every source the tests build themselves (tiny), read under the batch contract."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trilemma.config import ConfigError
from trilemma.data.sources import DataConfig, Epochs, ImageFolder, WebDatasetStream, build_dataset, parse_data_config
from trilemma.data.training import TrainingInputs, build_training_set
from trilemma.text.tokenizer import UNK_ID, PromptTokenizer, train_caption_tokenizer

COLORS = {"crimson": (200, 20, 40), "teal": (0, 128, 128), "gold": (230, 190, 30), "navy": (20, 30, 110)}


def _image(color, size=(24, 20), mode="RGB") -> Image.Image:
    image = Image.new(mode, size, (255, 255, 255, 0) if mode == "RGBA" else "white")
    image.paste(Image.new(mode, (8, 8), color + ((255,) if mode == "RGBA" else ())), (4, 4))
    return image


def make_metadata_folder(root: Path, n: int = 8) -> Path:
    """HF datasets' imagefolder: images and a metadata.jsonl of {file_name, text}."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = list(COLORS)[i % len(COLORS)]
        _image(COLORS[name]).save(root / f"{i:02d}.png")
        rows.append({"file_name": f"{i:02d}.png", "text": f"a {name} tile number {i}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_shards(root: Path, n_shards: int = 4, per_shard: int = 3) -> str:
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as sink:
            for j in range(per_shard):
                buffer = io.BytesIO()
                _image(list(COLORS.values())[j % 4], size=(20, 20)).save(buffer, format="PNG")
                sample = {"__key__": f"s{s}-{j}", "png": buffer.getvalue()}
                if j % 2:
                    sample["json"] = json.dumps({"caption": f"shard {s} sample {j}"}).encode()
                else:
                    sample["txt"] = f"shard {s} sample {j}".encode()
                sink.write(sample)
    return str(root / f"{{00000..{n_shards - 1:05d}}}.tar")


def test_imagefolder_reads_metadata_jsonl_under_the_batch_contract(tmp_path):
    folder = make_metadata_folder(tmp_path / "f")
    data = ImageFolder(parse_data_config({"type": "imagefolder", "path": str(folder), "resolution": 16}))
    assert len(data) == 8
    item = data[1]
    assert item["pixel_values"].shape == (3, 16, 16) and item["pixel_values"].dtype == torch.float32
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert item["text"] == "a teal tile number 1"


def test_imagefolder_reads_paired_text_files_and_puts_transparency_on_white(tmp_path):
    root = tmp_path / "pairs"
    (root / "sub").mkdir(parents=True)
    _image(COLORS["gold"], mode="RGBA").save(root / "sub" / "a.png")
    (root / "sub" / "a.txt").write_text("a gold tile\na yellow square\n")
    _image(COLORS["navy"]).save(root / "b.jpg")
    (root / "b.txt").write_text("a navy tile")
    _image(COLORS["teal"]).save(root / "no-caption.png")  # no .txt: not a training image
    data = ImageFolder(parse_data_config({"type": "imagefolder", "path": str(root), "resolution": 20}))
    assert len(data) == 2
    assert {data.caption(k) for k in range(2)} == {"a gold tile", "a navy tile"}
    k = [str(f) for f in data.files].index(str(root / "sub" / "a.png"))
    assert data.caption(k, draw=1) == "a yellow square"  # one caption a line, a new one each epoch
    corner = data.image(k)[:, 0, 0]
    assert torch.allclose(corner, torch.ones(3))  # transparent pixels become white, not black


def test_epochs_see_every_image_once_per_epoch_in_a_new_order(tmp_path):
    data = build_dataset(parse_data_config({"type": "imagefolder", "path": str(make_metadata_folder(tmp_path / "f")),
                                            "resolution": 16, "random_flip": True, "center_crop": False}), seed=3)
    assert isinstance(data, Epochs)
    first = [data.source_index(i) for i in range(8)]
    second = [data.source_index(i) for i in range(8, 16)]
    assert sorted(first) == sorted(second) == list(range(8)) and first != second
    # A pure function of the index: a resumed run draws the same crops and flips.
    assert torch.equal(data[5]["pixel_values"], data[5]["pixel_values"])
    flips = [bool(torch.equal(data[i]["pixel_values"], data.source.image(data.source_index(i)).flip(-1))) for i in range(16)]
    assert 0 < sum(flips) < 16


def test_transforms_resize_the_short_side_and_crop_a_square(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    image = Image.new("RGB", (40, 20), "white")
    image.paste(Image.new("RGB", (20, 20), (255, 0, 0)), (0, 0))  # left half red
    image.save(root / "x.png")
    (root / "x.txt").write_text("half red")
    centre = ImageFolder(parse_data_config({"type": "imagefolder", "path": str(root), "resolution": 10}))
    x = centre.image(0)
    assert x.shape == (3, 10, 10)
    assert x[0, 5, 0] > 0.9 and x[1, 5, 0] < -0.9  # the centre crop's left edge is red
    assert x[1, 5, 9] > 0.9  # its right edge is white


def test_bad_folders_get_one_line_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no image folder"):
        ImageFolder(parse_data_config({"type": "imagefolder", "path": str(tmp_path / "none")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="metadata.jsonl"):
        ImageFolder(parse_data_config({"type": "imagefolder", "path": str(tmp_path / "empty")}))
    folder = make_metadata_folder(tmp_path / "f")
    with pytest.raises(ValueError, match="caption_column"):
        ImageFolder(parse_data_config({"type": "imagefolder", "path": str(folder), "caption_column": "caption"}))
    (folder / "03.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="03.png is not a readable image"):  # when the folder is read, not mid-training
        ImageFolder(parse_data_config({"type": "imagefolder", "path": str(folder)}))
    with pytest.raises(ConfigError, match="did you mean 'random_flip'"):
        parse_data_config({"random_flips": True})


def test_webdataset_streams_every_sample_with_txt_or_json_captions(tmp_path):
    urls = make_shards(tmp_path / "shards")
    stream = WebDatasetStream(parse_data_config({"type": "webdataset", "urls": urls, "resolution": 16}), seed=0, rank=0, world=1)
    texts = [s["text"] for s in stream.epoch(0)]
    assert sorted(texts) == sorted(f"shard {s} sample {j}" for s in range(4) for j in range(3))
    sample = next(iter(stream))
    assert sample["pixel_values"].shape == (3, 16, 16)
    # The stream is a pure function of the seed: a resumed run can skip to where it was.
    again = [s["text"] for s in WebDatasetStream(stream.data, seed=0, rank=0, world=1).epoch(0)]
    assert again == texts


def test_processes_read_disjoint_shards_covering_the_data(tmp_path):
    urls = make_shards(tmp_path / "shards")
    data = parse_data_config({"type": "webdataset", "urls": urls, "resolution": 16})
    per_rank = [[s["text"] for s in WebDatasetStream(data, seed=1, rank=r, world=2).epoch(0)] for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(per_rank[0]) + len(per_rank[1]) == 12


SCRIPT = """
import json, sys, torch.distributed as dist
from trilemma.data.sources import WebDatasetStream, parse_data_config
dist.init_process_group("gloo")
stream = WebDatasetStream(parse_data_config({"type": "webdataset", "urls": sys.argv[1], "resolution": 16}), seed=0)
texts = [s["text"] for s in stream.epoch(0)]
open(sys.argv[2] + f"/rank{dist.get_rank()}.json", "w").write(json.dumps(texts))
dist.destroy_process_group()
"""


def test_two_processes_launched_together_read_each_sample_once(tmp_path):
    # Two real processes under torchrun: each learns its rank from torch.distributed, as under accelerate.
    urls = make_shards(tmp_path / "shards")
    script = tmp_path / "read.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                           str(script), urls, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert a and b and not set(a) & set(b) and len(a) + len(b) == 12


def test_caption_tokenizer_round_trips_words_it_never_saw():
    captions = [f"a {c} tile number {i}" for c in COLORS for i in range(20)] + ["grinning face", "red apple"]
    tokenizer = train_caption_tokenizer(captions, vocab_size=300, max_length=40)
    for text in ("a zebra wearing sunglasses", "naïve café 日本", "a crimson tile"):
        ids, mask = tokenizer([text])
        real = ids[0][mask[0].bool()].tolist()
        assert UNK_ID not in real
        assert tokenizer.decode(real) == text.lower()
    rebuilt = PromptTokenizer.from_config(json.loads(json.dumps(tokenizer.to_config())))
    assert torch.equal(rebuilt(["a zebra"])[0], tokenizer(["a zebra"])[0])
    assert len(tokenizer.tokens("a crimson tile")) < len(tokenizer.tokens("a zebra tile"))  # seen words are whole


def test_shapes_source_is_the_default():
    data = build_dataset(DataConfig(resolution=32), seed=0)
    item = data[0]
    assert item["pixel_values"].shape == (3, 32, 32) and "prompt" in item
    assert np.isfinite(item["pixel_values"].numpy()).all()


def test_a_resumed_stream_skips_what_it_read_without_decoding_it(tmp_path):
    data = parse_data_config({"type": "webdataset", "urls": make_shards(tmp_path / "shards"), "resolution": 16})
    stream = WebDatasetStream(data, seed=2, rank=0, world=1)
    whole = stream.stream()
    unbroken = [next(whole) for _ in range(20)]  # past the first epoch's 12 samples
    resumed = stream.stream(skip=7)
    for expected in unbroken[7:]:
        got = next(resumed)
        assert got["text"] == expected["text"] and torch.equal(got["pixel_values"], expected["pixel_values"])


def test_bad_metadata_values_and_broken_shards_get_one_line(tmp_path):
    folder = make_metadata_folder(tmp_path / "f", n=2)
    meta = folder / "metadata.jsonl"
    for row, words in (({"file_name": "00.png", "text": 5}, "must be text"),
                       ({"file_name": 3, "text": "x"}, "must name a file inside"),
                       ({"file_name": "../00.png", "text": "x"}, "must name a file inside")):
        meta.write_text(json.dumps(row) + "\n")
        with pytest.raises(ValueError, match=words):
            ImageFolder(parse_data_config({"type": "imagefolder", "path": str(folder)}))
    (tmp_path / "bad.tar").write_bytes(b"not a tar file" * 100)
    stream = WebDatasetStream(parse_data_config({"type": "webdataset", "urls": str(tmp_path / "bad.tar")}), rank=0, world=1)
    with pytest.raises(ValueError, match="not a readable tar file"):
        next(iter(stream))
    with pytest.raises(ConfigError, match="never cropped or flipped"):
        parse_data_config({"type": "shapes", "random_flip": True})


def test_hard_negatives_are_asked_of_the_source_and_refused_where_it_makes_none(tmp_path):
    folder = parse_data_config({"type": "imagefolder", "path": str(make_metadata_folder(tmp_path / "f"))}, resolution=None)
    with pytest.raises(ValueError, match="makes no hard negative captions"):
        build_training_set(folder, TrainingInputs(64, hard_negatives=True), 0, tmp_path / "run", "cpu")
    # None: where the source makes them; a folder makes none, so none are asked for.
    plain = build_training_set(folder, TrainingInputs(64, hard_negatives=None), 0, tmp_path / "run", "cpu").dataset
    assert "negative_text" not in plain[0]
    shapes = build_training_set(parse_data_config({}, resolution=None), TrainingInputs(32, hard_negatives=None), 0,
                                tmp_path / "run", "cpu").dataset
    sample = shapes[3]
    assert sample["negative_text"] != sample["text"] and sample["negative_text"].strip()
