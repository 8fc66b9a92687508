"""`--format asr`: NeMo manifests and LibriSpeech folders -> audio + transcript samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from build_helpers import build, read_back, write_audio

from mmpretrain.cli import main

RATE = 16000


def _seconds(samples: int, rate: int) -> float:
    return samples / rate


def _check_audio(segment, seconds: float) -> None:
    assert segment.kind == "audio" and segment.sample_rate == RATE
    assert segment.audio is not None
    assert abs(len(segment.audio) / RATE - seconds) <= 2 / RATE  # resampling rounds up one sample


def _manifest(tmp_path: Path, fixtures_dir: Path) -> tuple[Path, list[dict]]:
    manifest = tmp_path / "asr_manifest.jsonl"
    shutil.copy(fixtures_dir / "asr_manifest.jsonl", manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for seed, row in enumerate(rows):
        write_audio(tmp_path / row["audio_filepath"], seconds=row["duration"], rate=22050, seed=seed)
    return manifest, rows


def test_manifest_round_trip(tmp_path: Path, fixtures_dir: Path) -> None:
    manifest, rows = _manifest(tmp_path, fixtures_dir)
    index = build("asr", tmp_path, input=manifest)
    samples = read_back(tmp_path / "out")
    assert index["samples"] == len(rows) == len(samples) == 2 and index["build"]["skipped"] == 0
    for sample, row in zip(samples, rows, strict=True):
        audio, text = sample.segments
        _check_audio(audio, _seconds(int(row["duration"] * 22050), 22050))
        assert audio.text == text.text == row["text"] and text.kind == "text" and text.loss
        assert sample.source == "asr" and sample.meta["duration"] == row["duration"]
    assert [s.meta["origin"] for s in samples] == ["asr_manifest.jsonl:1", "asr_manifest.jsonl:2"]
    assert index["audio"] == 2 and abs(index["audio_seconds"] - sum(r["duration"] for r in rows)) < 0.01


def test_manifest_bad_lines_and_missing_audio_counted_with_line(tmp_path: Path, fixtures_dir: Path) -> None:
    manifest, rows = _manifest(tmp_path, fixtures_dir)
    good = {"audio_filepath": "audio/utt_0001.wav", "duration": 2.41}
    bad = [
        "{not json",
        json.dumps({"audio_filepath": "audio/x.wav", "text": "no duration"}),
        json.dumps({**good, "text": 42}),
        json.dumps({**good, "duration": "long", "text": "bad duration"}),
        json.dumps({"audio_filepath": "audio/missing.wav", "duration": 1.0, "text": "gone"}),
        json.dumps({**good, "text": "a cut", "offset": 3.5}),
        "",
        json.dumps(
            {"audio_filepath": str((tmp_path / "abs.flac").resolve()), "duration": 0.3, "text": "abs"}
        ),
    ]
    write_audio(tmp_path / "abs.flac", seconds=0.3, rate=RATE, seed=9)
    with manifest.open("a") as handle:
        handle.write("\n".join(bad) + "\n")
    index = build("asr", tmp_path, input=manifest)
    reasons = index["build"]["errors_by_reason"]
    assert reasons == {
        "invalid_json": 1,
        "missing_field": 1,
        "bad_text": 1,
        "bad_duration": 1,
        "missing_audio": 1,
        "unsupported_offset": 1,
    }
    examples = "\n".join(index["build"]["examples"])
    for line, reason in [(3, "invalid_json"), (4, "missing_field"), (7, "missing_audio"), (8, "unsupported")]:
        assert f"asr_manifest.jsonl:{line}" in examples and reason in examples
    samples = read_back(tmp_path / "out")
    assert [s.segments[1].text for s in samples] == [r["text"] for r in rows] + ["abs"]
    _check_audio(samples[-1].segments[0], 0.3)  # 16 kHz input: no resampling, exact


def test_json_list_manifest_with_audio_dir_and_extra_fields(tmp_path: Path) -> None:
    audio_dir = tmp_path / "wavs"
    write_audio(audio_dir / "a.wav", seconds=0.4, rate=RATE, seed=1)
    write_audio(audio_dir / "b.wav", seconds=0.7, rate=RATE, seed=2)
    items = [
        {"audio_filepath": "a.wav", "duration": 0.4, "text": "first one", "speaker": "s1", "lang": "en"},
        {"audio_filepath": "b.wav", "duration": 0.7, "text": "second one", "tags": ["x"]},
        ["not", "an", "object"],
    ]
    manifest = tmp_path / "manifests" / "train.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps(items))
    index = build("asr", tmp_path, input=manifest.parent, audio_dir=audio_dir)
    samples = read_back(tmp_path / "out")
    assert [s.segments[0].text for s in samples] == ["first one", "second one"]
    for sample, seconds in zip(samples, (0.4, 0.7), strict=True):
        _check_audio(sample.segments[0], seconds)
    assert samples[0].meta["speaker"] == "s1" and samples[0].meta["lang"] == "en"
    assert "tags" not in samples[1].meta  # only scalar extra fields are kept
    assert index["build"]["errors_by_reason"] == {"bad_record": 1}
    assert "train.json:[2]" in index["build"]["examples"][0]


def _librispeech(tmp_path: Path, fixtures_dir: Path) -> tuple[Path, Path, list[tuple[str, str]]]:
    root = tmp_path / "LibriSpeech"
    shutil.copytree(fixtures_dir / "librispeech", root)
    trans = root / "test-clean" / "1089" / "134686" / "1089-134686.trans.txt"
    lines = [(utt, text) for utt, text in (line.split(" ", 1) for line in trans.read_text().splitlines())]
    for seed, (utt, _) in enumerate(lines):
        write_audio(trans.parent / f"{utt}.flac", seconds=0.5 + 0.25 * seed, rate=RATE, seed=seed)
    return root, trans, lines


def test_librispeech_round_trip(tmp_path: Path, fixtures_dir: Path) -> None:
    root, _, lines = _librispeech(tmp_path, fixtures_dir)
    (root / "README.json").write_text("{}")  # not a manifest: a LibriSpeech folder reads trans.txt only
    index = build("asr", tmp_path, input=root)
    samples = read_back(tmp_path / "out")
    assert index["samples"] == len(lines) == 2 and index["build"]["skipped"] == 0
    for seed, (sample, (utt, transcript)) in enumerate(zip(samples, lines, strict=True)):
        assert sample.key == f"librispeech/{utt}" and sample.source == "librispeech"
        audio, text = sample.segments
        _check_audio(audio, 0.5 + 0.25 * seed)
        assert audio.text == text.text == transcript and transcript.isupper()  # kept as given
        assert sample.meta["speaker"] == "1089" and sample.meta["chapter"] == "134686"
        assert sample.meta["utterance"] == utt
        assert sample.meta["origin"] == f"test-clean/1089/134686/1089-134686.trans.txt:{seed + 1}"


def test_librispeech_bad_lines_and_missing_flac(tmp_path: Path, fixtures_dir: Path) -> None:
    root, trans, _ = _librispeech(tmp_path, fixtures_dir)
    with trans.open("a") as handle:
        handle.write("1089-134686-0002\n\n1089-134686-0003 NO AUDIO FOR THIS ONE\nbad.id SOME WORDS\n")
    index = build("asr", tmp_path, input=root)
    assert index["samples"] == 2
    assert index["build"]["errors_by_reason"] == {
        "missing_transcript": 1,
        "missing_audio": 1,
        "bad_utterance_id": 1,
    }
    examples = "\n".join(index["build"]["examples"])
    assert "1089-134686.trans.txt:3" in examples and "1089-134686.trans.txt:5" in examples
    assert "1089-134686-0003.flac" in examples


def test_cli_asr_missing_input_is_one_line(tmp_path: Path, capsys) -> None:
    argv = [
        "data",
        "build",
        "--format",
        "asr",
        "--input",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1
