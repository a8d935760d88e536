"""Loading policy files: YAML in, validated pydantic model out, or every problem as FILE:LINE lines."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from confide.policies.common import FieldProblem
from confide.policies.errors import PolicyError, Problem
from confide.policies.federation import FederationPolicy
from confide.policies.institution import InstitutionPolicy
from confide.policies.yaml_source import YamlDocument, read_yaml

M = TypeVar("M", bound=BaseModel)

KINDS: dict[str, type[BaseModel]] = {"federation": FederationPolicy, "institution": InstitutionPolicy}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _locate(model: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[type[BaseModel] | None, str | None]:
    """Walk `loc` through nested models: (model that owns the last named field, that field's name)."""
    owner: type[BaseModel] | None = model
    name: str | None = None
    for part in loc:
        if isinstance(part, int) or owner is None:
            continue
        if part not in owner.model_fields:
            return owner, None
        name = part
        inner = _model_in(owner.model_fields[part].annotation)
        if inner is None:
            return owner, part
        owner = inner
    return owner, name


def _hint(model: type[BaseModel], loc: tuple[str | int, ...], error: dict[str, Any]) -> str:
    owner, name = _locate(model, loc[:-1] if error["type"] == "extra_forbidden" else loc)
    if error["type"] == "extra_forbidden" and owner is not None:
        allowed = list(owner.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        prefix = f"did you mean `{close[0]}`? " if close else "remove it; "
        return prefix + "allowed keys here: " + ", ".join(allowed)
    if owner is not None and name is not None and name in owner.model_fields:
        description = owner.model_fields[name].description or ""
        if error["type"] == "missing":
            return f"add `{name}`: {description}".rstrip(": ")
        return description
    return ""


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required field is missing"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def problems_from_validation(doc: YamlDocument, model: type[BaseModel], exc: ValidationError) -> list[Problem]:
    """Turn pydantic's errors into file/line problems, pointing each at the most specific line known."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        hint = ""
        if isinstance(cause, FieldProblem):
            loc = loc + cause.path
            hint = cause.hint
        dotted = ".".join(str(p) for p in loc)
        problems.append(Problem(doc.file, doc.line_of(loc), dotted, _message(error), hint or _hint(model, loc, error)))
    problems.sort(key=lambda p: p.line)
    return problems


def _resolve_paths(policy: M, base: Path) -> M:
    """Make the institution's relative paths relative to the policy file, not to the working directory."""
    if not isinstance(policy, InstitutionPolicy):
        return policy

    def absolute(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    data = policy.data.model_copy(update={"path": absolute(policy.data.path)})
    return policy.model_copy(
        update={"data": data, "state_dir": absolute(policy.state_dir), "identity_dir": absolute(policy.identity_dir),
                "ledger_witness_dirs": [absolute(d) for d in policy.ledger_witness_dirs]}
    )


def _validate(doc: YamlDocument, model: type[M], base: Path) -> M:
    if not isinstance(doc.data, dict):
        raise PolicyError(
            [Problem(doc.file, 1, "", "the file must be a YAML mapping of keys to values", "see examples/")])
    try:
        policy = model.model_validate(doc.data)
    except ValidationError as exc:
        raise PolicyError(problems_from_validation(doc, model, exc)) from None
    return _resolve_paths(policy, base)


def load_policy(path: str | Path) -> FederationPolicy | InstitutionPolicy:
    """Load either kind of policy file, chosen by its `kind` key. Raises PolicyError listing every problem."""
    path = Path(path)
    doc = read_yaml(path)
    kind = doc.data.get("kind") if isinstance(doc.data, dict) else None
    if not isinstance(kind, str) or kind not in KINDS:
        line = doc.line_of(("kind",))
        got = ("missing" if kind is None else f"unknown kind {kind!r}" if isinstance(kind, str)
               else f"a {type(kind).__name__}, not a name")
        raise PolicyError([Problem(doc.file, line, "kind", got, "set `kind: federation` or `kind: institution`")])
    return _validate(doc, KINDS[kind], path.parent)


def _load_kind(path: str | Path, model: type[M]) -> M:
    policy = load_policy(path)
    if not isinstance(policy, model):
        expected = "federation" if model is FederationPolicy else "institution"
        raise PolicyError([Problem(str(path), 1, "kind", f"expected a {expected} policy, got `kind: {policy.kind}`",
                                   "pass the right file")])
    return policy


def load_federation(path: str | Path) -> FederationPolicy:
    """Load a federation policy. Raises PolicyError (every problem, with lines) if it is not one or is invalid."""
    return _load_kind(path, FederationPolicy)


def load_institution(path: str | Path) -> InstitutionPolicy:
    """Load an institution policy; relative paths in it are resolved against the file's folder."""
    return _load_kind(path, InstitutionPolicy)
