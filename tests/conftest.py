"""Shared test set-up: offline, single-threaded, deterministic, tiny models.

Every test runs with the hub switched off (HF_HUB_OFFLINE=1) and with a guard that fails
the test if it tried to open a network connection to anything but this machine.
"""

from __future__ import annotations

import os

# Set before transformers/huggingface_hub are imported anywhere in the test process.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ipaddress  # noqa: E402
import socket  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


class NetworkAccessError(OSError):
    """Raised by the offline guard when a test tries to reach another host."""


def _is_local(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else address
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def offline_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse non-loopback connections and DNS look-ups; fail the test if any was tried
    (even if the code under test caught the error and carried on)."""
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def guarded(real: Callable[..., Any]) -> Callable[..., Any]:
        def connect(self: socket.socket, address: Any) -> Any:
            if not _is_local(address):
                attempts.append(f"connect {address!r}")
                raise NetworkAccessError(f"test tried to reach {address!r}; tests must stay offline")
            return real(self, address)

        return connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local((host,)):
            attempts.append(f"resolve {host!r}")
            raise NetworkAccessError(f"test tried to resolve {host!r}; tests must stay offline")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    if attempts:
        pytest.fail(f"test tried to use the network: {attempts}")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


TINY_LLM_FIELDS: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "max_position_embeddings": 128,
}


@pytest.fixture
def tiny_llm_config() -> Callable[..., Any]:
    """Factory: the tiny config of a registered LLM name (extra fields override)."""
    from mmpretrain.registry import LLMS

    def make(name: str = "llama", **overrides: Any) -> Any:
        config_class = LLMS.get(name).config_class
        assert config_class is not None
        return config_class(**{"name": name, **TINY_LLM_FIELDS, **overrides})

    return make


@pytest.fixture
def tiny_llama(tiny_llm_config: Callable[..., Any]) -> Any:
    """A tiny random-init Llama causal LM (built offline in milliseconds)."""
    from mmpretrain.registry import LLMS

    return LLMS.build(tiny_llm_config("llama"))
