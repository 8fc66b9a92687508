"""Registries: components register under short, stable names; plugins add more.

A component is a builder (a class or function) plus, optionally, its pydantic config
class. Config classes of one registry form the discriminated union on ``name`` that the
top-level config uses, so a plugin's component is configurable like a built-in one.

Third-party packages register through the entry-point group ``mmpretrain.plugins``: the
entry point names a module (importing it registers its components) or a callable with no
arguments (called once).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mmpretrain.errors import RegistryError

PLUGIN_GROUP = "mmpretrain.plugins"

# Modules whose import registers the built-in components. They keep heavy imports
# (transformers, timm) inside their builders so that loading them stays cheap.
BUILTIN_MODULES: tuple[str, ...] = (
    "mmpretrain.model.llms",
    "mmpretrain.data.tokenizer",
    "mmpretrain.connectors",
    "mmpretrain.encoders",
    "mmpretrain.kernels",
    "mmpretrain.eval.tasks",
    "mmpretrain.recipes",
)

BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])


@dataclass(frozen=True)
class RegistryEntry:
    """One registered component: its builder, its config class and where it came from."""

    name: str
    builder: Callable[..., Any]
    config_class: type | None
    origin: str

    @property
    def summary(self) -> str:
        """First line of the config class's (or the builder's) docstring."""
        for obj in (self.config_class, self.builder):
            doc = getattr(obj, "__doc__", None)
            if doc:
                return doc.strip().splitlines()[0]
        return ""


class Registry:
    """Name -> component mapping for one kind of component (``llms``, ``encoders``, ...)."""

    def __init__(self, kind: str, description: str) -> None:
        self.kind = kind
        self.description = description
        self._entries: dict[str, RegistryEntry] = {}
        if kind in REGISTRIES:
            raise RegistryError(f"a registry named {kind!r} already exists")
        REGISTRIES[kind] = self

    def register(self, name: str, *, config: type | None = None) -> Callable[[BuilderT], BuilderT]:
        """Decorator registering a builder under ``name``; a duplicate name is an error."""

        def decorate(builder: BuilderT) -> BuilderT:
            self.add(name, builder, config=config)
            return builder

        return decorate

    def add(self, name: str, builder: Callable[..., Any], *, config: type | None = None) -> None:
        """Register ``builder`` under ``name`` (the non-decorator form of :meth:`register`)."""
        origin = getattr(builder, "__module__", "?")
        if name in self._entries:
            previous = self._entries[name].origin
            raise RegistryError(
                f"{self.kind} name {name!r} is already registered (by {previous}); "
                f"{origin} tried to register it again: pick another name"
            )
        self._entries[name] = RegistryEntry(name, builder, config, origin)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (used by plugin tests to clean up)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> RegistryEntry:
        """The entry for ``name``; an unknown name raises an error listing the known ones."""
        ensure_loaded()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none registered)"
            raise RegistryError(f"unknown {self.kind} name {name!r}; registered: {known}")
        return self._entries[name]

    def build(self, config: Any, /, **kwargs: Any) -> Any:
        """Call the builder registered under ``config.name`` with the config and kwargs."""
        return self.get(config.name).builder(config, **kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        """Registered entries, sorted by name."""
        ensure_loaded()
        return [self._entries[n] for n in sorted(self._entries)]

    def config_classes(self) -> list[type]:
        """Config classes of all entries that have one (the members of the config union)."""
        return [e.config_class for e in self.entries() if e.config_class is not None]

    def __contains__(self, name: object) -> bool:
        ensure_loaded()
        return name in self._entries


REGISTRIES: dict[str, Registry] = {}

LLMS = Registry("llms", "decoder LLMs (transformers causal LMs)")
ENCODERS = Registry("encoders", "vision and speech encoders")
CONNECTORS = Registry("connectors", "projectors from encoder space to LLM space")
TOKENIZERS = Registry("tokenizers", "text and discrete media tokenizers")
KERNELS = Registry("kernels", "sparse and low-precision Linear kinds")
RECIPES = Registry("recipes", "continual pre-training recipes")
TASKS = Registry("tasks", "few-shot evaluation tasks")

_loaded = False
plugin_failures: list[str] = []


def ensure_loaded() -> None:
    """Import the built-in component modules and the installed plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: the modules imported below call back into registries
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    load_plugins()


def load_plugins() -> list[str]:
    """Load every ``mmpretrain.plugins`` entry point; returns the names loaded.

    A plugin that fails to import is reported on stderr and in ``plugin_failures`` and
    skipped, so one broken third-party package does not disable the whole CLI.
    """
    loaded = []
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            target = entry_point.load()
            if callable(target):
                target()
        except Exception as exc:
            message = f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}"
            plugin_failures.append(message)
            print(f"warning: {message}", file=sys.stderr)
            continue
        loaded.append(entry_point.name)
    return loaded


def get_registry(kind: str) -> Registry:
    """The registry called ``kind``; an unknown kind lists the known ones."""
    if kind not in REGISTRIES:
        raise RegistryError(f"unknown registry {kind!r}; known: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]
