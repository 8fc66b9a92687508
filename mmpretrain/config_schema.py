"""Walk config classes to describe every key: the data behind ``mmpt config schema``."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mmpretrain.config import ConfigModel, FromRegistry

_BUILTIN_PREFIX = "mmpretrain."
"""Module prefix of the built-in components' config classes."""


@dataclass(frozen=True)
class SchemaRow:
    """One documented key of the config schema."""

    key: str
    type: str
    default: str
    description: str


def _registry_marker(field: FieldInfo) -> FromRegistry | None:
    """The registry of a field (``Annotated[..., FromRegistry]`` itself or as dict values)."""
    marker = next((m for m in field.metadata if isinstance(m, FromRegistry)), None)
    if marker is None and is_mapping_field(field):
        value = get_args(field.annotation)[1]
        marker = next((m for m in getattr(value, "__metadata__", ()) if isinstance(m, FromRegistry)), None)
    return marker


def is_mapping_field(field: FieldInfo) -> bool:
    """Whether the field is a ``dict[str, X]`` (user-chosen keys, config values)."""
    return get_origin(field.annotation) is dict


def _mapping_values(field: FieldInfo) -> list[Any]:
    if not is_mapping_field(field):
        return _unwrap(field.annotation)
    value = get_args(field.annotation)[1]
    return _unwrap(get_args(value)[0] if get_origin(value) is typing.Annotated else value)


def _unwrap(annotation: Any) -> list[Any]:
    """Members of a union (``X | None`` -> [X]); anything else -> [annotation]."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def field_model_classes(field: FieldInfo) -> list[type[BaseModel]]:
    """Config classes a field's value is validated by (several for a registry union)."""
    marker = _registry_marker(field)
    if marker is not None:
        from mmpretrain.registry import get_registry

        return get_registry(marker.kind).config_classes()
    return [a for a in _mapping_values(field) if isinstance(a, type) and issubclass(a, BaseModel)]


def _list_item_classes(field: FieldInfo) -> list[type[BaseModel]]:
    """Config classes of a ``list[Config]`` or ``list[A | B]`` field (else [])."""
    lists = [a for a in _unwrap(field.annotation) if get_origin(a) is list]
    if len(lists) != 1:
        return []
    item = get_args(lists[0])[0]
    if get_origin(item) is typing.Annotated:
        item = get_args(item)[0]
    members = _unwrap(item)
    if all(isinstance(m, type) and issubclass(m, ConfigModel) for m in members):
        return members
    return []


def _tag_field(classes: list[type[BaseModel]]) -> str:
    """The field whose one-value ``Literal`` tells the members of a union apart (``format``)."""
    if len(classes) < 2:
        return ""
    for name in classes[0].model_fields:
        tagged = all(
            name in c.model_fields
            and get_origin(c.model_fields[name].annotation) is Literal
            and len(get_args(c.model_fields[name].annotation)) == 1
            for c in classes
        )
        if tagged:
            return name
    return ""


def type_name(annotation: Any) -> str:
    """Short readable type: ``int``, ``str | None``, ``'fp32' | 'bf16'``, ``list[str]``."""
    if annotation is type(None):
        return "None"
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation))
    if origin is typing.Annotated:
        return type_name(get_args(annotation)[0])
    if origin is not None:
        args = ", ".join(type_name(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return repr(value)


def schema_rows(model: type[BaseModel], prefix: str = "", *, builtin_only: bool = False) -> list[SchemaRow]:
    """Every key below ``model`` with type, default and description, nested sections and
    each member of a registry union (``model.llm[llama].hidden_size``) and the items of a
    list of sections (``model.kernels[].match``, ``data.sources[jsonl].path``) included. The keys
    of a ``dict[str, section]`` field are the user's: they show as ``<name>``
    (``stages.<name>.steps``). ``builtin_only``: leave out components registered by plugins
    (and by tests), so that the generated reference is the same on every machine."""
    rows: list[SchemaRow] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        description = " ".join((field.description or "").split())
        marker = _registry_marker(field)
        classes = field_model_classes(field)
        if marker is not None:
            if builtin_only:
                classes = [c for c in classes if c.__module__.startswith(_BUILTIN_PREFIX)]
            names = [str(get_args(c.model_fields["name"].annotation)[0]) for c in classes]
            rows.append(
                SchemaRow(key, f"one of {marker.kind}: {', '.join(names)}", "(required)", description)
            )
            for cls, member in zip(classes, names, strict=True):
                rows.extend(schema_rows(cls, f"{key}[{member}].", builtin_only=builtin_only))
        elif items := _list_item_classes(field):
            tag = _tag_field(items)
            values = [str(get_args(c.model_fields[tag].annotation)[0]) for c in items] if tag else []
            kind = f"list[one of {tag}: {', '.join(values)}]" if tag else "list[section]"
            rows.append(SchemaRow(key, kind, _default_text(field), description))
            for cls, value in zip(items, values or [""], strict=True):
                rows.extend(schema_rows(cls, f"{key}[{value}].", builtin_only=builtin_only))
        elif classes and all(issubclass(c, ConfigModel) for c in classes):
            mapping = is_mapping_field(field)
            kind = "dict[str, section]" if mapping else "section"
            rows.append(SchemaRow(key, kind, _default_text(field), description))
            for cls in classes:
                sub = f"{key}.<name>." if mapping else f"{key}."
                rows.extend(schema_rows(cls, sub, builtin_only=builtin_only))
        else:
            rows.append(SchemaRow(key, type_name(field.annotation), _default_text(field), description))
    return rows


def format_rows(rows: list[SchemaRow]) -> str:
    """Aligned plain-text table (one key per line, greppable)."""
    if not rows:
        return ""
    key_width = min(max(len(r.key) for r in rows), 48)
    type_width = min(max(len(r.type) for r in rows), 40)
    default_width = min(max(len(r.default) for r in rows), 24)
    lines = []
    for r in rows:
        columns = f"{r.key:<{key_width}}  {r.type:<{type_width}}  {r.default:<{default_width}}"
        lines.append(f"{columns}  {r.description}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------- markdown

REFERENCE_COMMAND = "mmpt config schema --markdown > docs/configuration.md"
"""The one command that regenerates ``docs/configuration.md`` (a test checks it is in sync)."""


def section_of(key: str) -> str:
    """The top-level section of a key: ``model.llm[llama].hidden_size`` -> ``model``."""
    return key.split(".")[0].split("[")[0]


def _cell(text: str, code: bool = False) -> str:
    """One table cell: ``|`` escaped (GFM splits cells on it even inside code spans)."""
    text = text.replace("|", "\\|")
    if code and text:
        fence = "``" if "`" in text else "`"
        pad = " " if fence == "``" else ""
        text = f"{fence}{pad}{text}{pad}{fence}"
    return text


def _table(rows: list[SchemaRow]) -> list[str]:
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for r in rows:
        cells = [_cell(r.key, True), _cell(r.type, True), _cell(r.default, True), _cell(r.description)]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def format_markdown(rows: list[SchemaRow], level: int = 2) -> str:
    """Markdown tables of ``rows``: a heading per top-level section (``level`` #s), then a
    table of its own keys and one sub-heading and table per registered component
    (``model.llm[llama]``). Input order is kept, so the output is deterministic."""
    sections: dict[str, list[SchemaRow]] = {}
    for r in rows:
        sections.setdefault(section_of(r.key), []).append(r)
    out: list[str] = []
    for name, section_rows in sections.items():
        out += [f"{'#' * level} {name}", ""]
        head = section_rows[0]
        if head.key == name and head.description:
            out += [head.description, ""]
        groups: dict[str, list[SchemaRow]] = {}
        for r in section_rows:  # keys inside a registry member go to that member's table
            member = r.key[: r.key.rindex("]") + 1] if "]" in r.key else ""
            groups.setdefault(member, []).append(r)
        for member, member_rows in groups.items():
            if member:
                out += [f"{'#' * (level + 1)} `{member}`", ""]
            out += [*_table(member_rows), ""]
    return "\n".join(out).rstrip("\n") + "\n"


_EXAMPLE_ERROR = (  # the real message, one line (a path shortened)
    "error: config error in .../configs/text/tiny.yaml: distributed.backnd: unknown key; "
    "allowed keys here: async_checkpoint, backend, cpu_offload, reshard_after_forward, "
    "timeout_minutes, zero_stage (did you mean 'backend'?) (from --set distributed.backnd=ddp)"
)

_PAGE_INTRO = """\
# Configuration reference

A run is described by one YAML file: the sections `model`, `data`, `train`, `optim` and
`distributed` below. A continual pre-training recipe is the same file plus the
[recipe keys](#recipes) (`stages`, `monitor`, `description`). Every key, its type, its
default and its meaning is listed here, generated from the pydantic config classes that
validate it (each component owns its config class next to its code; the descriptions are
their field docstrings). In a terminal, `mmpt config schema [SECTION]` prints the same
keys (`mmpt config schema model.llm`).

## How a config is put together

1. **A file or a shipped name.** `mmpt train CONFIG` takes a YAML path or the name of a
   config shipped in the package (`mmpt list configs`): `tiny` is `configs/text/tiny.yaml`.
2. **`base:` inheritance.** A file may name a `base:` to extend: a path relative to the
   file, an absolute path, a shipped config name, or a list of them, merged in order with
   the file itself last. Mappings merge key by key; anything else, lists included, is
   replaced. A cycle of bases is an error.

   ```yaml
   # configs/text/tiny.yaml
   base: ../models/llama_tiny.yaml
   model:
     llm:
       hidden_size: 192     # the rest of model.llm comes from the base
   ```

3. **`--set KEY=VALUE` overrides**, applied after the bases in the order given. The key is
   a dotted path and the value is parsed as YAML: `--set optim.lr=3e-4`,
   `--set train.precision=bf16`, `--set optim.betas=[0.9,0.95]`,
   `--set model.llm.pretrained=null`.
4. **Validation before any work.** The merged result is validated against the classes
   documented below. Unknown keys are rejected, never ignored, with the keys allowed at
   that place and the closest one; a component name that is not registered lists the
   registered ones. The command exits with status 2 and one line (`--debug` shows the
   traceback):

   ```
   $ mmpt train tiny --set distributed.backnd=ddp
   @EXAMPLE_ERROR@
   ```

`mmpt config show CONFIG [--set ...]` prints the fully resolved YAML (bases merged,
overrides applied, defaults filled in); `mmpt config show RECIPE --stage NAME` prints the
run config one stage of a recipe trains with. A run directory keeps the resolved config as
`config.yaml`.

## Reading the tables

- Keys are dotted paths: `train.max_steps` is `max_steps` in the `train` section.
- `one of llms: gemma, llama, ...` is a component chosen by its `name` among the registered
  ones (`mmpt list`). The keys of each choice follow under their own heading:
  `model.llm[llama].hidden_size` is `hidden_size` of `model.llm` when `model.llm.name` is
  `llama`. Where the field is a mapping whose keys you choose (`model.encoders`,
  `model.connectors`, `model.media_tokenizers`), `[hf_siglip]` is an entry with
  `name: hf_siglip`: `model.encoders[hf_siglip].image_size` is written
  `model: {encoders: {vision: {name: hf_siglip, image_size: 32}}}`, with `vision` a key of
  your choice. Components added by plugins take part the same way; this page lists the
  built-in ones.
- `[]` is an item of a list of sections: `data.shards.mix[].weight` is the `weight` of
  each entry of `data.shards.mix`. In a list whose items are told apart by a field
  (`data.sources`, by `format`), `data.sources[jsonl].field` belongs to the items with
  `format: jsonl`.
- `<name>` stands for a key you choose in a `dict[str, section]` field:
  `stages.<name>.steps` is `stages: {warmup: {steps: 100}}`.
- Defaults are written as Python values (`None` is YAML `null`, `True` is `true`);
  `(required)` has no default, `(section)` is a section whose keys all have defaults.
"""


def reference_page() -> str:
    """The whole of ``docs/configuration.md``: what it is, how configs compose, the run
    config's sections and the recipe keys, built-in components only (the same output on
    every machine)."""
    from mmpretrain.recipes.config import RecipeConfig
    from mmpretrain.run_config import RunConfig

    run_rows = schema_rows(RunConfig, builtin_only=True)
    recipe_rows = schema_rows(RecipeConfig, builtin_only=True)
    names = list(dict.fromkeys(section_of(r.key) for r in run_rows))
    contents = " · ".join(f"[{n}](#{n})" for n in [*names, "recipes"])
    header = (
        f"<!-- Generated by `{REFERENCE_COMMAND}` from the config classes' field docstrings.\n"
        "     Do not edit by hand: change the docstrings, regenerate, and commit both\n"
        "     (tests/test_docs_sync.py fails while they differ). -->\n\n"
    )
    recipes = (
        "## Recipes\n\n"
        "A recipe YAML (`configs/recipes/`, `mmpt train recipes/NAME`) is a run config (the\n"
        "sections above, `base:` and `--set` included) plus these top-level keys. Each stage\n"
        "resolves to a complete run config (the base with the stage's changes) that is validated\n"
        "when the recipe is loaded, so a wrong key in any stage fails before the first one runs.\n\n"
    )
    return (
        header
        + _PAGE_INTRO.replace("@EXAMPLE_ERROR@", _EXAMPLE_ERROR)
        + f"\nSections: {contents}\n\n"
        + format_markdown(run_rows)
        + "\n"
        + recipes
        + format_markdown(recipe_rows, level=3)
    )
