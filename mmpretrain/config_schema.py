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


def schema_rows(model: type[BaseModel], prefix: str = "") -> list[SchemaRow]:
    """Every key below ``model`` with type, default and description, nested sections and
    each member of a registry union (``model.llm[llama].hidden_size``) included."""
    rows: list[SchemaRow] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        description = " ".join((field.description or "").split())
        marker = _registry_marker(field)
        classes = field_model_classes(field)
        if marker is not None:
            names = [str(get_args(c.model_fields["name"].annotation)[0]) for c in classes]
            rows.append(
                SchemaRow(key, f"one of {marker.kind}: {', '.join(names)}", "(required)", description)
            )
            for cls, member in zip(classes, names, strict=True):
                rows.extend(schema_rows(cls, f"{key}[{member}]."))
        elif classes and all(issubclass(c, ConfigModel) for c in classes):
            rows.append(SchemaRow(key, "section", _default_text(field), description))
            for cls in classes:
                rows.extend(schema_rows(cls, f"{key}."))
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
