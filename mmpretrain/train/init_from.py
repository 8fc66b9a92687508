"""``train.init_from``: start a run from another run's (or model's) weights (a new stage).

Sources: a committed checkpoint or a run directory (its newest one); a directory saved by
``mmpt export --to safetensors`` (``model_config.yaml`` + weights, our tensor names); a
local transformers model directory (``config.json`` + safetensors: a ``*ForCausalLM``
loads into ``llm.*``, a Llava / Idefics3 / Qwen2-Audio directory through the importer).
:func:`init_model_from` reads model tensors only ("weights only"); with
``optim.load_init_state`` the loop then calls :func:`init_optimizer_from` ("weights +
optimizer": a checkpoint's Adam state for every parameter it has one for). The step, the
data position and the schedule always start afresh.

Token rows are mapped by id between the source's vocabulary layout (``media_vocab`` in a
checkpoint's ``state.json``, ``media_vocab.json`` beside exported weights; none for a
text-only model) and this run's: text rows are kept, a media code range is kept when the
source has the same tokenizer (kind, size, fingerprint), and every other row starts at the
mean of the kept rows (their Adam moments at zero). This is how a text-only checkpoint
extends to early fusion without retraining from scratch. :class:`InitReport` says what was
loaded, what is new (fresh init) and what the source had that this model does not use.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.media_vocab import VOCAB_FILE, MediaVocabulary
from mmpretrain.errors import UserError
from mmpretrain.model.extend_vocab import fill_rows
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.train.checkpoint import COMMITTED, STATE_FILE, TENSORS_DIR, latest_checkpoint

VOCAB_STATE_KEY = "media_vocab"
"""Key of the vocabulary layout in a checkpoint's ``state.json``."""
SAVED_MODEL_CONFIG = "model_config.yaml"
"""Marks a directory written by ``mmpt export --to safetensors`` (our tensor names)."""
TRANSFORMERS_CONFIG = "config.json"
"""Marks a transformers model directory."""


def source_kind(path: Path) -> str:
    """``checkpoint`` (a committed checkpoint), ``saved_model`` (``mmpt export --to
    safetensors``) or ``transformers`` (a transformers model directory)."""
    if (path / COMMITTED).is_file():
        return "checkpoint"
    if (path / SAVED_MODEL_CONFIG).is_file():
        return "saved_model"
    return "transformers"


def resolve_init_checkpoint(path: str | Path) -> Path:
    """The source ``path`` names: a committed checkpoint, the newest one of a run
    directory, or a model directory (exported weights or a transformers model)."""
    source = Path(path).expanduser()
    checkpoint = latest_checkpoint(source) if source.is_dir() else None
    if checkpoint is not None:
        return checkpoint
    markers = (source / SAVED_MODEL_CONFIG, source / TRANSFORMERS_CONFIG)
    if source.is_dir() and any(marker.is_file() for marker in markers):
        from mmpretrain.model.pretrained import has_weights

        if has_weights(source):
            return source
    raise UserError(
        f"train.init_from: {path} is neither a committed checkpoint nor a run directory with one, "
        "nor a model directory (model.safetensors + config.json or model_config.yaml)"
    )


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/step_N``, or a recipe
    stage's kept branch point ``RUN/kept/step_N``); a model directory is its own (its
    ``tokenizer/``, if any, is reused)."""
    return checkpoint.parent.parent if source_kind(checkpoint) == "checkpoint" else checkpoint


def saved_vocabulary(checkpoint: Path) -> MediaVocabulary | None:
    """The vocabulary layout a source was trained with (None: a text-only model)."""
    if source_kind(checkpoint) != "checkpoint":
        path = checkpoint / VOCAB_FILE
        return MediaVocabulary.load(path) if path.is_file() else None
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


def _read_dcp_tensors(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every ``<prefix>*`` tensor of a DCP checkpoint at its saved shape, prefix removed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = HuggingFaceStorageReader(str(checkpoint / TENSORS_DIR))
    try:
        metadata = reader.read_metadata().state_dict_metadata
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"train.init_from: {checkpoint} is corrupt or incomplete ({exc})") from None
    tensors = {
        name[len(prefix) :]: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for name, meta in metadata.items()
        if name.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    if not tensors:
        return tensors
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(
            {f"{prefix}{k}": v for k, v in tensors.items()},
            storage_reader=HuggingFaceStorageReader(str(checkpoint / TENSORS_DIR)),
            no_dist=True,
        )
    return tensors


def _read_model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every ``model.*`` tensor of a DCP checkpoint, at its saved shape."""
    return _read_dcp_tensors(checkpoint, "model.")


def read_source_tensors(source: Path) -> dict[str, torch.Tensor]:
    """The source's model tensors under this package's names (``llm.model.layers.0...``)."""
    kind = source_kind(source)
    if kind == "checkpoint":
        return _read_model_tensors(source)
    from mmpretrain.model.pretrained import read_weights

    if kind == "saved_model":
        return read_weights(source)
    from mmpretrain.export.importer import CAUSAL_LM_TYPES, MULTIMODAL_TYPES

    try:
        model_type = json.loads((source / TRANSFORMERS_CONFIG).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise UserError(f"train.init_from: cannot read {source / TRANSFORMERS_CONFIG} ({exc})") from None
    if model_type in CAUSAL_LM_TYPES:
        return {f"llm.{name}": tensor for name, tensor in read_weights(source).items()}
    if model_type in MULTIMODAL_TYPES:
        from mmpretrain.export.importer import import_hf_model

        return {k: v.detach().clone() for k, v in import_hf_model(source).model.state_dict().items()}
    raise UserError(
        f"train.init_from: {source} holds a {model_type!r} transformers model; supported: "
        f"{', '.join(CAUSAL_LM_TYPES + MULTIMODAL_TYPES)}"
    )


def _part(name: str) -> str:
    """``llm``, ``encoders.NAME`` or ``connectors.MODALITY`` of a tensor name."""
    head, _, rest = name.partition(".")
    return head if head == "llm" or not rest else f"{head}.{rest.split('.', 1)[0]}"


@dataclass
class InitReport:
    """What ``train.init_from`` did: tensors loaded from the source, tensors new to this
    model (fresh init), source tensors this model has no place for, token rows kept and
    new (the optimizer state is :func:`init_optimizer_from`'s)."""

    source: Path
    kind: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    rows_kept: int = 0
    rows_new: int = 0
    numel: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: ``initialised the model from SOURCE (...)``."""
        notes = [f"{len(self.loaded)} tensors loaded"]
        if self.rows_kept or self.rows_new:
            notes.append(
                f"token rows: {self.rows_kept} kept, {self.rows_new} new at the mean of the kept rows"
            )
        if self.new:
            notes.append(f"{len(self.new)} tensors the source lacks keep their init (first: {self.new[0]})")
        if self.unused:
            notes.append(f"{len(self.unused)} source tensors not in this model were left out")
        return f"initialised the model from {self.source} ({self.kind}; {'; '.join(notes)})"

    def table(self) -> str:
        """Per model part: tensors (parameters) loaded, new and unused."""
        rows: dict[str, list[int]] = {}
        for column, names in enumerate((self.loaded, self.new, self.unused)):
            for name in names:
                counts = rows.setdefault(_part(name), [0, 0, 0, 0, 0, 0])
                counts[column] += 1
                counts[3 + column] += self.numel.get(name, 0)
        lines = [f"  {'part':<22} {'loaded':>18} {'new (init)':>18} {'unused':>18}"]
        for part, c in sorted(rows.items()):
            cells = [f"{c[i]} ({c[3 + i]:,})" if c[i] else "-" for i in range(3)]
            lines.append(f"  {part:<22} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``init_report.json`` of a recipe stage)."""
        return {
            "source": str(self.source),
            "kind": self.kind,
            "loaded": self.loaded,
            "new": self.new,
            "unused": self.unused,
            "token_rows": {"kept": self.rows_kept, "new": self.rows_new},
        }

    def __str__(self) -> str:
        return f"{self.summary()}\n{self.table()}"


def init_model_from(checkpoint: Path, model: MultimodalLM, vocab: MediaVocabulary | None) -> InitReport:
    """Load the source's model weights into ``model`` in place, token rows mapped by id;
    returns the :class:`InitReport` (``str()`` of it is the summary line plus the per-part
    table). LLM parameters the source lacks, or tensors whose shape differs (other than
    along the token rows), are a :class:`UserError`; other tensors it lacks (a new encoder
    or connector, a kernel's buffers) keep their fresh init."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from mmpretrain.model.pretrained import tied_names

    saved = read_source_tensors(checkpoint)
    old_vocab = saved_vocabulary(checkpoint)
    current: dict[str, Any] = get_model_state_dict(model)
    rows = _token_row_tensors(model)
    ties = tied_names(model)
    for name in [n for n in current if n not in saved]:  # a tied weight saved once (transformers)
        twin = next((t for t in ties.get(name, []) if t in saved), None)
        if twin is not None:
            saved[name] = saved[twin]
    missing = sorted(name for name in current if name not in saved)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    lacking = [name for name in missing if name.startswith("llm.") and name in parameters]
    if lacking:  # (buffers it lacks, such as a kernel's masks, keep their init)
        raise UserError(
            f"train.init_from: {checkpoint} lacks the LLM parameter {lacking[0]}; is it another model?"
        )
    report = InitReport(
        checkpoint, source_kind(checkpoint), new=missing, unused=sorted(set(saved) - set(current))
    )
    report.numel = {name: int(t.numel()) for name, t in {**saved, **current}.items()}
    loaded: dict[str, Any] = {}
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
        report.loaded.append(name)
        if name in rows:
            sources = row_sources(old_vocab, vocab, old.shape[0], tensor.shape[0])
            table = torch.empty_like(tensor)
            fill_rows(table, old, sources)
            loaded[name] = table
            report.rows_kept = sum(s is not None for s in sources)
            report.rows_new = sum(s is None for s in sources)
        else:
            loaded[name] = old.to(tensor.dtype)
    set_model_state_dict(model, loaded)
    return report


def init_optimizer_from(
    checkpoint: Path, model: MultimodalLM, optimizer: torch.optim.Optimizer, vocab: MediaVocabulary | None
) -> str:
    """``optim.load_init_state`` ("weights + optimizer"): load the checkpoint's Adam state
    (moments, step counts) of every parameter ``optimizer`` trains that the checkpoint has
    state for (token tables row-mapped as the weights, new rows at zero); the others keep a
    fresh state. Returns a one-line summary. Full (unsharded) state dicts, so FSDP2 shards
    them as it loads."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    if source_kind(checkpoint) != "checkpoint":
        raise UserError(
            f"optim.load_init_state: {checkpoint} is a model directory without optimizer state; init "
            "from a run directory or checkpoint, or set optim.load_init_state=false (weights only)"
        )
    old_vocab = saved_vocabulary(checkpoint)
    rows = _token_row_tensors(model)
    saved = _read_dcp_tensors(checkpoint, "optim.")
    slots: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in saved.items():
        fqn, _, slot = name.rpartition(".")
        slots.setdefault(fqn, {})[slot] = value
    full = StateDictOptions(full_state_dict=True, strict=False)
    current: Any = get_optimizer_state_dict(model, optimizer, options=full)
    state: dict[str, dict[str, torch.Tensor]] = {}
    loaded, fresh = [], []
    for group in current["param_groups"]:
        for fqn in group["params"]:
            old, now = slots.get(fqn), current["state"].get(fqn, {})
            mapped = _fit_slots(old, now, row_sources if fqn in rows else None, old_vocab, vocab)
            if mapped is None:
                fresh.append(fqn)
            else:
                state[fqn] = mapped
                loaded.append(fqn)
    optim_state: Any = {"state": state, "param_groups": current["param_groups"]}
    set_optimizer_state_dict(model, optimizer, optim_state, options=full)
    first = f" (first fresh: {fresh[0]})" if fresh else ""
    return (
        f"optimizer state from {checkpoint}: loaded for {len(loaded)} parameters, "
        f"fresh for {len(fresh)}{first}"
    )


def _fit_slots(
    old: dict[str, torch.Tensor] | None,
    now: dict[str, Any],
    row_map: Any,
    old_vocab: MediaVocabulary | None,
    vocab: MediaVocabulary | None,
) -> dict[str, torch.Tensor] | None:
    """A parameter's saved Adam slots fitted to its current ones (token tables row-mapped
    with ``row_map``, new rows at zero); None when they do not fit (fresh state)."""
    if old is None or set(old) != set(now):
        return None
    fitted: dict[str, torch.Tensor] = {}
    for slot, tensor in old.items():
        target = now[slot]
        if tensor.shape == target.shape:
            fitted[slot] = tensor.to(target.dtype)
            continue
        if row_map is None or not tensor.ndim or tensor.shape[1:] != target.shape[1:]:
            return None
        table = torch.zeros(target.shape, dtype=target.dtype)
        kept = [
            (i, j)
            for i, j in enumerate(row_map(old_vocab, vocab, tensor.shape[0], target.shape[0]))
            if j is not None
        ]
        if kept:
            table[[i for i, _ in kept]] = tensor[[j for _, j in kept]].to(table.dtype)
        fitted[slot] = table
    return fitted
