"""Where finished points go: DIR/results.jsonl (the record) and DIR/results.csv (the same, flat).

Each finished point is appended and fsynced at once, so a sweep killed at any moment keeps every
point that finished. The JSONL file is the source of truth: a torn last line (a kill during the
append) is ignored, and the CSV is rewritten from the JSONL when a sweep starts.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from confide.platform.sweep.points import AXES

CSV_COLUMNS = ("key", "kind", "institution", *AXES, "accuracy", "macro_f1", "loss", "epsilon_spent", "rounds_summed",
               "upload_mb", "seconds", "finished_at")


def _csv_line(row: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
    return buffer.getvalue()


class ResultStore:
    """The results of one sweep directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.jsonl = self.out_dir / "results.jsonl"
        self.csv = self.out_dir / "results.csv"
        self.failures = self.out_dir / "failures.jsonl"

    def rows(self) -> list[dict]:
        """Every complete result, oldest first; the last result wins if a key appears twice."""
        if not self.jsonl.exists():
            return []
        by_key: dict[str, dict] = {}
        for line in self.jsonl.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill mid-append
            if isinstance(row, dict) and "key" in row:
                by_key[row["key"]] = row
        return list(by_key.values())

    def finished_keys(self) -> set[str]:
        return {row["key"] for row in self.rows()}

    def open(self) -> None:
        """Prepare for appending: cut a torn tail off the JSONL and rewrite the CSV from it."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        if self.jsonl.exists():
            text = self.jsonl.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                _replace(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        _replace(self.csv, _csv_line({c: c for c in CSV_COLUMNS}) + "".join(_csv_line(r) for r in rows))

    def append(self, row: dict) -> None:
        """Record one finished point in both files (fsynced)."""
        _append(self.jsonl, json.dumps(row, allow_nan=False) + "\n")
        _append(self.csv, _csv_line(row))

    def record_failure(self, key: str, label: str, error: str) -> None:
        """Note a point that raised; it is not a result and runs again next time."""
        _append(self.failures, json.dumps({"key": key, "point": label, "error": error}) + "\n")


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
