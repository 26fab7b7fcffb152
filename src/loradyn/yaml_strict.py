"""YAML reading shared by spec files and ``key=value`` overrides: a safe loader that refuses a key
written twice in one mapping (plain YAML silently keeps the last one)."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKey", "UniqueKeyLoader"]


class DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (at any depth).

    Plain YAML keeps the last value silently. Keys merged in with ``<<: *anchor`` may still be
    overridden by the mapping's own keys, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
        return super().construct_mapping(node, deep=deep)
