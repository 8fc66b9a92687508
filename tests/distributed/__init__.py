"""Distributed training tests (a package, so its conftest does not shadow others named conftest)."""
