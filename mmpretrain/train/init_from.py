"""``train.init_from``: start a run from another run's model weights (a new stage).

Only the model's tensors are read (no optimizer state, step or data position). Token
rows are mapped by id between the checkpoint's vocabulary layout (``media_vocab`` in its
``state.json``; none for a text-only run) and this run's: text rows are kept, a media code
range is kept when the checkpoint has the same tokenizer (kind, size, fingerprint), and
every other row starts at the mean of the kept rows. This is how a text-only checkpoint
extends to early fusion without retraining from scratch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.media_vocab import MediaVocabulary
from mmpretrain.errors import UserError
from mmpretrain.model.extend_vocab import fill_rows
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.train.checkpoint import STATE_FILE, TENSORS_DIR, latest_checkpoint

VOCAB_STATE_KEY = "media_vocab"
"""Key of the vocabulary layout in a checkpoint's ``state.json``."""


def resolve_init_checkpoint(path: str | Path) -> Path:
    """The committed checkpoint ``path`` names (a checkpoint or a run directory)."""
    source = Path(path).expanduser()
    checkpoint = latest_checkpoint(source) if source.is_dir() else None
    if checkpoint is None:
        raise UserError(
            f"train.init_from: {path} is neither a committed checkpoint nor a run directory with one"
        )
    return checkpoint


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/step_N``)."""
    return checkpoint.parent.parent


def saved_vocabulary(checkpoint: Path) -> MediaVocabulary | None:
    """The vocabulary layout a checkpoint was trained with (None: a text-only run)."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"train.init_from: cannot read {checkpoint / STATE_FILE} ({exc})") from None
    saved = state.get(VOCAB_STATE_KEY)
    return MediaVocabulary.from_dict(saved) if saved else None


def row_sources(
    old: MediaVocabulary | None, new: MediaVocabulary | None, old_rows: int, new_rows: int
) -> list[int | None]:
    """For each new token row, the old row it takes (None: a new token)."""
    if new is None or old is None:
        text = min(old_rows, new.text_size if new is not None else old_rows)
        return [i if i < text else None for i in range(new_rows)]
    if old.text_size != new.text_size:
        raise UserError(
            f"train.init_from: the checkpoint's text vocabulary has {old.text_size} ids, this run's "
            f"{new.text_size}: use the text tokenizer the checkpoint was trained with"
        )
    sources: list[int | None] = [
        i if i < min(new.text_size, old_rows) else None for i in range(new.text_size)
    ]
    for modality, book in new.codebooks.items():
        same = old.codebooks.get(modality) == book
        start = old.offset(modality) if same else 0
        sources += [start + c if same else None for c in range(book.size)]
    return sources + [None] * (new_rows - len(sources))


def _token_row_tensors(model: MultimodalLM) -> set[str]:
    """Names of the tensors indexed by token id: input embeddings, LM head (and bias)."""
    llm: Any = model.llm
    tables = [llm.get_input_embeddings().weight]
    head = llm.get_output_embeddings()
    if head is not None:
        tables += [t for t in (head.weight, getattr(head, "bias", None)) if t is not None]
    wanted = {id(t) for t in tables}
    return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in wanted}


def _read_model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every ``model.*`` tensor of a DCP checkpoint, at its saved shape."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = HuggingFaceStorageReader(str(checkpoint / TENSORS_DIR))
    try:
        metadata = reader.read_metadata().state_dict_metadata
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"train.init_from: {checkpoint} is corrupt or incomplete ({exc})") from None
    tensors = {
        name[len("model.") :]: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for name, meta in metadata.items()
        if name.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(
            {f"model.{k}": v for k, v in tensors.items()},
            storage_reader=HuggingFaceStorageReader(str(checkpoint / TENSORS_DIR)),
            no_dist=True,
        )
    return tensors


def init_model_from(checkpoint: Path, model: MultimodalLM, vocab: MediaVocabulary | None) -> str:
    """Load ``checkpoint``'s model weights into ``model`` in place, token rows mapped by id;
    returns a one-line summary. LLM parameters the checkpoint lacks, or tensors whose shape
    differs (other than along the token rows), are a :class:`UserError`; other tensors it
    lacks (a new encoder or connector, a kernel's buffers) keep their fresh init."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    saved = _read_model_tensors(checkpoint)
    old_vocab = saved_vocabulary(checkpoint)
    current: dict[str, Any] = get_model_state_dict(model)
    rows = _token_row_tensors(model)
    missing = sorted(name for name in current if name not in saved)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    lacking = [name for name in missing if name.startswith("llm.") and name in parameters]
    if lacking:  # (buffers it lacks, such as a kernel's masks, keep their init)
        raise UserError(
            f"train.init_from: {checkpoint} lacks the LLM parameter {lacking[0]}; is it another model?"
        )
    loaded: dict[str, Any] = {}
    kept = fresh = 0
    for name, tensor in current.items():
        if name not in saved:
            loaded[name] = tensor
            continue
        old = saved[name]
        if old.shape[1:] != tensor.shape[1:] or (name not in rows and old.shape != tensor.shape):
            raise UserError(
                f"train.init_from: {name} is {tuple(old.shape)} in {checkpoint} but {tuple(tensor.shape)} "
                "in this model: the architectures differ"
            )
        if name in rows:
            sources = row_sources(old_vocab, vocab, old.shape[0], tensor.shape[0])
            table = torch.empty_like(tensor)
            fill_rows(table, old, sources)
            loaded[name] = table
            kept, fresh = sum(s is not None for s in sources), sum(s is None for s in sources)
        else:
            loaded[name] = old.to(tensor.dtype)
    set_model_state_dict(model, loaded)
    unused = len(set(saved) - set(current))
    notes = [f"token rows: {kept} kept, {fresh} new at the mean of the kept rows"]
    if missing:
        notes.append(f"{len(missing)} tensors the checkpoint lacks keep their init (first: {missing[0]})")
    if unused:
        notes.append(f"{unused} checkpoint tensors not in this model were left out")
    return f"initialised the model from {checkpoint} ({'; '.join(notes)})"
