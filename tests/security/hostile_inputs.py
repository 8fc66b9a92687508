"""A catalogue of hostile shard members for the security suite and the reliability benchmark.

Each :class:`HostileCase` is one sample (a key and raw tar members, written without any of
the writer's checks) and the skip reason the readers must count it under. The payloads
prove that nothing ran: unpickling any of them creates the marker file; extracting any of
the path tricks would write files outside the target directory.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------- payloads


def pickle_payload(marker: Path) -> bytes:
    """Protocol-0 pickle bytes that create ``marker`` when anything unpickles them."""
    return b"cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."


class Planted:
    """Pickles, on load, to ``open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def torch_payload_bytes(marker: Path) -> bytes:
    """A torch.save file (zip + data.pkl) whose unpickling creates ``marker``."""
    import torch

    buffer = io.BytesIO()
    torch.save({"state": Planted(marker)}, buffer)
    return buffer.getvalue()


def numpy_payload_bytes(marker: Path) -> bytes:
    """An ``.npy`` object array (pickled inside) whose loading with allow_pickle creates ``marker``."""
    buffer = io.BytesIO()
    array = np.empty(1, dtype=object)
    array[0] = Planted(marker)
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- media


def png_bytes(size: tuple[int, int] = (4, 3)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit PNG of zeros: ~50 KB that would decode to 400 Mpx."""
    rows = (b"\x00" * (1 + (width + 7) // 8)) * height
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming a huge size, with a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def flac_bytes(seconds: float = 0.05, rate: int = 8000) -> bytes:
    import soundfile as sf

    frames = int(seconds * rate)
    wave = (np.sin(np.arange(frames, dtype=np.float32) / 7) * 0.5).reshape(frames, 1)
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="FLAC")
    return buffer.getvalue()


def flac_claiming_hours(hours: float = 10.0) -> bytes:
    """A short FLAC whose STREAMINFO says it lasts ``hours`` (36-bit total-samples field)."""
    data = bytearray(flac_bytes(rate=16000))
    assert data[:4] == b"fLaC"
    offset = 4 + 4 + 10  # marker, block header, block sizes (2+2) and frame sizes (3+3)
    packed = int.from_bytes(data[offset : offset + 8], "big")
    total = int(hours * 3600 * 16000)
    packed = (packed & ~((1 << 36) - 1)) | total
    data[offset : offset + 8] = packed.to_bytes(8, "big")
    return bytes(data)


def wav_lasting(seconds: float, rate: int = 100) -> bytes:
    """A real WAV of ``seconds`` at a tiny sample rate (hours fit in a few MB)."""
    import soundfile as sf

    frames = int(seconds * rate)
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((frames, 1), dtype=np.int16), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- tar members


@dataclass(frozen=True)
class Member:
    """One raw tar member: a regular file, or a link/device/fifo (``kind``)."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""


def text_json(text: str = "fine text") -> bytes:
    return json.dumps({"segments": [{"kind": "text", "text": text}]}).encode()


def media_json(kind: str, member: str, text: str = "look") -> bytes:
    return json.dumps(
        {"segments": [{"kind": "text", "text": text}, {"kind": kind, "member": member}]}
    ).encode()


@dataclass
class HostileCase:
    """One hostile sample: its members and the reason a reader must skip it under."""

    name: str
    key: str
    members: list[Member]
    reason: str
    group: str
    escapes: list[Path] = field(default_factory=list)  # paths an extraction would write


def hostile_cases(marker: Path, outside: Path) -> list[HostileCase]:
    """Every hostile case; ``outside`` is a directory that no member may ever write into
    (absolute names point into it; ``../`` names reach it from a sibling directory)."""
    torch_bytes = torch_payload_bytes(marker)
    pickled = pickle_payload(marker)
    cases: list[HostileCase] = []

    def case(name: str, key: str, members: list[Member], reason: str, group: str, *escapes: Path) -> None:
        cases.append(HostileCase(name, key, members, reason, group, list(escapes)))

    # pickles: never deserialised (undeclared members are never even read)
    for ext, data in (("pyd", pickled), ("pickle", pickled), ("pt", torch_bytes), ("pth", torch_bytes),
                      ("npy", numpy_payload_bytes(marker)), ("ten", pickled), ("mp", pickled)):  # fmt: skip
        case(f"pickle member .{ext}", f"pk_{ext}", [Member(f"pk_{ext}.json", text_json()),
             Member(f"pk_{ext}.{ext}", data)], "bad_sample", "pickle")  # fmt: skip
    case("pickle as KEY.json", "pk_json", [Member("pk_json.json", pickled)], "bad_sample", "pickle")
    case("pickle as an image", "pk_png", [Member("pk_png.json", media_json("image", "1.png")),
         Member("pk_png.1.png", pickled)], "bad_image", "pickle")  # fmt: skip
    case("torch file as audio", "pk_flac", [Member("pk_flac.json", media_json("audio", "1.flac")),
         Member("pk_flac.1.flac", torch_bytes)], "bad_audio", "pickle")  # fmt: skip
    case("image member named .pickle", "pk_ref", [Member("pk_ref.json", media_json("image", "1.pickle")),
         Member("pk_ref.1.pickle", pickled)], "bad_sample", "pickle")  # fmt: skip

    # paths and links: never written anywhere (nothing is extracted), skipped as unsafe
    absolute = outside / "absolute.json"
    case("absolute member path", str(absolute.with_suffix("")), [Member(str(absolute), text_json())],
         "unsafe_member", "path", absolute)  # fmt: skip
    case("../ member path", "../escape", [Member("../escape.json", text_json())], "unsafe_member", "path",
         outside / "escape.json")  # fmt: skip
    case("a/../../ member path", "dir/../../deep", [Member("dir/../../deep.json", text_json())],
         "unsafe_member", "path", outside / "deep.json")  # fmt: skip
    # a name starting with "." has an empty key: the skip names the shard and the member
    case("backslash path", "", [Member("..\\win.json", text_json())], "unsafe_member", "path")
    secret = outside / "secret.json"
    case("symlink to a file outside", "symlink", [Member("symlink.json", kind=tarfile.SYMTYPE,
         linkname=str(secret))], "unsafe_member", "link")  # fmt: skip
    case("symlinked media", "symmedia", [Member("symmedia.json", media_json("image", "1.png")),
         Member("symmedia.1.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd")],
         "unsafe_member", "link")  # fmt: skip
    case("hard link", "hardlink", [Member("hardlink.json", kind=tarfile.LNKTYPE, linkname=str(secret))],
         "unsafe_member", "link")  # fmt: skip
    case("character device", "device", [Member("device.json", kind=tarfile.CHRTYPE)], "unsafe_member", "link")
    case("fifo", "fifo", [Member("fifo.json", kind=tarfile.FIFOTYPE)], "unsafe_member", "link")

    # decompression bombs: rejected from the header, before decoding
    for name, key, kind, member, data, reason in (
        ("PNG bomb 20000x20000", "bomb_png", "image", "1.png", bomb_png(), "image_too_large"),
        ("PNG header claiming 10^5 x 10^5", "claim_png", "image", "1.png", png_claiming(100_000, 100_000),
         "image_too_large"),
        ("JPEG header claiming 60000x60000", "claim_jpg", "image", "1.jpg", jpeg_claiming(60000, 60000),
         "image_too_large"),
        ("FLAC header claiming 10 hours", "claim_flac", "audio", "1.flac", flac_claiming_hours(),
         "audio_too_long"),
        ("WAV lasting 2 hours", "long_wav", "audio", "1.wav", wav_lasting(7200), "audio_too_long"),
    ):  # fmt: skip
        case(name, key, [Member(f"{key}.json", media_json(kind, member)), Member(f"{key}.{member}", data)],
             reason, "bomb")  # fmt: skip

    # malformed records: skipped and counted with shard and key
    deep = b'{"segments": [{"kind": "text", "text": "x", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    for name, key, raw, reason in (
        ("invalid JSON", "bad_json", b'{"segments": [', "bad_sample"),
        ("bad UTF-8", "bad_utf8", b'{"segments": [{"kind": "text", "text": "\xff\xfe\xfd"}]}', "bad_sample"),
        ("JSON nested 100000 deep", "deep_json", deep, "bad_sample"),
        ("duplicate JSON keys", "dup_keys", b'{"segments": [], "segments": []}', "bad_sample"),
        ("segments not a list", "not_list", b'{"segments": {"kind": "text"}}', "bad_sample"),
        ("unknown segment kind", "video", b'{"segments": [{"kind": "video", "member": "1.mp4"}]}',
         "bad_sample"),
        ("JSON not an object", "array", b"[1, 2, 3]", "bad_sample"),
        ("zero-length JSON", "empty_json", b"", "bad_sample"),
        ("empty text", "empty_text", text_json(""), "bad_sample"),
        ("whitespace-only text", "blank_text", text_json(" \n\t "), "empty_text"),
        ("NaN in JSON", "nan_json", b'{"segments": [{"kind": "text", "text": "x"}], "meta": {"a": NaN}}',
         "bad_sample"),
    ):  # fmt: skip
        case(name, key, [Member(f"{key}.json", raw)], reason, "malformed")
    for name, key, members, reason in (
        ("zero-length image", "empty_png", [Member("empty_png.json", media_json("image", "1.png")),
                                            Member("empty_png.1.png", b"")], "bad_image"),
        ("zero-length audio", "empty_flac", [Member("empty_flac.json", media_json("audio", "1.flac")),
                                             Member("empty_flac.1.flac", b"")], "bad_audio"),
        ("reference to a missing member", "missing", [Member("missing.json", media_json("image", "1.png"))],
         "bad_sample"),
        ("unreferenced member", "extra", [Member("extra.json", text_json()),
                                          Member("extra.1.png", png_bytes())], "bad_sample"),
        ("media without KEY.json", "no_json", [Member("no_json.1.png", png_bytes())], "bad_sample"),
        ("member without extension", "noext", [Member("noext.json", text_json()), Member("noext", b"x")],
         "bad_sample"),
        ("member twice", "twice", [Member("twice.json", text_json()), Member("twice.json", text_json())],
         "bad_sample"),
        ("corrupt PNG", "corrupt_png", [Member("corrupt_png.json", media_json("image", "1.png")),
                                        Member("corrupt_png.1.png", png_bytes()[:40])], "bad_image"),
    ):  # fmt: skip
        case(name, key, members, reason, "malformed")
    return cases


def write_raw_tar(path: Path, members: list[Member]) -> Path:
    """A tar written member by member, bypassing every check of ShardWriter."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.linkname = member.linkname
            info.size = len(member.data) if member.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(member.data) if member.kind == tarfile.REGTYPE else None)
    return path


def good_members(index: int) -> list[Member]:
    key = f"good{index:04d}"
    if index % 3 == 0:
        return [Member(f"{key}.json", media_json("image", "1.png", f"good sample {index}")),
                Member(f"{key}.1.png", png_bytes())]  # fmt: skip
    return [Member(f"{key}.json", text_json(f"good sample {index}"))]


@dataclass
class HostileShards:
    """Shards where every hostile case sits between good samples."""

    directory: Path
    cases: list[HostileCase]
    good_keys: list[str]
    truncated: Path  # a shard cut in the middle of a member


def write_hostile_shards(directory: Path, cases: list[HostileCase], per_shard: int = 12) -> HostileShards:
    """Good and hostile samples alternating, ``per_shard`` hostile ones per shard, plus one
    shard cut short after its third good sample (a ``corrupt_tar``)."""
    directory.mkdir(parents=True, exist_ok=True)
    good: list[str] = []
    shard_index = 0
    for start in range(0, len(cases), per_shard):
        members: list[Member] = []
        for case in cases[start : start + per_shard]:
            members += good_members(len(good))
            good.append(f"good{len(good):04d}")
            members += case.members
        members += good_members(len(good))
        good.append(f"good{len(good):04d}")
        write_raw_tar(directory / f"shard-{shard_index:06d}.tar", members)
        shard_index += 1
    whole = directory / "whole.tmp"
    write_raw_tar(whole, [Member(f"cut{i}.json", text_json(f"cut {i}")) for i in range(5)])
    with tarfile.open(whole) as tar:
        cut_at = tar.getmembers()[3].offset_data + 7
    truncated = directory / f"shard-{shard_index:06d}.tar"
    truncated.write_bytes(whole.read_bytes()[:cut_at])
    whole.unlink()
    good += ["cut0", "cut1", "cut2"]  # complete before the cut
    return HostileShards(directory, cases, good, truncated)


def classify(shards: HostileShards, read: Callable[[], tuple[list[str], list[Any]]]) -> dict[str, Any]:
    """Run ``read`` (-> delivered keys, skip events with .shard/.key/.reason) and compare
    with the catalogue: which cases were handled (skipped once under their reason, naming
    shard and key) and which good samples were lost."""
    keys, events = read()
    by_key: dict[str, list[Any]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    handled = []
    unhandled = []
    for case in shards.cases:
        found = by_key.get(case.key, [])
        if not case.key:  # matched by the member named in the message
            found = [e for e in found if repr(case.members[0].name)[1:-1] in e.detail]
        ok = len(found) == 1 and found[0].reason == case.reason and str(found[0].shard).endswith(".tar")
        (handled if ok else unhandled).append(case if ok else (case.name, case.reason, found))
    corrupt = [e for e in events if e.reason == "corrupt_tar" and str(e.shard) == str(shards.truncated)]
    return {
        "handled": len(handled) + (len(corrupt) == 1),
        "tried": len(shards.cases) + 1,
        "unhandled": unhandled + ([] if len(corrupt) == 1 else [("truncated shard", "corrupt_tar", corrupt)]),
        "lost": sorted(set(shards.good_keys) - set(keys)),
        "unexpected": sorted(set(keys) - set(shards.good_keys)),
    }
