"""Weighted mixing of shard datasets: proportions, temperature, determinism, exact resume,
weight changes at a resume, changed source lists, config validation, batch bookkeeping."""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from mmpretrain.config import validate_config
from mmpretrain.data.data_config import DataConfig
from mmpretrain.data.layout import MediaDocument, layout_batch
from mmpretrain.data.media_packing import MediaPacker
from mmpretrain.data.media_pipeline import (
    MediaBatchStream,
    MediaDataConfig,
    MediaStreamState,
)
from mmpretrain.data.mixing import MixedReader, MixSourceConfig, MixState, mix_probabilities
from mmpretrain.data.reader import ReaderConfig, ReaderState
from mmpretrain.data.shard_io import ShardWriter
from mmpretrain.data.tokenizer import TextTokenizer, train_bpe
from mmpretrain.data.types import Sample, Segment
from mmpretrain.errors import ConfigError, DataFormatError

N = 10_000
SIZES = {"interleaved": 40, "captions": 30, "replay": 20}  # samples per (text-only) source
WEIGHTS = {"interleaved": 0.6, "captions": 0.3, "replay": 0.1}


def tolerance(p: float, n: int) -> float:
    """4 binomial standard deviations of an observed fraction (the draws are seeded, so
    this is a bound that a correct mixer meets, not a flaky test)."""
    return 4 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mix")
    for name, size in {**SIZES, "extra": 10}.items():
        with ShardWriter(root / name, max_samples=16) as writer:
            for i in range(size):
                writer.write(Sample(f"{name}-{i:03d}", "tiny", [Segment("text", text=f"{name} text {i}")]))
    return root


def sources(root: Path, weights: dict[str, float | None]) -> list[MixSourceConfig]:
    return [
        MixSourceConfig(name=name, reader=ReaderConfig(shards=[str(root / name)], shuffle_buffer=8), weight=w)
        for name, w in weights.items()
    ]


def draws(reader: MixedReader, n: int, state: MixState | None = None) -> list[tuple[str, str, MixState]]:
    return [(s.source, s.key, after) for s, after in itertools.islice(reader.samples(state), n)]


def fractions(names: list[str]) -> dict[str, float]:
    counts = Counter(names)
    return {name: count / len(names) for name, count in counts.items()}


def assert_proportions(names: list[str], expected: dict[str, float]) -> None:
    observed = fractions(names)
    for name, p in expected.items():
        assert abs(observed.get(name, 0.0) - p) < tolerance(p, len(names)), (name, observed, expected)


# ------------------------------------------------------------------------------ proportions


def test_proportions_within_tolerance_over_10000_samples(shards: Path) -> None:
    got = draws(MixedReader(sources(shards, dict(WEIGHTS)), seed=7), N)
    assert_proportions([s for s, _, _ in got], WEIGHTS)
    assert all(key.startswith(f"{source}-") for source, key, _ in got)  # source = mix name
    final = got[-1][2]
    assert final.position == N and dict(final.counts) == dict(Counter(s for s, _, _ in got))


def test_temperature_reshapes_the_weights_as_the_formula_says(shards: Path) -> None:
    weights = [0.6, 0.3, 0.1]
    flat = mix_probabilities(weights, temperature=2.0)
    root = [math.sqrt(w) for w in weights]
    assert flat == pytest.approx([r / sum(root) for r in root])
    assert mix_probabilities(weights, 0.5) == pytest.approx(
        [w**2 / sum(v**2 for v in weights) for w in weights]
    )
    assert mix_probabilities(weights, 1e6) == pytest.approx([1 / 3] * 3, abs=1e-5)  # large T: uniform
    reader = MixedReader(sources(shards, dict(WEIGHTS)), temperature=2.0, seed=7)
    assert_proportions([s for s, _, _ in draws(reader, N)], dict(zip(WEIGHTS, flat, strict=True)))


def test_unset_weights_mix_in_proportion_to_size(shards: Path) -> None:
    reader = MixedReader(sources(shards, dict.fromkeys(SIZES)), seed=7)
    total = sum(SIZES.values())
    expected = {name: size / total for name, size in SIZES.items()}
    assert reader.probabilities == pytest.approx(expected)
    assert_proportions([s for s, _, _ in draws(reader, 4000)], expected)


def test_deterministic_given_the_seed(shards: Path) -> None:
    def run(seed: int) -> list[tuple[str, str]]:
        return [(s, k) for s, k, _ in draws(MixedReader(sources(shards, dict(WEIGHTS)), seed=seed), 300)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    rank0 = MixedReader(sources(shards, dict(WEIGHTS)), rank=0, world_size=2, seed=3)
    rank1 = MixedReader(sources(shards, dict(WEIGHTS)), rank=1, world_size=2, seed=3)
    assert [rank0.source_at(i) for i in range(100)] != [rank1.source_at(i) for i in range(100)]


# ------------------------------------------------------------------------------ resume


def test_resume_continues_exactly_and_keeps_the_proportions(shards: Path) -> None:
    full = draws(MixedReader(sources(shards, dict(WEIGHTS)), seed=7), N)
    k = 3333
    saved = MixState.from_dict(json.loads(json.dumps(full[k - 1][2].as_dict())))  # as a checkpoint does
    resumed = draws(MixedReader(sources(shards, dict(WEIGHTS)), seed=7), N - k, saved)
    assert [(s, key) for s, key, _ in resumed] == [(s, key) for s, key, _ in full[k:]]
    assert resumed[-1][2] == full[-1][2]  # positions, per-source reader states and counts
    assert_proportions([s for s, _, _ in full[:k] + resumed], WEIGHTS)


def test_resume_is_exact_with_dataloader_workers_per_source(shards: Path) -> None:
    def reader(workers: int) -> MixedReader:
        configs = [
            MixSourceConfig(
                name=name,
                reader=ReaderConfig(shards=[str(shards / name)], shuffle_buffer=8, num_workers=workers),
                weight=w,
            )
            for name, w in WEIGHTS.items()
        ]
        return MixedReader(configs, seed=7)

    reference = [(s, key) for s, key, _ in draws(reader(0), 120)]
    full = draws(reader(2), 120)
    assert [(s, key) for s, key, _ in full] == reference  # workers change nothing in the order
    resumed = draws(reader(2), 120 - 45, full[44][2])
    assert [(s, key) for s, key, _ in resumed] == reference[45:]


def test_new_weights_at_a_resume_apply_from_there_with_nothing_replayed(shards: Path) -> None:
    k, after = 2000, 6000
    before = draws(MixedReader(sources(shards, dict(WEIGHTS)), seed=7), k)
    new_weights = {"interleaved": 0.1, "captions": 0.1, "replay": 0.8}
    reader = MixedReader(sources(shards, new_weights), seed=7)
    resumed = draws(reader, after, before[-1][2])
    assert_proportions([s for s, _, _ in resumed], new_weights)
    assert resumed[-1][2].position == k + after
    # Every source continues its own order where it stopped: no sample replayed or lost.
    for name in WEIGHTS:
        alone = MixedReader(sources(shards, {name: 1.0}), seed=7)  # same per-source seed
        keys = [key for s, key, _ in before + resumed if s == name]
        assert keys == [key for _, key, _ in draws(alone, len(keys))]


def test_a_changed_source_list_matches_sources_by_name(
    shards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = draws(MixedReader(sources(shards, dict(WEIGHTS)), seed=7), 500)
    changed = {"interleaved": 0.5, "captions": 0.3, "extra": 0.2}  # replay removed, extra added
    with caplog.at_level(logging.WARNING, logger="mmpretrain.data"):
        resumed = draws(MixedReader(sources(shards, changed), seed=7), 500, before[-1][2])
    assert "added ['extra']" in caplog.text and "removed ['replay']" in caplog.text
    final = resumed[-1][2]
    assert set(final.readers) == set(changed) and "replay" not in final.counts
    extra = [key for s, key, _ in resumed if s == "extra"]
    alone = MixedReader(sources(shards, {"extra": 1.0}), seed=7)
    assert extra == [key for _, key, _ in draws(alone, len(extra))]  # starts at its beginning
    assert final.counts["interleaved"] == before[-1][2].counts["interleaved"] + sum(
        s == "interleaved" for s, _, _ in resumed
    )


def test_a_malformed_state_is_a_data_format_error() -> None:
    with pytest.raises(DataFormatError, match=r"mixed reader state .* malformed"):
        MixState.from_dict({"readers": {}})


# ------------------------------------------------------------------------------ config


def mix_entries(root: Path, **weights: float | None) -> list[dict[str, object]]:
    return [{"name": n, "reader": {"shards": [str(root / n)]}, "weight": w} for n, w in weights.items()]


@pytest.mark.parametrize(
    ("shards_cfg", "message"),
    [
        ({"mix": []}, "set exactly one of reader .* and mix"),
        ({"reader": {"shards": ["x"]}, "mix": "MIX"}, "set exactly one of reader .* and mix"),
        ({"mix": "DUPLICATE"}, "names must be unique: 'captions' appears more than once"),
        ({"mix": "SOME_WEIGHTS"}, r"set weight on every mix source or on none .*\['replay'\]"),
        ({"mix": "MIX", "temperature": 0}, "temperature"),
        ({"mix": "BAD_NAME"}, "name"),
        ({"mix": "NEGATIVE"}, "weight"),
    ],
)
def test_config_errors_are_one_clear_line(shards: Path, shards_cfg: dict[str, object], message: str) -> None:
    named = {
        "MIX": mix_entries(shards, interleaved=0.6, captions=0.4),
        "DUPLICATE": mix_entries(shards, captions=0.6) * 2,
        "SOME_WEIGHTS": mix_entries(shards, captions=0.6, replay=None),
        "BAD_NAME": [{"name": "a/b", "reader": {"shards": ["x"]}}],
        "NEGATIVE": mix_entries(shards, captions=-1.0),
    }
    data = {"shards": {k: named.get(v, v) if isinstance(v, str) else v for k, v in shards_cfg.items()}}
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(DataConfig, data, "run.yaml")
    line = str(error.value)
    assert "\n" not in line and line.startswith("config error in run.yaml: shards")


def test_a_valid_mix_config_and_its_reader(shards: Path) -> None:
    cfg = MediaDataConfig.model_validate(
        {"mix": mix_entries(shards, interleaved=3, captions=1), "temperature": 2}
    )
    assert cfg.reader is None and [s.name for s in cfg.mix] == ["interleaved", "captions"]
    with pytest.raises(ValidationError):
        MediaDataConfig.model_validate({})  # neither reader nor mix


# ------------------------------------------------------------------------------ batches


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return train_bpe([f"{name} text {i}" for name in SIZES for i in range(40)] * 3, vocab_size=300)


def mixed_stream(root: Path, tokenizer: TextTokenizer, weights: dict[str, float]) -> MediaBatchStream:
    cfg = MediaDataConfig(mix=sources(root, weights), buffer_docs=16)
    return MediaBatchStream(cfg, tokenizer, {}, seq_len=32, batch_size=2, seed=5)


def test_mixed_batches_name_each_documents_source_and_resume_exactly(
    shards: Path, tokenizer: TextTokenizer
) -> None:
    full = list(itertools.islice(mixed_stream(shards, tokenizer, WEIGHTS).batches(), 12))
    for batch, _ in full:
        assert len(batch.sources) == len(batch.keys) == 2
        for keys, names in zip(batch.keys, batch.sources, strict=True):
            assert len(keys) == len(names)
            assert all(key.startswith(f"{name}-") for key, name in zip(keys, names, strict=True))
    k = 5
    state = MediaStreamState.from_dict(json.loads(json.dumps(full[k - 1][1].as_dict())))
    assert isinstance(state.reader, MixState) and full[k - 1][1].as_dict()["reader_kind"] == "mix"
    resumed = list(itertools.islice(mixed_stream(shards, tokenizer, WEIGHTS).batches(state), 12 - k))
    for (a, _), (b, _) in zip(resumed, full[k:], strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and a.keys == b.keys and a.sources == b.sources


def test_a_state_of_the_other_reader_kind_is_refused(shards: Path, tokenizer: TextTokenizer) -> None:
    single = MediaStreamState(ReaderState(epoch=0, positions=(0,)))
    assert MediaStreamState.from_dict(single.as_dict()) == single
    legacy = {"reader": single.as_dict()["reader"], "round_start": 0, "emitted": 0}  # no reader_kind
    assert MediaStreamState.from_dict(legacy) == single
    with pytest.raises(DataFormatError, match="saved data state is of a single dataset"):
        next(mixed_stream(shards, tokenizer, WEIGHTS).batches(single))


def test_layout_and_split_pieces_keep_the_source() -> None:
    plain = layout_batch([[MediaDocument("a", [[1, 2, 3]])]], seq_len=8, pad_id=0)
    assert plain.sources == []  # not mixed: nothing new
    mixed = layout_batch(
        [[MediaDocument("a", [[1, 2]], "captions"), MediaDocument("b", [[3]], "replay")]], seq_len=8, pad_id=0
    )
    assert mixed.sources == [["captions", "replay"]] and mixed.to("cpu").sources == mixed.sources
    packer = MediaPacker(seq_len=8, buffer_docs=4)
    packs = packer.pack_round([MediaDocument("long", [list(range(1, 20))], "replay")])
    assert len(packs) == 3 and all(d.source == "replay" for pack in packs for d in pack)
