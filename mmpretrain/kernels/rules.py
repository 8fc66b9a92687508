"""Kernel rules: which ``nn.Linear`` modules (by fully-qualified name) get which kind.

A rule is written in either of two equivalent forms (``model.kernels`` is a list of them)::

    kernels:
      - {match: "llm.*.mlp.*", kind: sparse24, update_every: 100}        # shorthand
      - match: "llm.*.self_attn.*"                                       # explicit
        exclude: ["*.o_proj"]
        kernel: {name: fp8, scaling: rowwise}

The shorthand's extra keys are the kind's options; both forms validate against the kind's
config class (a wrong option fails naming the key). Globs use ``fnmatch`` on the module's
FQN as ``model.named_modules()`` gives it (``llm.model.layers.0.mlp.gate_proj``,
``encoders.vision...``, ``connectors.image...``); ``*`` also matches dots. The first rule
whose ``match`` covers a module and whose ``exclude`` does not takes it; later rules never
see it. ``lm_head`` and embedding layers stay dense unless a rule sets
``keep_output_dense: false``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from mmpretrain.config import ComponentConfig, ConfigModel, FromRegistry

# Output and embedding layers: quantizing or pruning them hurts quality most (BitNet,
# fp8 and 2:4 recipes all keep them dense), so rules skip them unless told otherwise.
DENSE_BY_DEFAULT: tuple[str, ...] = (
    "*lm_head",
    "*lm_head.*",
    "*embed_tokens*",
    "*embeddings*",
    "*wte",
    "*wpe",
)

_RULE_KEYS = {"match", "exclude", "kernel", "kind", "keep_output_dense"}


class KernelRule(ConfigModel):
    """One rule: Linear modules whose FQN matches `match` (and no `exclude`) get `kernel`."""

    match: list[str]
    """Glob(s) over module FQNs (`llm.*.mlp.*`); a single string is accepted."""
    exclude: list[str] = Field(default_factory=list)
    """Globs this rule does not take (later rules may)."""
    kernel: Annotated[ComponentConfig, FromRegistry("kernels")]
    """The kind and its options (`name` picks the kind, `mmpt list kernels`); the shorthand
    `kind: NAME` with the options beside it means the same."""
    keep_output_dense: bool = True
    """Leave `lm_head` and embedding layers dense even when `match` covers them."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``{match, kind: NAME, **options}`` -> ``{match, kernel: {name: NAME, **options}}``."""
        if not isinstance(data, dict) or "kind" not in data:
            return data
        if "kernel" in data:
            raise ValueError(
                "give either `kind:` (with the options beside it) or `kernel: {name: ...}`, not both"
            )
        rule = {k: v for k, v in data.items() if k in _RULE_KEYS and k != "kind"}
        options = {k: v for k, v in data.items() if k not in _RULE_KEYS}
        rule["kernel"] = {"name": data["kind"], **options}
        return rule

    @field_validator("match", "exclude", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("match")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("match needs at least one glob")
        return value

    def takes(self, fqn: str) -> bool:
        """Whether this rule claims the module named ``fqn``."""
        if not any(fnmatchcase(fqn, pattern) for pattern in self.match):
            return False
        if any(fnmatchcase(fqn, pattern) for pattern in self.exclude):
            return False
        return not (self.keep_output_dense and is_dense_by_default(fqn))

    def describe(self) -> str:
        """``match -> kind`` for messages."""
        return f"{','.join(self.match)} -> {self.kernel.name}"


def is_dense_by_default(fqn: str) -> bool:
    """Whether ``fqn`` is an output or embedding layer that rules leave dense by default."""
    return any(fnmatchcase(fqn, pattern) for pattern in DENSE_BY_DEFAULT)


def first_rule(rules: list[KernelRule], fqn: str) -> int | None:
    """Index of the first rule that takes ``fqn`` (None: the module stays dense)."""
    for index, rule in enumerate(rules):
        if rule.takes(fqn):
            return index
    return None
