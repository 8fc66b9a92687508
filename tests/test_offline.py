"""The offline guard of conftest really catches network use."""

from __future__ import annotations

import os
import socket

import pytest

from tests.conftest import NetworkAccessError


def test_hub_is_offline() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_guard_refuses_remote_hosts_and_records_them(offline_guard: list[str]) -> None:
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(NetworkAccessError):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(offline_guard) == 2
    offline_guard.clear()  # the attempts were this test's point; don't fail it at teardown


def test_guard_allows_loopback() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close()
    server.close()
