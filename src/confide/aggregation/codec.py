"""Adapter update <-> flat vector, with a layout descriptor that refuses foreign vectors.

A layout lists every tensor of a peft state dict (name, shape, dtype) in sorted-name order, so
members whose dicts iterate in different orders still agree. Its ``hash`` (SHA-256 of the
canonical JSON) travels in every envelope; a vector is only ever unflattened with the layout
whose hash it carries, never by length alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from confide.aggregation.errors import InvalidUpdate, LayoutMismatch
from confide.formats import canonical_json

if TYPE_CHECKING:
    import torch

__all__ = ["AdapterLayout", "LayoutEntry", "LayoutMismatch", "flatten", "unflatten"]

LAYOUT_VERSION = 1
#: torch dtype names that can be averaged. torch itself is imported only inside flatten and
#: unflatten: importing it costs over a second, which every spawned worker would pay.
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class LayoutEntry:
    """One tensor of the adapter: its state-dict name, shape and dtype name (e.g. "float32")."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class AdapterLayout:
    """Names, shapes and dtypes of an adapter's tensors, in the order they are flattened."""

    entries: tuple[LayoutEntry, ...]

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if names != sorted(names) or len(set(names)) != len(names):
            raise LayoutMismatch(
                "layout entries must have unique names in sorted order",
                "build layouts with flatten() or AdapterLayout.from_json()",
            )
        for e in self.entries:
            if e.dtype not in _FLOAT_DTYPES:
                raise InvalidUpdate(
                    f"tensor {e.name!r} has dtype {e.dtype}; only floating tensors can be averaged",
                    "leave integer buffers out of the adapter state dict",
                )
            if any((not isinstance(d, int)) or d < 0 for d in e.shape):
                raise LayoutMismatch(f"tensor {e.name!r} has an invalid shape {e.shape}")

    @property
    def size(self) -> int:
        """Total number of values (the length of the flat vector)."""
        return sum(e.size for e in self.entries)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces); the hash is computed over exactly this."""
        doc = {
            "version": LAYOUT_VERSION,
            "entries": [[e.name, list(e.shape), e.dtype] for e in self.entries],
        }
        return canonical_json(doc).decode("ascii")

    @cached_property
    def hash(self) -> str:
        """SHA-256 of :meth:`to_json`, 64 hex characters."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> AdapterLayout:
        """Parse :meth:`to_json` output; raises LayoutMismatch when malformed."""
        try:
            doc = json.loads(text)
            if doc.get("version") != LAYOUT_VERSION or set(doc) != {"version", "entries"}:
                raise ValueError("unknown version or keys")
            entries = tuple(
                LayoutEntry(str(name), tuple(int(d) for d in shape), str(dtype))
                for name, shape, dtype in doc["entries"]
            )
        except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise LayoutMismatch(f"adapter layout JSON is malformed ({err})") from None
        return cls(entries)

    def require_hash(self, layout_hash: str, what: str = "the vector") -> None:
        """Raise LayoutMismatch unless ``layout_hash`` is this layout's hash."""
        if layout_hash != self.hash:
            raise LayoutMismatch(
                f"{what} was made for adapter layout {layout_hash[:12]}..., "
                f"not this one ({self.hash[:12]}...)",
                "all members must use the same adapter config (target modules, rank, dtype)",
            )

    def describe_difference(self, other: AdapterLayout) -> str:
        """Human-readable first difference between two layouts (for error messages)."""
        mine = {e.name: e for e in self.entries}
        theirs = {e.name: e for e in other.entries}
        for name in sorted(set(mine) | set(theirs)):
            if name not in theirs:
                return f"{name!r} is missing from the other layout"
            if name not in mine:
                return f"{name!r} is only in the other layout"
            if mine[name] != theirs[name]:
                a, b = mine[name], theirs[name]
                return f"{name!r} is {list(a.shape)} {a.dtype} here, {list(b.shape)} {b.dtype} there"
        return "no difference"


def flatten(
    state_dict: Mapping[str, torch.Tensor], expected: AdapterLayout | None = None
) -> tuple[np.ndarray, AdapterLayout]:
    """Concatenate an adapter's tensors (sorted by name) into one float64 vector.

    If ``expected`` is given, the state dict must match it. Raises :class:`LayoutMismatch` on a
    different layout and :class:`InvalidUpdate` on non-floating or non-finite tensors.
    """
    import torch

    if not state_dict:
        raise InvalidUpdate("the adapter state dict is empty", "pass the peft adapter state dict")
    entries = []
    parts = []
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise InvalidUpdate(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        dtype = str(tensor.dtype).removeprefix("torch.")
        entries.append(LayoutEntry(name, tuple(tensor.shape), dtype))
        if dtype in _FLOAT_DTYPES:
            parts.append(tensor.detach().to("cpu", torch.float64).reshape(-1).numpy())
    layout = AdapterLayout(tuple(entries))
    if expected is not None and layout.hash != expected.hash:
        raise LayoutMismatch(
            f"the adapter does not match the federation's layout: "
            f"{expected.describe_difference(layout)}",
            "all members must use the same adapter config (target modules, rank, dtype)",
        )
    vector = np.concatenate(parts) if parts else np.zeros(0)
    if not np.all(np.isfinite(vector)):
        bad = next(e.name for e, p in zip(entries, parts) if not np.all(np.isfinite(p)))
        raise InvalidUpdate(f"tensor {bad!r} holds NaN or infinite values", "check training")
    return vector, layout


def unflatten(vector: np.ndarray, layout: AdapterLayout) -> dict[str, torch.Tensor]:
    """Split a flat vector back into named tensors of the layout's shapes and dtypes.

    Raises :class:`LayoutMismatch` if the vector's length differs from ``layout.size``.
    """
    import torch

    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.size != layout.size:
        raise LayoutMismatch(
            f"vector of shape {vector.shape} does not fit layout {layout.hash[:12]}... "
            f"of {layout.size} values",
            "unflatten with the layout whose hash the envelope carries",
        )
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for e in layout.entries:
        chunk = np.ascontiguousarray(vector[offset : offset + e.size], dtype=np.float64)
        out[e.name] = torch.from_numpy(chunk).reshape(e.shape).to(getattr(torch, e.dtype))
        offset += e.size
    return out
