"""YAML configs shipped with the package, resolvable by name (``mmpt list configs``)."""
