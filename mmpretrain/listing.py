"""Text of `mmpt list`: every registry's names and the shipped configs."""

from __future__ import annotations

from mmpretrain.config import shipped_config_names, shipped_configs_dir
from mmpretrain.registry import REGISTRIES, RegistryEntry, ensure_loaded, plugin_failures


def _config_summary(name: str) -> str:
    """First comment line of a shipped config file."""
    for line in (shipped_configs_dir() / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def _entry_summary(kind: str, entry: RegistryEntry) -> str:
    """The entry's summary; kernel kinds lead with their backends (`emulate, cuda`)."""
    backends = getattr(entry.builder, "backends", None) if kind == "kernels" else None
    return f"[{', '.join(backends)}] {entry.summary}" if backends else entry.summary


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    lines = [title]
    if not rows:
        return [*lines, "  (none registered yet)"]
    width = max(len(name) for name, _ in rows)
    return lines + [f"  {name:<{width}}  {summary}".rstrip() for name, summary in rows]


def format_listing(kind: str | None = None) -> str:
    """Registered components of ``kind`` (all registries and configs when None)."""
    ensure_loaded()
    lines: list[str] = []
    for registry in REGISTRIES.values():
        if kind in (None, registry.kind):
            rows = [(e.name, _entry_summary(registry.kind, e)) for e in registry.entries()]
            lines += _section(f"{registry.kind}: {registry.description}", rows)
    if kind in (None, "configs"):
        rows = [(n, _config_summary(n)) for n in shipped_config_names()]
        lines += _section("configs: shipped YAML configs (`mmpt train NAME`)", rows)
    lines += [f"warning: {failure}" for failure in plugin_failures]
    return "\n".join(lines)
