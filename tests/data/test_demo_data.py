"""The demo dataset: true captions and answers, real speech, reproducible shards, the CLI."""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.data import demo_data as demo
from mmpretrain.data import demo_scenes as scene_module
from mmpretrain.data import demo_speech as speech
from mmpretrain.data import validate_sample_json
from mmpretrain.data.demo_data import SAMPLE_KINDS, build_demo_dataset
from mmpretrain.data.demo_scenes import (
    COLOURS,
    SHAPE_KINDS,
    Scene,
    caption,
    count_sentence,
    counting_qa,
    random_scene,
    render_scene,
)
from mmpretrain.data.demo_speech import (
    speak,
)
from mmpretrain.data.shard_io import iter_shard_samples
from mmpretrain.data.skips import SkipCounter
from mmpretrain.errors import UserError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
# Where a position phrase is true, as a test on the grid cell (row, col).
PLACES = {
    "in the top left corner": lambda r, c: (r, c) == (0, 0),
    "in the top right corner": lambda r, c: (r, c) == (0, 2),
    "in the bottom left corner": lambda r, c: (r, c) == (2, 0),
    "in the bottom right corner": lambda r, c: (r, c) == (2, 2),
    "at the top": lambda r, c: r == 0,
    "at the bottom": lambda r, c: r == 2,
    "on the left": lambda r, c: c == 0,
    "on the right": lambda r, c: c == 2,
    "in the center": lambda r, c: (r, c) == (1, 1),
}
PHRASE = re.compile(
    rf"\b({'|'.join(NUMBERS)}) (?:(small|large) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPE_KINDS)})(s?)\b"
    rf"(?: ({'|'.join(PLACES)}))?"
)


def scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def test_captions_are_true_for_their_scene() -> None:
    for scene in scenes(500):
        text = caption(scene)
        assert text[0].isupper() and text.endswith(".")
        mentioned = PHRASE.findall(text[0].lower() + text[1:])
        assert sum(NUMBERS[m[0]] for m in mentioned) == len(scene.shapes), text
        groups = {(m[3], m[2]) for m in mentioned}
        assert len(groups) == len(mentioned), f"a (kind, colour) named twice: {text}"
        for number, size, colour, kind, plural, place in mentioned:
            shapes = [s for s in scene.shapes if (s.kind, s.colour) == (kind, colour)]
            assert len(shapes) == NUMBERS[number], text
            assert (plural == "s") == (len(shapes) > 1), text
            if size:
                assert all(s.size == size for s in shapes), text
            if place:
                assert all(PLACES[place](s.row, s.col) for s in shapes), text
            if len(shapes) == 1:
                assert size and place, f"a single shape gets its size and position: {text}"


def test_count_sentence_is_true() -> None:
    for scene in scenes(200, seed=1):
        text = count_sentence(scene)
        total = len(scene.shapes)
        assert (f"{scene_module.NUMBER_WORDS[total]} shape" in text) or total == 1
        for kind in SHAPE_KINDS:
            n = scene.count(kind=kind)
            assert (re.search(rf"\b{kind}", text) is not None) == (n > 0), text


def test_counting_answers_are_the_counts() -> None:
    rng = random.Random(2)
    answers = Counter()
    for scene in scenes(400, seed=2):
        question, answer = counting_qa(scene, rng)
        assert answer.isdigit(), "answers are digits"
        if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
            expected = sum(1 for s in scene.shapes if s.colour == m[1])
        else:
            m = re.fullmatch(r"How many (\w+)s are there\?", question)
            assert m and m[1] in SHAPE_KINDS, question
            expected = sum(1 for s in scene.shapes if s.kind == m[1])
        assert int(answer) == expected, (question, scene)
        answers[answer] += 1
    assert answers["0"] > 0 and len(answers) >= 4  # absent kinds and several counts occur
    question, answer = counting_qa(scenes(1)[0])  # without rng: the first shape's kind
    assert answer != "0" and question.startswith("How many ")


def test_rendered_images_show_the_shapes() -> None:
    for scene in scenes(50, seed=3):
        image = render_scene(scene)
        assert image.mode == "RGB" and image.size == (64, 64)
        pixels = np.asarray(image).astype(int)
        assert pixels.std() > 5, "image is blank"
        cell = 64 / 3
        used = set()
        for s in scene.shapes:
            x, y = int((s.col + 0.5 + s.dx) * cell), int((s.row + 0.5 + s.dy) * cell)
            assert np.abs(pixels[y, x] - COLOURS[s.colour]).max() <= 30, (s, pixels[y, x])
            used.add((s.row, s.col))
        for row in range(3):
            for col in range(3):
                if (row, col) not in used:
                    x, y = int((col + 0.5) * cell), int((row + 0.5) * cell)
                    assert tuple(pixels[y, x]) == scene_module.BACKGROUND
    scene = scenes(1, seed=4)[0]
    assert scene_module.png_bytes(render_scene(scene)) == scene_module.png_bytes(render_scene(scene))
    assert Image.open(io.BytesIO(scene_module.png_bytes(render_scene(scene)))).size == (64, 64)


@needs_espeak
def test_speak_gives_16khz_mono_flac_of_plausible_length() -> None:
    flac = speak("Two red circles and a small blue square on the left.")
    audio, rate = soundfile.read(io.BytesIO(flac), dtype="float32")
    info = soundfile.info(io.BytesIO(flac))
    assert (info.format, rate, audio.ndim) == ("FLAC", 16000, 1)
    assert 0.3 <= len(audio) / rate <= 10
    assert np.sqrt(np.mean(audio**2)) > 0.01, "speech is silent"
    short, _ = soundfile.read(io.BytesIO(speak("Hi.")))
    assert len(short) < len(audio)
    assert speak("A star.") == speak("A star."), "espeak-ng output is deterministic"


def test_speak_without_espeak_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"install espeak-ng \(make setup does it as root"):
        speak("hello")


@pytest.mark.parametrize("scipy", [True, False], ids=["scipy", "numpy"])
def test_resample_keeps_pitch_and_duration(scipy: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not scipy:
        monkeypatch.setitem(sys.modules, "scipy.signal", None)  # import fails: numpy fallback
    t = np.arange(22050) / 22050
    out = speech.resample(np.sin(2 * np.pi * 440 * t), 22050, 16000)
    assert len(out) == 16000
    assert int(np.argmax(np.abs(np.fft.rfft(out)))) == 440  # 1 s: bin index = Hz


def _build(out: Path, samples: int = 24, shards: int = 4, seed: int = 0) -> dict[str, Any]:
    return build_demo_dataset(out, samples=samples, shards=shards, seed=seed, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("demo")
    return out, _build(out)


def _raw_samples(shard: Path) -> dict[str, tuple[dict[str, Any], dict[str, bytes]]]:
    """key -> (KEY.json object, {member: bytes}) read with plain tarfile."""
    out: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            obj, media = out.setdefault(key, ({}, {}))
            if suffix == "json":
                obj.update(json.loads(data))
            else:
                media[suffix] = data
    return out


def test_build_writes_valid_shards_and_a_matching_index(built: tuple[Path, dict[str, Any]]) -> None:
    out, index = built
    shards = sorted(out.glob("shard-*.tar"))
    assert [s.name for s in shards] == [e["path"] for e in index["shards"]] and len(shards) == 4
    assert json.loads((out / "index.json").read_text()) == index
    kinds: Counter[str] = Counter()
    images = audio = 0
    for shard, entry in zip(shards, index["shards"], strict=True):
        skips = SkipCounter(max_skips=0)
        samples = list(iter_shard_samples(shard, skips))
        assert len(samples) == entry["samples"] >= 1 and skips.skipped == 0
        assert entry["bytes"] == shard.stat().st_size
        for key, (obj, media) in _raw_samples(shard).items():
            validate_sample_json(key, obj, members={"json", *media})
        for sample in samples:
            assert sample.source == "demo" and sample.meta["kind"] in SAMPLE_KINDS
            kinds[sample.meta["kind"]] += 1
            for seg in sample.segments:
                if seg.kind == "image":
                    assert seg.member and seg.member.endswith(".png")
                    assert Image.open(io.BytesIO(seg.data or b"")).size == (64, 64)
                elif seg.kind == "audio":
                    assert seg.member and seg.member.endswith(".flac") and seg.text
                    assert soundfile.info(io.BytesIO(seg.data or b"")).samplerate == 16000
            if sample.meta["kind"] == "vqa":
                text = sample.segments[1].text
                assert text == f"Question: {sample.meta['question']} Answer: {sample.meta['answer']}"
            images += sum(seg.kind == "image" for seg in sample.segments)
            audio += sum(seg.kind == "audio" for seg in sample.segments)
    assert set(kinds) == set(SAMPLE_KINDS) and dict(kinds) == index["kinds"]
    assert (sum(kinds.values()), images, audio) == (index["samples"], index["images"], index["audio"])
    assert index["samples"] == 24 and index["audio_seconds"] > 0 and index["text_tokens_est"] > 0
    assert index["build"]["skipped"] == 0 and index["build"]["seed"] == 0


def test_heldout_split_shares_no_scene_with_training(built: tuple[Path, dict[str, Any]]) -> None:
    out, index = built
    heldout = json.loads((out / "heldout" / "index.json").read_text())
    assert heldout["split"] == "heldout" and heldout["samples"] == index["heldout"]["samples"] == 3

    def scene_signatures(directory: Path) -> set[tuple[Any, ...]]:
        found = set()
        for shard in directory.glob("shard-*.tar"):
            for sample in iter_shard_samples(shard, SkipCounter()):
                for seg in sample.segments:
                    if seg.kind == "image":
                        found.add(tuple(sorted(tuple(sorted(s.items())) for s in seg.meta["shapes"])))
        return found

    train, held = scene_signatures(out), scene_signatures(out / "heldout")
    assert train and held and not train & held


@needs_espeak
def test_fewer_samples_than_shards_still_builds(tmp_path: Path) -> None:
    index = _build(tmp_path, samples=3, shards=4)
    assert [e["samples"] for e in index["shards"]] == [1, 1, 1]
    assert len(list(tmp_path.glob("shard-*.tar"))) == 3
    assert index["heldout"]["samples"] == 1


@needs_espeak
def test_same_seed_same_bytes(tmp_path: Path, built: tuple[Path, dict[str, Any]]) -> None:
    first, _ = built
    _build(tmp_path / "again")
    for shard in sorted(first.glob("shard-*.tar")):
        a, b = _raw_samples(shard), _raw_samples(tmp_path / "again" / shard.name)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key][0] == b[key][0], key  # KEY.json
            for member, data in a[key][1].items():
                assert b[key][1][member] == data, f"{key}.{member}"  # png, and flac (espeak is deterministic)
        assert shard.read_bytes() == (tmp_path / "again" / shard.name).read_bytes()
    _build(tmp_path / "other", seed=1)
    assert (first / "shard-000000.tar").read_bytes() != (tmp_path / "other" / "shard-000000.tar").read_bytes()


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--samples"):
        _build(tmp_path, samples=0)
    with pytest.raises(UserError, match="--shards"):
        _build(tmp_path, shards=0)
    with pytest.raises(UserError, match="unknown demo sample kind"):
        build_demo_dataset(tmp_path, samples=4, kinds_mix={"video": 1.0}, progress=False)


def test_kind_schedule_follows_the_mix() -> None:
    schedule = demo.kind_schedule(100, demo.DEFAULT_KINDS_MIX)
    assert Counter(schedule) == {k: round(w * 100) for k, w in demo.DEFAULT_KINDS_MIX.items()}
    assert set(demo.kind_schedule(6, demo.DEFAULT_KINDS_MIX)) == set(SAMPLE_KINDS)


@needs_espeak
def test_cli_builds_and_refuses_a_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "build", "--format", "demo", "--out", str(tmp_path / "d"), "--samples", "12"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "built 12 demo samples in 4 shards" in out and "kinds: caption" in out
    assert main(argv) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*argv[:-1], "5", "--shards", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "d").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert main(["data", "build", "--format", "demo", "--out", str(tmp_path / "e"), "--input", "x"]) == 2
    assert main(["data", "build", "--format", "captions", "--out", str(tmp_path / "f")]) == 2
    assert "--format captions needs --input" in capsys.readouterr().err
