"""The text tokenizer: byte-level BPE training, special token ids, loading, the CLI."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.data.tokenizer import (
    MEDIA_TOKENS,
    SPECIAL_TOKENS,
    BpeTokenizerConfig,
    SpecialTokens,
    TextTokenizer,
    load_tokenizer,
    train_bpe,
)
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import TOKENIZERS

VOCAB = 300

WORD_TEXT = (
    "the of and to in is was that for it with as his on be at by this had not are but from or have an "
    "they which one you were her all she there would their we him been has when who will more no if out "
    "so said what up its about into than them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before must through "
    "king queen love death night sword crown river stone music letter garden winter summer morning"
)
WORDS = WORD_TEXT.split()
ACCENTED = ("café", "naïve", "résumé", "Ångström", "façade", "über", "jalapeño", "crème")


def english_like(sentences: int, seed: int = 0) -> list[str]:
    """Deterministic English-like paragraphs (a few KB), one per list item."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(sentences // 5):
        lines = []
        for _ in range(5):
            words = [
                rng.choice(WORDS if rng.random() > 0.05 else ACCENTED) for _ in range(rng.randint(5, 14))
            ]
            lines.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ";"]))
        paragraphs.append(" ".join(lines))
    return paragraphs


CORPUS = english_like(200)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return train_bpe(CORPUS, VOCAB)


ROUND_TRIP = {
    "ascii": "The king said: 'Winter is over', and 42 men rode north.",
    "accented": "Crème brûlée at the café; naïve Ångström façade über alles, señor.",
    "emoji": "love 🤖👍🏽 family 👨‍👩‍👧 flag 🇫🇷 end",
    "whitespace": "a  b\t\t c\n\n\n  d   \r\n\u00a0e\u3000f ",
    "empty": "",
    "cjk_rtl": "日本語のテキスト and مرحبا and Ελληνικά",
    "specials": "<image_start><image><image_end> a caption <audio_start><audio><audio_end><|endoftext|>",
    "near_specials": "<imag> <image <|pad| image> <<image>>",
}


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip(tokenizer: TextTokenizer, name: str) -> None:
    text = ROUND_TRIP[name]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_batch([text, text[::-1]]) == [ids, tokenizer.encode(text[::-1])]


def test_special_token_ids_follow_the_learned_vocabulary(tokenizer: TextTokenizer) -> None:
    assert tokenizer.learned_vocab_size == VOCAB
    assert tokenizer.vocab_size == len(tokenizer) == VOCAB + len(SPECIAL_TOKENS) == VOCAB + 8
    for index, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.hf.convert_tokens_to_ids(token) == VOCAB + index
    assert tokenizer.special_token_ids == {role: VOCAB + i for i, role in enumerate(SpecialTokens._fields)}
    assert (tokenizer.eos_id, tokenizer.pad_id) == (VOCAB, VOCAB + 1)
    assert (tokenizer.image_id, tokenizer.image_start_id, tokenizer.image_end_id) == (302, 303, 304)
    assert (tokenizer.audio_id, tokenizer.audio_start_id, tokenizer.audio_end_id) == (305, 306, 307)
    assert max(max(tokenizer.encode(t) or [0]) for t in CORPUS) < VOCAB  # text never maps to specials


def test_special_tokens_in_text_are_single_ids(tokenizer: TextTokenizer) -> None:
    assert tokenizer.encode("<image>") == [tokenizer.image_id]
    assert tokenizer.encode("<|endoftext|>") == [tokenizer.eos_id]
    ids = tokenizer.encode("a<image_start><image><image_end>b")
    assert ids[1:4] == [tokenizer.image_start_id, tokenizer.image_id, tokenizer.image_end_id]
    assert len(ids) == 5
    assert tokenizer.encode("the king") != []  # nothing added automatically
    assert tokenizer.encode("the king")[-1] != tokenizer.eos_id


def test_training_is_deterministic(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    again = train_bpe(iter(CORPUS), VOCAB)
    assert again.hf.backend_tokenizer.to_str() == tokenizer.hf.backend_tokenizer.to_str()
    tokenizer.save(tmp_path / "a")
    again.save(tmp_path / "b")
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()
    assert (
        train_bpe(english_like(200, seed=1), VOCAB).hf.backend_tokenizer.to_str()
        != again.hf.backend_tokenizer.to_str()
    )


def test_save_load_and_auto_tokenizer(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    from transformers import AutoTokenizer

    out = tokenizer.save(tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["eos_token"], config["pad_token"]) == ("<|endoftext|>", "<|pad|>")
    assert list(config["extra_special_tokens"]) == list(MEDIA_TOKENS)

    loaded = load_tokenizer(out)
    assert loaded.special_token_ids == tokenizer.special_token_ids
    assert (loaded.vocab_size, loaded.learned_vocab_size) == (tokenizer.vocab_size, VOCAB)

    auto = AutoTokenizer.from_pretrained(str(out))
    assert hasattr(auto, "backend_tokenizer")
    assert (auto.eos_token_id, auto.pad_token_id, len(auto)) == (VOCAB, VOCAB + 1, VOCAB + 8)
    for text in ROUND_TRIP.values():
        ids = tokenizer.encode(text)
        assert loaded.encode(text) == ids
        assert auto.encode(text, add_special_tokens=False) == ids
        assert auto.encode(text) == ids  # no BOS/EOS template: packing places EOS itself
        assert auto.decode(ids, clean_up_tokenization_spaces=False) == text


def _gpt2_style_dir(root: Path, extra: list[str] | None = None) -> Path:
    """A tokenizer directory like GPT-2's: byte-level BPE with only <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        **({"extra_special_tokens": extra} if extra else {}),
    )
    hf.save_pretrained(str(root))
    return root


def test_load_tokenizer_extends_a_foreign_tokenizer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoTokenizer

    directory = _gpt2_style_dir(tmp_path / "gpt2")
    original = AutoTokenizer.from_pretrained(str(directory))
    old_vocab, old_size = original.get_vocab(), len(original)
    with caplog.at_level(logging.WARNING, logger="mmpretrain.data.tokenizer"):
        tok = load_tokenizer(directory)
    assert tok.eos_id == original.eos_token_id == old_vocab["<|endoftext|>"]  # its own EOS is kept
    new = [SPECIAL_TOKENS.pad, *MEDIA_TOKENS]
    assert [tok.hf.convert_tokens_to_ids(t) for t in new] == list(range(old_size, old_size + 7))
    assert (tok.pad_id, tok.image_id, tok.audio_end_id) == (old_size, old_size + 1, old_size + 6)
    assert tok.vocab_size == old_size + 7
    assert all(tok.hf.get_vocab()[token] == i for token, i in old_vocab.items())  # old ids unchanged
    assert tok.encode("<image>") == [tok.image_id]
    text = "The queen said <audio> nothing."
    assert tok.decode(tok.encode(text)) == text
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert all(token in warning for token in new) and "<|endoftext|>" not in warning

    tok.save(tmp_path / "extended")  # the extension is saved, so reloading adds nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmpretrain.data.tokenizer"):
        again = load_tokenizer(tmp_path / "extended")
    assert again.special_token_ids == tok.special_token_ids and not caplog.records


def test_load_tokenizer_keeps_existing_media_tokens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = _gpt2_style_dir(tmp_path / "gpt2", extra=["<image>"])
    image_id = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"][-1]
    assert image_id["content"] == "<image>"
    with caplog.at_level(logging.WARNING, logger="mmpretrain.data.tokenizer"):
        tok = load_tokenizer(directory)
    assert tok.image_id == image_id["id"]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "<image_start>" in warning and "<image>," not in warning


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as missing:
        load_tokenizer(tmp_path / "nowhere")
    assert "\n" not in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load a tokenizer from") as empty:
        load_tokenizer(tmp_path / "empty")
    assert "\n" not in str(empty.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/tokenizer.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "broken/tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match="cannot load a tokenizer from"):
        load_tokenizer(tmp_path / "broken")


def test_vocab_size_the_corpus_cannot_support_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"use --vocab-size \d+ or less, or more text"):
        train_bpe(CORPUS[:3], 5000)
    with pytest.raises(UserError, match="at least 256"):
        train_bpe(CORPUS, 100)


def test_registered_as_bpe(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    assert TOKENIZERS.get("bpe").config_class is BpeTokenizerConfig
    tokenizer.save(tmp_path / "tok")
    built = TOKENIZERS.build(BpeTokenizerConfig(name="bpe", path=str(tmp_path / "tok")))
    assert isinstance(built, TextTokenizer) and built.special_token_ids == tokenizer.special_token_ids
    with pytest.raises(ConfigError, match=r"tokenizer\.path is not set"):
        TOKENIZERS.build(BpeTokenizerConfig(name="bpe"))


# ---------------------------------------------------------------------------- CLI


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


def test_cli_trains_a_loadable_tokenizer(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--input", str(corpus_file), "--vocab-size", str(VOCAB), "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert f"{VOCAB} learned + 8 special = {VOCAB + 8} ids" in stdout
    assert f"<|endoftext|>={VOCAB}" in stdout and f"<audio_end>={VOCAB + 7}" in stdout
    assert "round trip:  ok" in stdout and "0 skipped" in stdout
    tok = load_tokenizer(out)
    assert (tok.learned_vocab_size, tok.image_id) == (VOCAB, VOCAB + 2)

    assert main(argv) == 2  # a non-empty --out is refused ...
    err = capsys.readouterr().err
    assert "is not empty; pass --overwrite" in err and err.count("\n") == 1
    assert main([*argv, "--overwrite"]) == 0  # ... unless --overwrite
    assert load_tokenizer(out).learned_vocab_size == VOCAB


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/tok"], "--vocab-size N is required"),
        (["--vocab-size", "300", "--out", "{tmp}/tok", "--config", "x.yaml"], "--config is for --kind vq"),
        (["--vocab-size", "100000", "--out", "{tmp}/tok"], "use --vocab-size"),
    ],
)
def test_cli_usage_errors_exit_2(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = ["tokenizer", "train", "--input", str(corpus_file), *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert "trained" not in out


def test_cli_missing_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.txt"
    argv = [
        "tokenizer",
        "train",
        "--input",
        str(missing),
        "--vocab-size",
        "300",
        "--out",
        str(tmp_path / "t"),
    ]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert "missing.txt" in err
    assert not (tmp_path / "t").exists()
