"""The text tokenizer: byte-level BPE training, loading, and our special tokens.

``train_bpe`` learns a byte-level BPE of exactly ``vocab_size`` entries (256 bytes plus
merges) with the ``tokenizers`` library and adds :data:`SPECIAL_TOKENS` on top, in a fixed
order, so their ids are stable: ``id = vocab_size + position``. The media tokens exist from
the start, so a checkpoint trained on text alone extends to images and audio without
resizing its embeddings. ``load_tokenizer`` reads any local transformers tokenizer directory
and adds the special tokens it lacks.

``tokenizers`` and ``transformers`` are imported inside functions: ``mmpt list`` imports this
module through the registry and must stay fast.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import Field

from mmpretrain.config import ComponentConfig
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import TOKENIZERS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BYTE_ALPHABET_SIZE = 256
"""A byte-level BPE always holds the 256 byte symbols; merges come on top."""


class SpecialTokens(NamedTuple):
    """Our special tokens by role; the tuple order is the order of their ids."""

    eos: str
    pad: str
    image: str
    image_start: str
    image_end: str
    audio: str
    audio_start: str
    audio_end: str


SPECIAL_TOKENS = SpecialTokens(
    eos="<|endoftext|>",  # end of document; also the separator between packed documents (no BOS)
    pad="<|pad|>",
    image="<image>",
    image_start="<image_start>",
    image_end="<image_end>",
    audio="<audio>",
    audio_start="<audio_start>",
    audio_end="<audio_end>",
)
"""Special tokens in id order: a trained tokenizer gives ``SPECIAL_TOKENS[i]`` the id
``vocab_size + i``. Roles are the field names (``SPECIAL_TOKENS.image``)."""

MEDIA_TOKENS: tuple[str, ...] = SPECIAL_TOKENS[2:]
"""The media placeholder and begin/end markers (registered as extra special tokens)."""


class TextTokenizer:
    """A transformers fast tokenizer plus the ids of our special tokens.

    ``encode`` adds no special tokens (packing places EOS itself); ``decode`` keeps them and
    does not clean up spaces, so ``decode(encode(text)) == text`` for a byte-level BPE.
    """

    def __init__(self, hf: PreTrainedTokenizerFast) -> None:
        self._hf = hf
        ids: dict[str, int] = {}
        for role, token in zip(SpecialTokens._fields, SPECIAL_TOKENS, strict=True):
            if role == "eos":
                token = hf.eos_token
            elif role == "pad":
                token = hf.pad_token
            token_id = hf.convert_tokens_to_ids(token) if token is not None else None
            if not isinstance(token_id, int) or (token_id == hf.unk_token_id and token != hf.unk_token):
                raise UserError(
                    f"tokenizer lacks the {role} token {token!r}; load it with "
                    "mmpretrain.data.tokenizer.load_tokenizer, which adds the missing special tokens"
                )
            ids[role] = token_id
        self._ids = ids

    @property
    def hf(self) -> PreTrainedTokenizerFast:
        """The wrapped transformers tokenizer."""
        return self._hf

    @property
    def special_token_ids(self) -> dict[str, int]:
        """Role (``eos``, ``pad``, ``image``, ...) -> token id."""
        return dict(self._ids)

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def image_id(self) -> int:
        return self._ids["image"]

    @property
    def image_start_id(self) -> int:
        return self._ids["image_start"]

    @property
    def image_end_id(self) -> int:
        return self._ids["image_end"]

    @property
    def audio_id(self) -> int:
        return self._ids["audio"]

    @property
    def audio_start_id(self) -> int:
        return self._ids["audio_start"]

    @property
    def audio_end_id(self) -> int:
        return self._ids["audio_end"]

    @property
    def vocab_size(self) -> int:
        """All ids, special tokens included (the size of the model's embedding table)."""
        return len(self._hf)

    @property
    def learned_vocab_size(self) -> int:
        """Entries of the tokenization model itself, without added (special) tokens."""
        return int(self._hf.backend_tokenizer.get_vocab_size(with_added_tokens=False))

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no special tokens are added (special tokens written in the
        text, such as ``<image>``, become their single id)."""
        return list(self._hf.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once, through the Rust backend (multi-threaded)."""
        encodings = self._hf.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens kept, spaces untouched."""
        return str(self._hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def save(self, directory: str | Path) -> Path:
        """Write a transformers tokenizer directory (tokenizer.json, tokenizer_config.json);
        ``AutoTokenizer.from_pretrained(directory)`` loads it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._hf.save_pretrained(str(out))
        return out


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """Learn a byte-level BPE of exactly ``vocab_size`` entries from ``texts`` and add
    :data:`SPECIAL_TOKENS` as ids ``vocab_size .. vocab_size + 7``.

    Deterministic: the same texts give the same tokenizer. Raises :class:`UserError` when
    ``vocab_size`` is below the byte alphabet or the text supports fewer merges (pairs seen
    at least ``min_frequency`` times) than ``vocab_size`` needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < BYTE_ALPHABET_SIZE:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: a byte-level BPE holds the "
            f"{BYTE_ALPHABET_SIZE} byte symbols, so use at least {BYTE_ALPHABET_SIZE}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    learned = backend.get_vocab_size()
    if learned != vocab_size:
        raise UserError(
            f"the training text supports only {learned} vocabulary entries ({BYTE_ALPHABET_SIZE} bytes + "
            f"{learned - BYTE_ALPHABET_SIZE} merges of pairs seen at least {min_frequency} times), "
            f"not --vocab-size {vocab_size}: use --vocab-size {learned} or less, or more text"
        )
    backend.add_special_tokens([_special(token) for token in SPECIAL_TOKENS])
    ids = [backend.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != list(range(vocab_size, vocab_size + len(SPECIAL_TOKENS))):  # stable ids are the contract
        raise RuntimeError(f"special token ids {ids} do not follow the learned vocabulary of {vocab_size}")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=_special(SPECIAL_TOKENS.eos),
        pad_token=_special(SPECIAL_TOKENS.pad),
        extra_special_tokens=[_special(token) for token in MEDIA_TOKENS],
    )
    return TextTokenizer(hf)


def _special(token: str) -> Any:
    from tokenizers import AddedToken

    # normalized=False and no stripping: the token matches exactly the text written
    return AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False)


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a local transformers tokenizer directory (ours or any fast tokenizer).

    Special tokens it lacks are added (a vocabulary extension, logged as a warning): it
    keeps its own EOS and pad tokens when it has them, else gets ``<|endoftext|>`` and
    ``<|pad|>``; the media tokens are added unless present. Existing ids never change.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise UserError(
            f"tokenizer directory {str(path)!r} does not exist; train one with `mmpt tokenizer train "
            "--input PATH --vocab-size N --out DIR` or give a local transformers tokenizer directory"
        )
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        hf = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as exc:  # OSError, ValueError, JSON and tokenizers errors alike
        reason = " ".join(str(exc).split())[:300]
        raise UserError(f"cannot load a tokenizer from {directory}: {type(exc).__name__}: {reason}") from exc
    if not isinstance(hf, PreTrainedTokenizerFast):
        raise UserError(
            f"{directory} holds a slow ({type(hf).__name__}) tokenizer; a fast tokenizer "
            "(tokenizer.json) is needed"
        )
    added = _add_missing_special_tokens(hf)
    if added:
        logger.warning(
            "tokenizer %s lacked %s: added them as special tokens (ids %d..%d, %d in all); "
            "the model's embedding table needs %d rows",
            directory,
            ", ".join(added),
            hf.convert_tokens_to_ids(added[0]),
            hf.convert_tokens_to_ids(added[-1]),
            len(added),
            len(hf),
        )
    return TextTokenizer(hf)


def _add_missing_special_tokens(hf: PreTrainedTokenizerFast) -> list[str]:
    """Give ``hf`` our eos/pad roles and media tokens; returns the tokens new to its vocab."""
    vocab = hf.get_vocab()
    update: dict[str, Any] = {}
    if hf.eos_token is None:
        update["eos_token"] = _special(SPECIAL_TOKENS.eos)
    if hf.pad_token is None:
        update["pad_token"] = _special(SPECIAL_TOKENS.pad)
    special = set(hf.all_special_tokens)
    media = [_special(token) for token in MEDIA_TOKENS if token not in special]
    if media:
        update["extra_special_tokens"] = media
    if not update:
        return []
    hf.add_special_tokens(update, replace_extra_special_tokens=False)
    candidates = [str(v) for k, v in update.items() if k != "extra_special_tokens"] + [str(t) for t in media]
    return [token for token in candidates if token not in vocab]


# ---------------------------------------------------------------------------- registry


class BpeTokenizerConfig(ComponentConfig):
    """Byte-level BPE text tokenizer (trained by `mmpt tokenizer train`)."""

    name: Literal["bpe"]
    path: str | None = None
    """Tokenizer directory to load: one trained by `mmpt tokenizer train` or any local
    transformers tokenizer directory (missing special tokens are added)."""
    vocab_size: int = Field(4096, ge=BYTE_ALPHABET_SIZE)
    """Learned vocabulary size when training (special tokens come on top)."""


@TOKENIZERS.register("bpe", config=BpeTokenizerConfig)
def build_bpe_tokenizer(cfg: BpeTokenizerConfig) -> TextTokenizer:
    """Load the tokenizer directory ``cfg.path``."""
    if cfg.path is None:
        raise ConfigError(
            "tokenizer.path is not set: train a tokenizer with `mmpt tokenizer train --input PATH "
            f"--vocab-size {cfg.vocab_size} --out DIR` and set tokenizer.path to DIR"
        )
    return load_tokenizer(cfg.path)
