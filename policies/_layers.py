"""Layered policy documents: ``extends`` and tenant overrides merged with their positions kept.

A policy can be built from several YAML documents (a base it ``extends``, the file itself, a
tenant's overrides). The merge rule is the same everywhere and fits in one sentence: **mappings
merge key by key, and anything else (a number, a string, a list such as ``rules``) given by a
later layer replaces the earlier value whole.**

Every merged value remembers the file and YAML node it came from, so a validation error after
merging still points at the line that wrote the offending value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Origin:
    """Where a value was written: its source, the node of its key (if any) and of its value."""

    source: str
    key: yaml.Node | None
    value: yaml.Node


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _origins(node: yaml.Node, source: str, path: Loc, key: yaml.Node | None) -> Iterator[Any]:
    """``(path, Origin)`` for a node and everything under it (aliases visited once per path)."""
    yield path, Origin(source, key, node)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                yield from _origins(value_node, source, (*path, key_node.value), key_node)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _origins(item, source, (*path, index), None)


@dataclass
class Layered:
    """Plain data plus the origin of every value in it, keyed by its path."""

    data: dict[str, Any]
    origins: dict[Loc, Origin] = field(default_factory=dict)

    @classmethod
    def from_document(cls, data: dict[str, Any], root: yaml.Node, source: str) -> Layered:
        """One YAML document: its data and the positions of every node in it."""
        return cls(data, dict(_origins(root, source, (), None)))

    def pop(self, key: str) -> tuple[Any, Layered | None]:
        """Remove a top-level key; its value and, for a mapping, that value as a ``Layered``."""
        value = self.data.pop(key, None)
        inner = {path[1:]: origin for path, origin in self.origins.items() if path[:1] == (key,)}
        for path in [p for p in self.origins if p[:1] == (key,)]:
            del self.origins[path]
        if isinstance(value, dict):
            return value, Layered(value, inner)
        return value, None

    def child(self, key: str) -> Layered:
        """The mapping under a top-level key as its own ``Layered`` (the data is shared)."""
        inner = {p[1:]: o for p, o in self.origins.items() if p[:1] == (key,)}
        return Layered(dict(self.data[key] or {}), inner)

    def origin(self, path: Loc) -> Origin | None:
        """Where the value at ``path`` was written, if it was."""
        return self.origins.get(path)

    def nearest(self, loc: Loc) -> tuple[Loc, Origin]:
        """The longest prefix of ``loc`` that some layer wrote, and its origin."""
        for end in range(len(loc), -1, -1):
            found = self.origins.get(loc[:end])
            if found is not None:
                return loc[:end], found
        raise LookupError("a layered document always has a root origin")


def merge(base: Layered, override: Layered) -> Layered:
    """``override`` on top of ``base`` (neither is changed): mappings merge, the rest replaces."""
    origins = dict(base.origins)
    data = _merge(base.data, override.data, (), origins, override.origins)
    root = override.origins.get(())
    if root is not None and () not in base.origins:
        origins[()] = root
    return Layered(data, origins)


def _merge(
    base: Any, override: Any, path: Loc, origins: dict[Loc, Origin], new: dict[Loc, Origin]
) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            child = (*path, key)
            if key in base and isinstance(base[key], dict) and isinstance(value, dict):
                if child in new:
                    origins[child] = new[child]
                merged[key] = _merge(base[key], value, child, origins, new)
            else:
                _replace(child, origins, new)
                merged[key] = value
        return merged
    _replace(path, origins, new)
    return override


def _replace(path: Loc, origins: dict[Loc, Origin], new: dict[Loc, Origin]) -> None:
    size = len(path)
    for old in [p for p in origins if p[:size] == path]:
        del origins[old]
    origins.update((p, origin) for p, origin in new.items() if p[:size] == path)


def locate(layered: Layered, loc: Loc, *, want_key: bool = False) -> tuple[str, int, int]:
    """Source, line and column for an error at ``loc``.

    The key's position when ``want_key`` (an unknown key); for a missing key, the key of the
    innermost mapping that exists (where the key belongs); otherwise the value's position.
    """
    prefix, origin = layered.nearest(loc)
    exact = prefix == loc
    node = origin.value
    if (want_key and exact) or not exact:
        node = origin.key or origin.value
    line, column = _position(node)
    return origin.source, line, column
