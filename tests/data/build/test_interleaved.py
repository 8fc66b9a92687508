"""`--format interleaved`: MMC4 and OBELICS documents -> interleaved shards, read back equal."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from build_helpers import build, read_back, write_image
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.data.build.interleaved import IMAGES_BEFORE_CHECK
from mmpretrain.data.decoders import DecodedSample
from mmpretrain.errors import DataFormatError, UserError

MMC4_IMAGES = ("3f2a9c1d0b7e.jpg", "8c1e44a0f3d2.jpg", "d41d8cd98f00.jpg")
# Where each OBELICS image lies under --images-dir: by URL basename, and by URL path.
OBELICS_IMAGES = ("harbour.jpg", "img/boats.jpg", "bread.jpg")

GARDEN = [
    "We planted tomatoes along the south fence this spring.",
    "By July the vines were taller than the fence itself.",
    "A neighbour's cat liked to sleep in the shade of the leaves.",
    "The first ripe tomato arrived in early August.",
]
BIKE = [
    "Fixing a flat tyre takes ten minutes with the right tools.",
    "First remove the wheel and let out the remaining air.",
]
HARBOUR = [
    "The old harbour was rebuilt after the storm of 1987.",
    "Fishing boats still leave before dawn every day.",
    "Visitors can take a ferry to the lighthouse in summer.",
]
BREAD = "Our sourdough starter is now three years old."


def _images(root: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Small JPEGs (kept byte-for-byte by the build) under ``root``, distinct per name."""
    paths = {}
    for seed, name in enumerate(names):
        write_image(root / name, size=(40 + 8 * seed, 30 + 4 * seed), seed=seed)
        paths[name] = root / name
    return paths


def _layout(sample: DecodedSample) -> list[str]:
    """The sample as a list: text segments' text, ``IMG`` for images."""
    return [seg.text or "" if seg.kind == "text" else "IMG" for seg in sample.segments]


def _assert_pixels(sample: DecodedSample, files: list[Path]) -> None:
    images = [seg.image for seg in sample.segments if seg.kind == "image"]
    assert len(images) == len(files)
    for image, path in zip(images, files, strict=True):
        assert image is not None
        expected = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(np.asarray(image), expected)


def _mmc4_copy(tmp_path: Path, fixtures_dir: Path) -> tuple[Path, dict[str, Path]]:
    docs = tmp_path / "mmc4_docs.jsonl"
    shutil.copy(fixtures_dir / "mmc4_docs.jsonl", docs)
    return docs, _images(tmp_path / "images", MMC4_IMAGES)


def _check_mmc4(out: Path, images: dict[str, Path]) -> None:
    garden, bike = read_back(out)
    # Each image comes right before the sentence of its matched_text_index.
    assert _layout(garden) == [GARDEN[0], "IMG", GARDEN[1], "IMG", " ".join(GARDEN[2:])]
    assert _layout(bike) == ["IMG", " ".join(BIKE)]
    _assert_pixels(garden, [images[MMC4_IMAGES[0]], images[MMC4_IMAGES[1]]])
    _assert_pixels(bike, [images[MMC4_IMAGES[2]]])
    assert (garden.source, garden.key) == ("mmc4", "mmc4/000000000")
    assert garden.meta["url"] == "https://example.com/garden-notes"
    assert bike.meta["could_have_url_duplicate"] == 1
    assert garden.meta["missing_images"] == 0
    assert garden.segments[1].meta["url"] == "https://example.com/img/tomato-vines.jpg"


@pytest.mark.parametrize("packing", ["jsonl", "jsonl.gz", "zip"])
def test_mmc4_round_trip(tmp_path: Path, fixtures_dir: Path, packing: str) -> None:
    docs, images = _mmc4_copy(tmp_path, fixtures_dir)
    lines = docs.read_bytes().splitlines(keepends=True)
    if packing == "jsonl.gz":
        docs = tmp_path / "docs.jsonl.gz"
        docs.write_bytes(gzip.compress(b"".join(lines)))
    elif packing == "zip":
        # As released (docs_shard_N_v2.jsonl.zip); members are read in name order.
        docs = tmp_path / "docs_shard_0_v2.jsonl.zip"
        with zipfile.ZipFile(docs, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("b.jsonl", lines[1] + b"{broken\n")
            archive.writestr("a.jsonl", lines[0])
            archive.writestr("README.txt", "not a shard")
    index = build("interleaved", tmp_path, input=docs, images_dir=tmp_path / "images")
    _check_mmc4(tmp_path / "out", images)
    assert (index["samples"], index["images"]) == (2, 3)
    if packing == "zip":
        assert index["build"]["errors_by_reason"] == {"invalid_json": 1}
        assert f"{docs}/b.jsonl:2: invalid JSON" in index["build"]["examples"][0]
    else:
        assert index["build"]["skipped"] == 0


def test_mmc4_min_sim_drops_low_similarity_images(tmp_path: Path, fixtures_dir: Path) -> None:
    docs, images = _mmc4_copy(tmp_path, fixtures_dir)
    index = build("interleaved", tmp_path, input=docs, images_dir=tmp_path / "images", min_sim=0.3)
    garden, bike = read_back(tmp_path / "out")
    assert _layout(garden) == [" ".join(GARDEN[:2]), "IMG", " ".join(GARDEN[2:])]
    _assert_pixels(garden, [images[MMC4_IMAGES[1]]])  # matched_sim 0.3117; 0.2931 dropped
    assert _layout(bike) == [" ".join(BIKE)]  # its only image (0.2788) is dropped, the text stays
    assert [garden.meta["low_sim_images"], bike.meta["low_sim_images"]] == [1, 1]
    assert index["images"] == 1 and index["build"]["skipped"] == 0


def _obelics_copy(tmp_path: Path, fixtures_dir: Path) -> tuple[Path, dict[str, Path]]:
    docs = tmp_path / "obelics_docs.jsonl"
    shutil.copy(fixtures_dir / "obelics_docs.jsonl", docs)
    return docs, _images(tmp_path / "images", OBELICS_IMAGES)


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as a Parquet file with OBELICS' column types (row groups of 2 rows)."""
    schema = pa.schema(
        [
            ("images", pa.list_(pa.string())),
            ("texts", pa.list_(pa.string())),
            ("metadata", pa.string()),
            ("general_metadata", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=2)


def test_obelics_jsonl_and_parquet_round_trip(tmp_path: Path, fixtures_dir: Path) -> None:
    docs, images = _obelics_copy(tmp_path, fixtures_dir)
    index = build("interleaved", tmp_path / "j", input=docs, images_dir=tmp_path / "images")
    from_jsonl = read_back(tmp_path / "j" / "out")
    harbour, bread = from_jsonl
    assert _layout(harbour) == ["IMG", "\n\n".join(HARBOUR[:2]), "IMG", HARBOUR[2]]
    assert _layout(bread) == [BREAD, "IMG"]
    _assert_pixels(harbour, [images["harbour.jpg"], images["img/boats.jpg"]])
    _assert_pixels(bread, [images["bread.jpg"]])
    assert (harbour.source, harbour.meta["url"]) == ("obelics", "https://example.com/harbour")
    assert harbour.segments[0].meta["alt_text"] == "The harbour at sunrise"
    assert "alt_text" not in harbour.segments[2].meta  # empty alt text is not kept
    assert (index["samples"], index["images"], index["build"]["skipped"]) == (2, 3, 0)

    rows = [json.loads(line) for line in docs.read_text().splitlines()]
    rows.insert(1, {**rows[0], "texts": rows[0]["texts"][:-1]})  # row 1: lengths differ
    parquet = tmp_path / "obelics.parquet"
    _write_parquet(rows, parquet)
    index = build("interleaved", tmp_path / "p", input=parquet, images_dir=tmp_path / "images")
    from_parquet = read_back(tmp_path / "p" / "out")
    assert [(s.key, _layout(s), s.meta["url"]) for s in from_parquet] == [
        (s.key, _layout(s), s.meta["url"]) for s in from_jsonl
    ]
    for a, b in zip(from_parquet, from_jsonl, strict=True):
        pairs = [(x.image, y.image) for x, y in zip(a.segments, b.segments, strict=True) if x.image]
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)
    assert index["build"]["errors_by_reason"] == {"malformed_row": 1}
    assert f"{parquet}:row 1: images has 5 entries but texts has 4" in index["build"]["examples"][0]


def test_layout_detected_per_file_and_overridden(tmp_path: Path, fixtures_dir: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(fixtures_dir / "mmc4_docs.jsonl", docs / "a.jsonl")
    shutil.copy(fixtures_dir / "obelics_docs.jsonl", docs / "b.jsonl")
    _images(tmp_path / "images", MMC4_IMAGES + OBELICS_IMAGES)
    build("interleaved", tmp_path, input=docs, images_dir=tmp_path / "images")
    samples = read_back(tmp_path / "out")
    assert [s.source for s in samples] == ["mmc4", "mmc4", "obelics", "obelics"]
    assert [s.key for s in samples][1:3] == ["mmc4/000000001", "obelics/000000002"]

    forced = build("interleaved", tmp_path, input=docs / "a.jsonl", layout="obelics")
    assert forced["samples"] == 0
    assert forced["build"]["errors_by_reason"] == {"missing_field": 2}
    assert "a.jsonl:1: no field 'images'" in forced["build"]["examples"][0]
    with pytest.raises(UserError, match="--layout 'llava'"):
        build("interleaved", tmp_path, input=docs, layout="llava")


def test_unknown_layout_is_one_line_naming_the_fields(tmp_path: Path, capsys) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("{broken\n" + json.dumps({"caption": "x", "image": "a.jpg"}) + "\n")
    with pytest.raises(
        DataFormatError, match=r"docs.jsonl:2: unknown interleaved layout \(fields: caption, image\)"
    ):
        build("interleaved", tmp_path, input=docs)
    argv = ["data", "build", "--format", "interleaved", "--input", str(docs), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fields: caption, image" in err and err.count("\n") == 1
    other = tmp_path / "docs.json"
    other.write_text("[]")
    with pytest.raises(DataFormatError, match=r"expected \.jsonl, \.jsonl\.gz, \.zip"):
        build("interleaved", tmp_path, input=other)


MALFORMED_MMC4 = [
    ("{not json", "invalid_json", "invalid JSON"),
    ("[1, 2]", "malformed_row", "expected a JSON object, got list"),
    (
        json.dumps({"text_list": ["a", 3], "image_info": []}),
        "malformed_row",
        "text_list must be a list of strings",
    ),
    (
        json.dumps({"text_list": ["a"], "image_info": {"x": 1}}),
        "malformed_row",
        "image_info is dict, not a list",
    ),
    (
        json.dumps({"text_list": ["a"], "image_info": [{"image_name": "x.jpg", "matched_text_index": 1}]}),
        "malformed_row",
        "matched_text_index 1 is out of range for 1 sentences",
    ),
    (json.dumps({"text_list": ["a"]}), "missing_field", "no field 'image_info'"),
]
MALFORMED_OBELICS = [
    (
        json.dumps({"images": [None], "texts": [None]}),
        "malformed_row",
        "position 0: images and texts are both null",
    ),
    (
        json.dumps({"images": ["u", None], "texts": ["t", "s"]}),
        "malformed_row",
        "position 0: images and texts are both set",
    ),
    (
        json.dumps({"images": [None], "texts": ["t"], "metadata": "[nul"}),
        "malformed_row",
        "metadata is not valid JSON",
    ),
    (json.dumps({"images": [None], "texts": [5]}), "malformed_row", "texts[0] is int, not a string"),
]


@pytest.mark.parametrize(
    ("fixture", "bad"), [("mmc4_docs.jsonl", MALFORMED_MMC4), ("obelics_docs.jsonl", MALFORMED_OBELICS)]
)
def test_malformed_rows_are_counted_with_file_and_line(
    tmp_path: Path, fixtures_dir: Path, fixture: str, bad: list[tuple[str, str, str]]
) -> None:
    good = (fixtures_dir / fixture).read_text().splitlines()
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join([good[0], "", *(line for line, _, _ in bad), good[1]]) + "\n")
    index = build("interleaved", tmp_path, input=docs)
    stats = index["build"]
    assert (index["samples"], stats["records"], stats["skipped"]) == (2, len(bad) + 2, len(bad))
    expected: dict[str, int] = {}
    for _, reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert stats["errors_by_reason"] == expected
    for number, (example, (_, reason, detail)) in enumerate(zip(stats["examples"], bad, strict=True), 3):
        assert example.startswith(f"{docs}:{number}: ") and detail in example and reason in example
    assert [s.meta["origin"] for s in read_back(tmp_path / "out")] == [f"{docs}:1", f"{docs}:{len(bad) + 3}"]


def test_missing_images_are_dropped_and_counted(tmp_path: Path, fixtures_dir: Path) -> None:
    docs, images = _mmc4_copy(tmp_path, fixtures_dir)
    images[MMC4_IMAGES[0]].unlink()
    images[MMC4_IMAGES[2]].unlink()
    with docs.open("a") as stream:  # no text, and its only image is missing
        row = {"text_list": [" "], "image_info": [{"image_name": "gone.jpg", "matched_text_index": 0}]}
        stream.write(json.dumps(row) + "\n")
    index = build("interleaved", tmp_path, input=docs, images_dir=tmp_path / "images")
    garden, bike = read_back(tmp_path / "out")
    assert _layout(garden) == [" ".join(GARDEN[:2]), "IMG", " ".join(GARDEN[2:])]
    _assert_pixels(garden, [images[MMC4_IMAGES[1]]])
    assert _layout(bike) == [" ".join(BIKE)]  # every image missing: the text is kept
    assert [garden.meta["missing_images"], bike.meta["missing_images"]] == [1, 1]
    assert index["build"]["media_dropped_from_kept_documents"] == {"missing_images": 2, "low_sim_images": 0}
    assert index["build"]["errors_by_reason"] == {"missing_image": 1}
    assert index["build"]["examples"][0].startswith(
        f"{docs}:3: none of the document's 1 image file(s) exists"
    )


def test_no_image_found_at_all_asks_for_images_dir(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    rows = [
        {"images": [f"https://example.com/{n}.jpg", None], "texts": [None, f"text {n}"]} for n in range(60)
    ]
    docs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(
        DataFormatError, match=f"none of the first {IMAGES_BEFORE_CHECK} images .* pass --images-dir"
    ):
        build("interleaved", tmp_path, input=docs)


def test_cli_build_prints_the_summary(tmp_path: Path, fixtures_dir: Path, capsys) -> None:
    docs, _ = _mmc4_copy(tmp_path, fixtures_dir)
    out = tmp_path / "shards"
    argv = ["data", "build", "--format", "interleaved", "--input", str(docs), "--out", str(out)]
    argv += ["--images-dir", str(tmp_path / "images"), "--min-sim", "0.28"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "built 2 samples in 1 shards" in printed and "2 images" in printed
    assert json.loads((out / "index.json").read_text())["build"]["options"]["min_sim"] == 0.28
