"""The KEY.json schema: valid samples pass, each malformed one names the key and field."""

from __future__ import annotations

import copy
import json

import pytest

from mmpretrain.data import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    SCHEMA_VERSION,
    Sample,
    parse_sample_json,
    sample_from_json,
    validate_sample_json,
)
from mmpretrain.errors import DataFormatError

KEY = "shard-000/17"

TEXT_ONLY = {"segments": [{"kind": "text", "text": "Just a document."}], "source": "c4"}
INTERLEAVED = {
    "segments": [
        {"kind": "text", "text": "A cat:"},
        {"kind": "image", "member": "0.jpg", "meta": {"width": 640}},
        {"kind": "text", "text": "and a dog:", "meta": {}},
        {"kind": "image", "member": "1.png"},
    ],
    "source": "obelics",
    "meta": {"url": "https://example.com"},
    "version": 1,
}
AUDIO = {
    "segments": [
        {"kind": "audio", "member": "0.flac", "text": "hello world"},
        {"kind": "audio", "member": "1.wav"},
    ],
}


def test_constants() -> None:
    assert SCHEMA_VERSION == 1
    assert set(IMAGE_EXTENSIONS) == {"jpg", "jpeg", "png", "webp"}
    assert set(AUDIO_EXTENSIONS) == {"flac", "wav"}


@pytest.mark.parametrize(
    ("obj", "members"),
    [
        (TEXT_ONLY, None),
        (TEXT_ONLY, {"json"}),
        (INTERLEAVED, None),
        (INTERLEAVED, {"json", "0.jpg", "1.png"}),
        (AUDIO, ["0.flac", "1.wav"]),
    ],
)
def test_valid_samples_pass(obj: dict, members) -> None:
    validate_sample_json(KEY, obj, members)


def _without_segments(obj: dict) -> None:
    del obj["segments"]


@pytest.mark.parametrize(
    ("base", "edit", "members", "path", "fragment"),
    [
        (TEXT_ONLY, _without_segments, None, "field segments", "is missing"),
        (TEXT_ONLY, lambda o: o.update(segments=[]), None, "field segments", "is empty"),
        (TEXT_ONLY, lambda o: o.update(segments="text"), None, "field segments", "must be a list"),
        (
            TEXT_ONLY,
            lambda o: o.update(extra=1),
            None,
            "top level",
            "unknown key(s) 'extra'; allowed: segments, source, meta, version",
        ),
        (
            INTERLEAVED,
            lambda o: o["segments"][1].update(caption="x"),
            None,
            "field segments[1]",
            "unknown key(s) 'caption'; allowed: kind, member, meta",
        ),
        (
            TEXT_ONLY,
            lambda o: o["segments"][0].update(member="0.jpg"),
            None,
            "field segments[0]",
            "unknown key(s) 'member'",
        ),
        (
            INTERLEAVED,
            lambda o: o["segments"][2].update(kind="video"),
            None,
            "field segments[2].kind",
            "'video' is not one of text, image, audio",
        ),
        (
            TEXT_ONLY,
            lambda o: o["segments"][0].pop("text"),
            None,
            "field segments[0].text",
            "needs a non-empty string, got null",
        ),
        (
            TEXT_ONLY,
            lambda o: o["segments"][0].update(text=""),
            None,
            "field segments[0].text",
            "got an empty string",
        ),
        (
            INTERLEAVED,
            lambda o: o["segments"][3].update(member="1.gif"),
            None,
            "field segments[3].member",
            "'1.gif' is not a valid image member",
        ),
        (
            AUDIO,
            lambda o: o["segments"][0].update(member="0.jpg"),
            None,
            "field segments[0].member",
            "ext one of flac, wav",
        ),
        (
            AUDIO,
            lambda o: o["segments"][0].update(member="../0.flac"),
            None,
            "field segments[0].member",
            "not a valid audio member",
        ),
        (
            AUDIO,
            lambda o: o["segments"][1].update(member="1.flac"),
            {"json", "0.flac", "1.wav"},
            "field segments[1].member",
            "'1.flac' is not a member of the sample (members: 0.flac, 1.wav)",
        ),
        (
            INTERLEAVED,
            lambda o: None,
            {"json", "0.jpg", "1.png", "2.webp"},
            "field segments",
            "media member '2.webp' is in the tar but no segment references it",
        ),
        (
            TEXT_ONLY,
            lambda o: None,
            {"json", "0.pyd"},
            "top level",
            f"tar member {KEY}.0.pyd has an extension this format does not allow",
        ),
        (
            TEXT_ONLY,
            lambda o: o.update(version=2),
            None,
            "field version",
            "upgrade mmpretrain-lm",
        ),
        (TEXT_ONLY, lambda o: o.update(version=0), None, "field version", "positive integer"),
        (TEXT_ONLY, lambda o: o.update(version=True), None, "field version", "positive integer"),
        (TEXT_ONLY, lambda o: o.update(source=3), None, "field source", "must be a string"),
        (TEXT_ONLY, lambda o: o.update(meta=[]), None, "field meta", "must be an object"),
        (
            INTERLEAVED,
            lambda o: o["segments"][1].update(meta="w=640"),
            None,
            "field segments[1].meta",
            "must be an object",
        ),
        (
            AUDIO,
            lambda o: o["segments"][0].update(text=5),
            None,
            "field segments[0].text",
            "transcript must be a string",
        ),
        (TEXT_ONLY, lambda o: o["segments"].append("text"), None, "field segments[1]", "must be an object"),
    ],
)
def test_malformed_samples_name_key_and_field(base, edit, members, path: str, fragment: str) -> None:
    obj = copy.deepcopy(base)
    edit(obj)
    with pytest.raises(DataFormatError) as info:
        validate_sample_json(KEY, obj, members)
    message = str(info.value)
    assert message.startswith(f"sample {KEY!r} {path}:"), message
    assert fragment in message


@pytest.mark.parametrize("obj", [[], "segments", None, 3])
def test_non_dict_rejected(obj: object) -> None:
    with pytest.raises(DataFormatError, match=f"sample '{KEY}' top level: must be a JSON object"):
        validate_sample_json(KEY, obj)


def test_member_error_message_exact() -> None:
    obj = {"segments": [{"kind": "audio", "member": "1.flac"}]}
    with pytest.raises(DataFormatError) as info:
        validate_sample_json("abc", obj, ["0.jpg", "1.wav"])
    assert str(info.value) == (
        "sample 'abc' field segments[0].member: '1.flac' is not a member of the sample "
        "(members: 0.jpg, 1.wav)"
    )


def test_parse_sample_json_roundtrip() -> None:
    raw = json.dumps(INTERLEAVED).encode()
    assert parse_sample_json(KEY, raw, {"json", "0.jpg", "1.png"}) == INTERLEAVED


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"segments": [{"kind": "text", "text": "caf\xe9"}]}', "is not valid UTF-8"),
        (b'{"segments": [', "is not valid JSON"),
        (b'{"segments": [], "segments": []}', "duplicate key 'segments'"),
        (b"", "is not valid JSON"),
    ],
)
def test_parse_sample_json_bad_bytes(raw: bytes, fragment: str) -> None:
    with pytest.raises(DataFormatError) as info:
        parse_sample_json(KEY, raw)
    message = str(info.value)
    assert message.startswith(f"sample {KEY!r}: {KEY}.json")
    assert fragment in message


def test_parse_sample_json_validates() -> None:
    with pytest.raises(DataFormatError, match=r"field segments: is empty"):
        parse_sample_json(KEY, b'{"segments": []}')


def test_sample_from_json() -> None:
    media = {"0.jpg": b"\xff\xd8jpeg", "1.png": b"\x89PNG"}
    sample = sample_from_json(KEY, INTERLEAVED, media)
    assert isinstance(sample, Sample)
    assert sample.key == KEY and sample.source == "obelics"
    assert sample.meta == {"url": "https://example.com"}
    assert [s.kind for s in sample.segments] == ["text", "image", "text", "image"]
    assert sample.segments[0].text == "A cat:" and sample.segments[0].data is None
    assert sample.segments[1].data == b"\xff\xd8jpeg" and sample.segments[1].member == "0.jpg"
    assert sample.segments[1].meta == {"width": 640}
    assert sample.segments[3].data == b"\x89PNG"

    audio = sample_from_json(KEY, AUDIO, {"0.flac": b"fLaC", "1.wav": b"RIFF"})
    assert audio.source == ""
    assert audio.segments[0].text == "hello world" and audio.segments[0].data == b"fLaC"
    assert audio.segments[1].text is None


def test_sample_from_json_checks_media() -> None:
    with pytest.raises(DataFormatError, match=r"field segments\[3\].member: '1.png' is not a member"):
        sample_from_json(KEY, INTERLEAVED, {"0.jpg": b"x"})
