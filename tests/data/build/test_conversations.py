"""`--format conversations`: LLaVA-Instruct-style conversations round-trip with the fixed
template, media at their markers, and loss only on the assistant replies after tokenization."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from build_helpers import build, read_back, write_audio, write_image
from PIL import Image

from mmpretrain.data.decoders import DecodedSample
from mmpretrain.data.layout import MediaTokenIds, layout_batch
from mmpretrain.data.media_pipeline import StandInAudioProcessor, StandInImageProcessor, to_media_document
from mmpretrain.data.tokenizer import TextTokenizer, train_bpe
from mmpretrain.data.types import IGNORE_INDEX

# Modelled on llava_instruct_150k.json (id, image relative to COCO train2017, human/gpt turns),
# plus a speech item, an OpenAI-style text-only item and an image without a marker.
ITEMS: list[dict[str, Any]] = [
    {
        "id": "000000215677",
        "image": "000000215677.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the man holding?"},
            {"from": "gpt", "value": "He is holding a red umbrella."},
            {"from": "human", "value": "Why might he need it?"},
            {"from": "gpt", "value": "Dark clouds suggest rain, so the umbrella keeps him dry."},
        ],
    },
    {
        "id": "speech-0001",
        "audio": "clips/question.wav",
        "conversations": [
            {"from": "system", "value": "You are a helpful assistant."},
            {"from": "human", "value": "Repeat what the speaker says:\n<audio>"},
            {"from": "gpt", "value": "The speaker says hello."},
        ],
    },
    {
        "id": "chat-7",
        "messages": [
            {"role": "user", "content": "Name a primary color."},
            {"role": "assistant", "content": "Blue is a primary color."},
        ],
    },
    {
        "id": "000000033471",
        "image": "000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "What colors are the bus?"},
            {"from": "gpt", "value": "The bus is white and red."},
        ],
    },
]

# (kind, text, loss) of each read-back segment; None for media.
EXPECTED: list[list[tuple[str, str | None, bool]]] = [
    [
        ("text", "User: ", False),
        ("image", None, True),
        ("text", "\nWhat is the man holding?\nAssistant: ", False),
        ("text", "He is holding a red umbrella.\n", True),
        ("text", "User: Why might he need it?\nAssistant: ", False),
        ("text", "Dark clouds suggest rain, so the umbrella keeps him dry.\n", True),
    ],
    [
        ("text", "System: You are a helpful assistant.\nUser: Repeat what the speaker says:\n", False),
        ("audio", None, True),
        ("text", "\nAssistant: ", False),
        ("text", "The speaker says hello.\n", True),
    ],
    [
        ("text", "User: Name a primary color.\nAssistant: ", False),
        ("text", "Blue is a primary color.\n", True),
    ],
    [
        ("text", "User: ", False),
        ("image", None, True),
        ("text", "\nWhat colors are the bus?\nAssistant: ", False),
        ("text", "The bus is white and red.\n", True),
    ],
]


def replies(item: dict[str, Any]) -> list[str]:
    turns = item.get("conversations") or item["messages"]
    return [
        t.get("value", t.get("content"))
        for t in turns
        if t.get("from", t.get("role")) in ("gpt", "assistant")
    ]


def skipped(index: dict[str, Any]) -> dict[str, str]:
    """``{where: reason}`` of the skip examples in index.json."""
    return {
        message.split(": ", 1)[0]: message.rsplit("(skipped; ", 1)[1].rstrip(")")
        for message in index["build"]["examples"]
    }


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[DecodedSample], dict[str, Any], dict[str, bytes]]:
    root = tmp_path_factory.mktemp("conversations")
    images = {
        name: write_image(root / "coco" / name, (40, 32), seed=n)
        for n, name in enumerate(["000000215677.jpg", "000000033471.jpg"])
    }
    write_audio(root / "speech" / "clips" / "question.wav", seconds=0.5, rate=22050)
    source = root / "llava_instruct_mini.json"
    source.write_text(json.dumps(ITEMS, indent=1))
    index = build("conversations", root, input=source, images_dir=root / "coco", audio_dir=root / "speech")
    return read_back(root / "out"), index, images


def test_round_trip_renders_the_template_with_media_at_markers(built) -> None:
    samples, index, images = built
    assert index["samples"] == len(ITEMS) == len(samples) and index["build"]["skipped"] == 0
    assert [s.meta["id"] for s in samples] == [item["id"] for item in ITEMS]
    assert all(s.source == "conversations" and s.key.startswith("conversations/") for s in samples)
    for sample, expected in zip(samples, EXPECTED, strict=True):
        got = [
            (s.kind, s.text if s.kind == "text" else None, s.loss if s.kind == "text" else True)
            for s in sample.segments
        ]
        assert got == expected, sample.key
    for sample, name in ((samples[0], "000000215677.jpg"), (samples[3], "000000033471.jpg")):
        image = sample.segments[1].image
        assert image is not None
        assert np.array_equal(
            np.asarray(image), np.asarray(Image.open(io.BytesIO(images[name])).convert("RGB"))
        )
    audio = samples[1].segments[1]
    assert audio.sample_rate == 16000 and audio.audio is not None and len(audio.audio) == 8000
    assert index["images"] == 2 and index["audio"] == 1


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    corpus = " ".join(t for expected in EXPECTED for _, t, _ in expected if t)
    return train_bpe([corpus] * 10, vocab_size=300)


def test_loss_is_exactly_on_assistant_tokens(built, tokenizer: TextTokenizer) -> None:
    samples, _, _ = built
    processors = {"image": StandInImageProcessor(size=32, patch=8), "audio": StandInAudioProcessor()}
    ids = MediaTokenIds.from_tokenizer(tokenizer)
    for sample, item in zip(samples, ITEMS, strict=True):
        document = to_media_document(sample, tokenizer, processors)
        batch = layout_batch([[document]], document.length, tokenizer.pad_id, ids)
        batch.validate()
        labels = batch.labels[0]
        trained = labels[labels != IGNORE_INDEX].tolist()
        answer = [tok for reply in replies(item) for tok in tokenizer.encode(reply + "\n")]
        assert trained == [*answer, tokenizer.eos_id], sample.key  # and EOS: stop after the reply
        assert tokenizer.decode(trained[:-1]) == "".join(f"{r}\n" for r in replies(item))
        # the tokens without loss are exactly the prefixes, system/user turns and media
        tokens = batch.input_ids[0]
        assert torch.equal(tokens[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
        media = torch.tensor([*ids.placeholder.values(), *ids.begin.values(), *ids.end.values()])
        untrained = tokens[(labels == IGNORE_INDEX) & ~torch.isin(tokens, media)].tolist()
        prompts = "".join(s.text or "" for s in sample.segments if s.kind == "text" and not s.loss)
        assert tokenizer.decode(untrained) == prompts


def test_bad_items_and_missing_media_are_counted(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    ok = [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "Noise."}]
    items: list[Any] = [
        {"id": "good", "image": "a.jpg", "conversations": ok},
        {"id": "role", "conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]},
        {"id": "type", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}]},
        {"id": "empty", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": " "}]},
        {"id": "noreply", "conversations": [{"from": "human", "value": "hi"}]},
        {
            "id": "markers",
            "image": "a.jpg",
            "conversations": [{"from": "human", "value": "<image><image>"}, ok[1]],
        },
        {"id": "path", "image": 5, "conversations": ok},
        {"id": "gone", "image": "gone.jpg", "conversations": ok},
        {"id": "noturns", "conversations": []},
        "not an object",
    ]
    source = tmp_path / "conv.json"
    source.write_text(json.dumps(items))
    index = build("conversations", tmp_path, input=source)
    assert index["samples"] == 1 and index["build"]["records"] == len(items)
    assert skipped(index) == {
        "conv.json:[1]": "bad_role",
        "conv.json:[2]": "bad_turn",
        "conv.json:[3]": "empty_reply",
        "conv.json:[4]": "no_reply",
        "conv.json:[5]": "media_marker_mismatch",
        "conv.json:[6]": "bad_image_path",
        "conv.json:[7]": "missing_image",
        "conv.json:[8]": "bad_record",
        "conv.json:[9]": "bad_record",
    }


def test_jsonl_input_counts_bad_lines(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "Yes."}]
    source = tmp_path / "chat.jsonl"
    source.write_text(
        json.dumps({"conversations": turns}) + "\n{oops\n\n" + json.dumps({"messages": turns}) + "\n"
    )
    index = build("conversations", tmp_path, input=source)
    samples = read_back(tmp_path / "out")
    assert [s.segments[-1].text for s in samples] == ["Yes.\n", "Yes.\n"]
    assert skipped(index) == {"chat.jsonl:2": "bad_json"}
