"""Exception types that separate user mistakes from internal bugs.

The CLI turns a :class:`UserError` into one clear line and exit code 2 (``--debug``
shows the traceback); anything else is an internal error (exit code 1).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad config, a missing or corrupt file, a bad flag."""


class ConfigError(UserError):
    """A configuration file, key or value is wrong."""


class RegistryError(UserError):
    """A registry name is unknown or registered twice."""


class DataFormatError(UserError):
    """A shard, sample or batch does not follow the data format (docs/data-format.md)."""
