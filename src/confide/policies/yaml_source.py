"""Reading YAML safely while remembering which line each value came from.

PyYAML's `safe_load` builds plain Python values and forgets positions; to report
`FILE:LINE: field.path` we also walk the composed node tree (`yaml.compose` with the safe loader,
which constructs nothing) and record the line of every key. The same walk catches duplicate keys,
which `safe_load` would otherwise resolve silently by keeping the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from confide.policies.errors import PolicyError, Problem

Path_ = tuple[str | int, ...]


@dataclass
class YamlDocument:
    """The parsed data of one YAML file plus the 1-based line of every mapping key and list item."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int:
        """Line of `path`, or of its closest ancestor that exists in the file (1 for the document)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[Problem], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                problems.append(
                    Problem(file, line, dotted, f"duplicate key (first given on line {seen[key]})", "keep only one")
                )
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, problems, file)


def _too_deep(name: str) -> Problem:
    return Problem(name, 0, "", "YAML nested too deeply to read",
                   "a policy file is a few levels deep; fix its structure")


def read_yaml(path: Path) -> YamlDocument:
    """Parse `path` with the safe loader. Raises PolicyError for unreadable files, syntax errors and duplicate keys."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([Problem(name, 0, "", "file not found", "check the path")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([Problem(name, 0, "", f"cannot read file: {exc}", "it must be a UTF-8 text file")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        detail = exc.problem or exc.context or "invalid YAML"
        raise PolicyError([Problem(name, line, "", f"YAML syntax error: {detail}", "fix the YAML syntax")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(name, 0, "", f"YAML error: {exc}", "fix the YAML syntax")]) from None
    except RecursionError:
        raise PolicyError([_too_deep(name)]) from None
    doc = YamlDocument(name, data)
    problems: list[Problem] = []
    if node is not None:
        try:
            _walk(node, (), doc.lines, problems, name)
        except RecursionError:
            raise PolicyError([_too_deep(name)]) from None
    if problems:
        raise PolicyError(problems)
    return doc
