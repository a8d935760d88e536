"""Pieces shared by both policy kinds."""

from __future__ import annotations

import re
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

from confide.identity import IdentityError, unb64

_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


ID_RULE = "1-64 characters of lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_identifier(value: str) -> bool:
    """Whether `value` may be a federation or institution id (safe in file names and URLs)."""
    return bool(_ID_PATTERN.match(value))


def _check_id(value: str) -> str:
    if not is_identifier(value):
        raise ValueError(f"must be {ID_RULE}")
    return value


def _check_key(value: str) -> str:
    try:
        unb64(value, "key", 32)
    except IdentityError as exc:
        raise ValueError(f"{exc}; expected the base64 of a 32-byte public key") from None
    return value


Identifier = Annotated[str, AfterValidator(_check_id)]
"""A federation or institution id: safe in file names and URLs."""

PublicKeyB64 = Annotated[str, AfterValidator(_check_key)]
"""A raw 32-byte public key (Ed25519 or X25519), base64-encoded, as `confide keys init` prints it."""


class FieldProblem(ValueError):
    """A cross-field validation failure that knows which field, relative to the model, is at fault.

    Pydantic reports model-level validators at the model's own location; raising this lets the
    loader point at the exact entry (say, the second of two duplicate roster members) and its line.
    """

    def __init__(self, path: tuple[str | int, ...], message: str, hint: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.hint = hint


class StrictModel(BaseModel):
    """Base for every policy section: unknown keys are errors, a number is not a boolean, and a number
    is finite (`.inf` and `.nan` are refused wherever a field does not say it takes them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # Lax mode would read `rounds: true` as 1. Strings stay allowed: YAML 1.1 reads `1e-5` (no
        # dot) as one, and pydantic turns a numeric string into its number.
        wanted = _number_kind(cls.model_fields[info.field_name].annotation) if info.field_name else None
        if wanted is not None and isinstance(value, bool):
            raise ValueError(f"expected {wanted}, got {type(value).__name__} {value!r}")
        return value


def _number_kind(annotation: Any) -> str | None:
    """'an integer' or 'a number' for an int or float field (optional or not), else None."""
    options = set(get_args(annotation)) - {type(None)} if get_origin(annotation) in (Union, UnionType) \
        else {annotation}
    if options == {int}:
        return "an integer"
    if options and options <= {int, float}:
        return "a number"
    return None
