"""The config system: typed pydantic models, YAML with ``base:`` inheritance, overrides.

Every component owns a config class (a :class:`ConfigModel`: unknown keys are errors,
instances are frozen). Fields whose value is chosen among registered components are
annotated with :class:`FromRegistry`, which turns the registry's config classes into a
discriminated union on ``name`` when the schema is first built, so plugins take part.

A wrong key or value raises :class:`~mmpretrain.errors.ConfigError` before any work is
done, naming the key path, the allowed keys or values and, for ``--set``, the override.
"""

from __future__ import annotations

import difflib
import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, core_schema

from mmpretrain.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every config class: unknown keys are errors, instances are immutable.

    Field docstrings become the descriptions that ``mmpt config schema`` prints. The
    schema is built on first use (``defer_build``) so registry unions see every plugin.
    """

    # allow_inf_nan=False: `optim.lr=.inf` or `nan` passes a `gt=0` bound but is never meant
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, defer_build=True, allow_inf_nan=False
    )


class ComponentConfig(ConfigModel):
    """Config of a registered component; ``name`` selects the component."""

    name: str


@dataclass(frozen=True)
class FromRegistry:
    """Annotation marker: the field is one of the configs registered in registry ``kind``.

    Use as ``Annotated[ComponentConfig, FromRegistry("llms")]``.
    """

    kind: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from mmpretrain.registry import get_registry

        classes = get_registry(self.kind).config_classes()
        if not classes:
            kind = self.kind

            def nothing_registered(value: Any) -> Any:
                raise ValueError(f"no {kind} are registered, so none can be configured")

            return core_schema.no_info_plain_validator_function(nothing_registered)
        if len(classes) == 1:
            return handler.generate_schema(classes[0])
        union = Union.__getitem__(tuple(classes))  # built at run time from the registry
        return handler.generate_schema(_annotated(union, Field(discriminator="name")))


def _annotated(tp: Any, *metadata: Any) -> Any:
    from typing import Annotated

    return Annotated[(tp, *metadata)]


# ---------------------------------------------------------------------------- files


def shipped_configs_dir() -> Path:
    """Directory of the YAML configs shipped in the package (``mmpretrain.configs``)."""
    return Path(str(importlib.resources.files("mmpretrain.configs")))


def shipped_config_names() -> list[str]:
    """Names of shipped configs (path below the configs dir, without ``.yaml``)."""
    root = shipped_configs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Find a config file: an existing path, a path relative to ``relative_to``, or the
    name of a shipped config (``tiny``, ``text/tiny`` or ``text/tiny.yaml``)."""
    candidate = Path(name_or_path)
    if relative_to is not None and not candidate.is_absolute() and (relative_to / candidate).is_file():
        return (relative_to / candidate).resolve()
    if candidate.is_file():
        return candidate.resolve()
    name = str(name_or_path).removesuffix(".yaml").removesuffix(".yml")
    names = shipped_config_names()
    if name in names:
        return shipped_configs_dir() / f"{name}.yaml"
    by_stem = [n for n in names if n.rsplit("/", 1)[-1] == name]
    if len(by_stem) == 1:
        return shipped_configs_dir() / f"{by_stem[0]}.yaml"
    if len(by_stem) > 1:
        raise ConfigError(f"config name {name!r} is ambiguous: use one of {', '.join(by_stem)}")
    hint = difflib.get_close_matches(name, names, n=3)
    suggestion = f"; did you mean {', '.join(hint)}?" if hint else "; `mmpt list configs` shows them"
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a shipped config name{suggestion}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml_with_bases(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, recursively merging the file(s) named by its ``base:`` key.

    ``base`` is a path relative to the file, an absolute path, a shipped config name, or
    a list of those (merged in order, the file itself last).
    """
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"config base cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config {path}: 'base' must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for base in bases:
        try:
            base_path = resolve_config_path(base, relative_to=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"config {path}: base {base!r} not found ({exc})") from exc
        merged = deep_merge(merged, load_yaml_with_bases(base_path, (*_chain, path)))
    return deep_merge(merged, data)


# ---------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE`` into a key path and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``KEY=VALUE`` override set (types are checked
    later by the schema, which also rejects unknown keys with their full path)."""
    result = deep_merge({}, data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[path[-1]] = value
    return result


# ---------------------------------------------------------------------------- validation


def validate_config(
    schema: type[ModelT], data: Mapping[str, Any], source: str, overrides: Sequence[str] = ()
) -> ModelT:
    """Validate ``data`` against ``schema``; any problem becomes one ConfigError line."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, schema, data, source, overrides)) from exc


def format_validation_error(
    exc: ValidationError,
    schema: type[BaseModel],
    data: Mapping[str, Any],
    source: str,
    overrides: Sequence[str] = (),
) -> str:
    """One line naming the first bad key path, what is allowed, and how many more."""
    errors = exc.errors(include_url=False)
    messages = [_describe_error(err, schema, data, overrides) for err in errors]
    line = f"config error in {source}: {messages[0]}"
    if len(messages) > 1:
        line += f" (+{len(messages) - 1} more: {'; '.join(messages[1:4])})"
    return line


def _describe_error(
    err: Mapping[str, Any], schema: type[BaseModel], data: Mapping[str, Any], overrides: Sequence[str]
) -> str:
    path = display_path(err["loc"], data)
    key = ".".join(path) or "(top level)"
    if err["type"] == "extra_forbidden":
        model = model_class_at(schema, path[:-1], data)
        allowed = sorted(model.model_fields) if model else []
        hint = difflib.get_close_matches(path[-1], allowed, n=1)
        message = f"{key}: unknown key; allowed keys here: {', '.join(allowed)}"
        if hint:
            message += f" (did you mean {hint[0]!r}?)"
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        key = f"{key}.{ctx.get('discriminator', 'name').strip(chr(39))}"
        given = f"{ctx['tag']!r} is not registered" if "tag" in ctx else "missing"
        message = f"{key}: {given}; allowed: {ctx.get('expected_tags', '?')}"
    else:
        message = f"{key}: {err['msg']}"
    for text in overrides:
        if text.partition("=")[0].strip() == key:
            message += f" (from --set {text})"
    return message


def display_path(loc: Sequence[Any], data: Any) -> list[str]:
    """The user's key path for a pydantic error location: drops the union tags pydantic
    inserts (``model.llm.llama.hidden_size`` -> ``model.llm.hidden_size``)."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(node, Mapping) and item not in node and node.get("name") == item:
            continue
        parts.append(f"[{item}]" if isinstance(item, int) else str(item))
        if isinstance(node, Mapping):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            node = node[item]
        else:
            node = None
    # list indices attach to the preceding key: "a.[0].b" -> "a[0].b"
    joined: list[str] = []
    for part in parts:
        if part.startswith("[") and joined:
            joined[-1] += part
        else:
            joined.append(part)
    return joined


def model_class_at(schema: type[BaseModel], path: Sequence[str], data: Any) -> type[BaseModel] | None:
    """The config class that validates the mapping at ``path`` (None if not a model)."""
    from mmpretrain.config_schema import field_model_classes, is_mapping_field

    model: type[BaseModel] | None = schema
    node = data
    parts = list(path)
    while parts:
        if model is None:
            return None
        key = parts.pop(0).split("[", 1)[0]
        node = node.get(key) if isinstance(node, Mapping) else None
        field = model.model_fields.get(key)
        if field is None:
            return None
        if is_mapping_field(field):  # dict[str, Config]: the next part is the user's key
            if not parts:
                return None
            node = node.get(parts.pop(0)) if isinstance(node, Mapping) else None
        candidates = field_model_classes(field)
        name = node.get("name") if isinstance(node, Mapping) else None
        chosen = [c for c in candidates if _literal_name(c) == name] if len(candidates) > 1 else candidates
        model = chosen[0] if chosen else None
    return model


def _literal_name(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("name")
    args = getattr(field.annotation, "__args__", ()) if field else ()
    return args[0] if args else None


# ---------------------------------------------------------------------------- entry points


def load_config(
    name_or_path: str | Path,
    overrides: Sequence[str] = (),
    schema: type[ModelT] | None = None,
) -> ModelT:
    """Load a config by path or shipped name, apply ``--set`` overrides, validate.

    Without ``schema`` the top-level :class:`~mmpretrain.run_config.RunConfig` is used.
    """
    if schema is None:
        from mmpretrain.run_config import RunConfig

        schema = RunConfig  # type: ignore[assignment]
    assert schema is not None
    path = resolve_config_path(name_or_path)
    data = apply_overrides(load_yaml_with_bases(path), overrides)
    return validate_config(schema, data, str(path), overrides)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (keys in schema order), loadable by :func:`load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
