"""`--format captions`: LLaVA-Pretrain, COCO captions, Karpathy split and generic JSONL/CSV
fixtures round-trip (image pixels, caption text, meta); bad rows are counted with their place."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from build_helpers import build, read_back, write_image
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.data.decoders import DecodedSample
from mmpretrain.errors import UserError


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def skipped(index: dict[str, Any]) -> dict[str, str]:
    """``{where: reason}`` of the skip examples in index.json."""
    out = {}
    for message in index["build"]["examples"]:
        where = message.split(": ", 1)[0]
        out[where] = message.rsplit("(skipped; ", 1)[1].rstrip(")")
    return out


def assert_image(sample: DecodedSample, written: bytes) -> None:
    image = sample.segments[0]
    assert image.kind == "image" and image.image is not None
    assert np.array_equal(np.asarray(image.image), pixels(written))


def texts(sample: DecodedSample) -> list[str]:
    """The captions; every caption after the first starts with the newline that separates it."""
    segments = sample.segments[1:]
    assert all(s.kind == "text" and s.loss and s.text for s in segments)
    assert all((s.text or "").startswith("\n") for s in segments[1:])
    return [(s.text or "").removeprefix("\n") for s in segments]


def test_llava_pretrain_fixture_round_trip(tmp_path: Path, fixtures_dir: Path) -> None:
    source = shutil.copy(fixtures_dir / "llava_pretrain.json", tmp_path)
    items = json.loads(Path(source).read_text())
    written = [
        write_image(tmp_path / "images" / it["image"], (40 + i, 30), seed=i) for i, it in enumerate(items)
    ]
    index = build("captions", tmp_path, input=Path(source), images_dir=tmp_path / "images")
    samples = read_back(tmp_path / "out")
    assert index["samples"] == len(items) == len(samples) == 2 and index["build"]["skipped"] == 0
    for sample, item, data in zip(samples, items, written, strict=True):
        assert sample.key == f"llava-pretrain/{item['id']}" and sample.source == "llava-pretrain"
        assert sample.meta["id"] == item["id"]
        assert_image(sample, data)
        assert texts(sample) == [item["conversations"][1]["value"]]  # the prompt is dropped


def test_llava_pretrain_bad_items_and_missing_images_are_counted(tmp_path: Path, fixtures_dir: Path) -> None:
    items = json.loads((fixtures_dir / "llava_pretrain.json").read_text())
    write_image(tmp_path / items[0]["image"])  # items[1]'s image is missing
    turns = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": 7}]
    items += [{"id": "x1", "image": "a.jpg", "conversations": turns}, 42, {"id": "x2", "conversations": []}]
    source = tmp_path / "llava.json"
    source.write_text(json.dumps(items))
    index = build("captions", tmp_path, input=source)
    assert index["samples"] == 1 and index["build"]["records"] == 5
    assert skipped(index) == {
        "llava.json:[1]": "missing_image",
        "llava.json:[2]": "bad_caption",
        "llava.json:[3]": "bad_record",
        "llava.json:[4]": "bad_caption",
    }


def coco_images(tmp_path: Path, data: dict[str, Any]) -> dict[Any, bytes]:
    return {
        image["id"]: write_image(tmp_path / "images" / image["file_name"], (50, 40 + n), seed=n)
        for n, image in enumerate(data["images"])
    }


def test_coco_captions_fixture_groups_captions_per_image(tmp_path: Path, fixtures_dir: Path) -> None:
    source = Path(shutil.copy(fixtures_dir / "coco_captions.json", tmp_path))
    data = json.loads(source.read_text())
    written = coco_images(tmp_path, data)
    index = build("captions", tmp_path, input=source, images_dir=tmp_path / "images")
    samples = read_back(tmp_path / "out")
    assert index["samples"] == len(data["images"]) == len(samples) == 2 and index["build"]["skipped"] == 0
    for sample, image in zip(samples, data["images"], strict=True):
        expected = [a["caption"] for a in data["annotations"] if a["image_id"] == image["id"]]
        assert texts(sample) == expected and len(sample.segments) == 1 + len(expected)
        assert_image(sample, written[image["id"]])
        assert sample.key == f"coco/{image['id']}" and sample.source == "coco-captions"
        assert sample.meta["image_id"] == image["id"] and sample.meta["file_name"] == image["file_name"]
    assert index["images"] == 2 and index["shards"][0]["images"] == 2


def test_coco_bad_annotations_and_missing_images_are_counted(tmp_path: Path, fixtures_dir: Path) -> None:
    data = json.loads((fixtures_dir / "coco_captions.json").read_text())
    coco_images(tmp_path, data)
    data["images"].append({"id": 5, "file_name": "gone.jpg", "height": 1, "width": 1})
    data["annotations"] += [
        {"image_id": 999, "id": 1, "caption": "an image nobody listed"},
        {"image_id": 37777, "id": 2, "caption": "   "},
        {"image_id": 37777, "id": 3, "caption": ["not", "a", "string"]},
        {"image_id": 5, "id": 4, "caption": "a caption of a missing file"},
    ]
    source = tmp_path / "captions_train2017.json"
    source.write_text(json.dumps(data))
    index = build("captions", tmp_path, input=source, images_dir=tmp_path / "images")
    assert index["samples"] == 2
    assert skipped(index) == {
        "captions_train2017.json:annotations[3]": "unknown_image",
        "captions_train2017.json:annotations[4]": "bad_caption",
        "captions_train2017.json:annotations[5]": "bad_caption",
        "captions_train2017.json:image 5": "missing_image",
    }
    assert [texts(s) for s in read_back(tmp_path / "out")][1] == [data["annotations"][2]["caption"]]


def test_karpathy_split_fixture_and_split_filter(tmp_path: Path, fixtures_dir: Path) -> None:
    source = Path(shutil.copy(fixtures_dir / "coco_karpathy.json", tmp_path))
    images = json.loads(source.read_text())["images"]
    written = [
        write_image(tmp_path / "coco" / im["filepath"] / im["filename"], seed=n)
        for n, im in enumerate(images)
    ]
    index = build("captions", tmp_path, input=source, images_dir=tmp_path / "coco")
    samples = read_back(tmp_path / "out")
    assert index["samples"] == len(images) == 2
    for sample, image, data in zip(samples, images, written, strict=True):
        assert texts(sample) == [s["raw"] for s in image["sentences"]]
        assert_image(sample, data)
        assert sample.meta["split"] == image["split"] and sample.meta["cocoid"] == image["cocoid"]
        assert sample.key == f"coco-karpathy/{image['cocoid']}" and sample.source == "coco-karpathy"
    train = build(
        "captions", tmp_path, input=source, images_dir=tmp_path / "coco", splits=("train", "restval")
    )
    assert train["samples"] == 1 and train["build"]["skipped"] == 0
    assert [s.meta["split"] for s in read_back(tmp_path / "out")] == ["train"]
    with pytest.raises(UserError, match="not a split of"):
        build("captions", tmp_path, input=source, images_dir=tmp_path / "coco", splits=("trian",))


def test_generic_jsonl_with_aliases_and_bad_lines(tmp_path: Path) -> None:
    a = write_image(tmp_path / "img" / "a.jpg", seed=1)
    b = write_image(tmp_path / "img" / "b.png", (30, 20), seed=2, fmt="PNG")
    lines = [
        json.dumps({"image": "img/a.jpg", "caption": "a noisy square"}),
        json.dumps({"url": "img/b.png", "text": "another noisy picture"}),
        "{broken json",
        json.dumps({"image": "img/a.jpg"}),
        json.dumps({"image": "img/a.jpg", "caption": 3}),
        "",
        json.dumps({"image": "img/none.jpg", "caption": "its file is missing"}),
        json.dumps({"image": "https://example.com/x.jpg", "caption": "remote"}),
        json.dumps(["not", "an", "object"]),
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    index = build("captions", tmp_path, input=source)
    samples = read_back(tmp_path / "out")
    assert [texts(s) for s in samples] == [["a noisy square"], ["another noisy picture"]]
    assert_image(samples[0], a)
    assert_image(samples[1], b)
    assert [s.key for s in samples] == ["captions/pairs-000000001", "captions/pairs-000000002"]
    assert skipped(index) == {
        "pairs.jsonl:3": "bad_json",
        "pairs.jsonl:4": "bad_caption",
        "pairs.jsonl:5": "bad_caption",
        "pairs.jsonl:7": "missing_image",
        "pairs.jsonl:8": "bad_image_path",
        "pairs.jsonl:9": "bad_record",
    }


def test_generic_csv_counts_lines_of_multiline_rows(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.jpg", seed=3)
    rows = [
        "image,caption",
        'a.jpg,"a caption, with a comma"',
        'a.jpg,"two',
        'lines"',
        "a.jpg,",
        "missing.jpg,a caption of nothing",
        "a.jpg,too,many",
    ]
    source = tmp_path / "pairs.csv"
    source.write_text("\n".join(rows) + "\n")
    index = build("captions", tmp_path, input=source, dedup_media=False)
    samples = read_back(tmp_path / "out")
    assert [texts(s) for s in samples] == [["a caption, with a comma"], ["two\nlines"]]
    assert_image(samples[1], a)
    assert skipped(index) == {
        "pairs.csv:5": "bad_caption",
        "pairs.csv:6": "missing_image",
        "pairs.csv:7": "bad_record",
    }


def test_cli_builds_karpathy_train_and_rejects_bad_input(tmp_path: Path, fixtures_dir: Path, capsys) -> None:
    source = fixtures_dir / "coco_karpathy.json"
    for image in json.loads(source.read_text())["images"]:
        write_image(tmp_path / "coco" / image["filepath"] / image["filename"])
    common = ["data", "build", "--format", "captions", "--images-dir", str(tmp_path / "coco")]
    argv = [*common, "--input", str(source), "--split", "train", "--split", "restval"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "built 1 samples" in capsys.readouterr().out
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"something": "else"}))
    for bad in (["--input", str(other)], ["--input", str(source), "--split", "trian"]):
        assert main([*common, *bad, "--out", str(tmp_path / "b"), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("not a captions layout" in err or "trian" in err)
