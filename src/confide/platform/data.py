"""An institution's records: read, checked line by line, fingerprinted, split and tokenized.

Every bad record is an error naming the file and line; nothing is skipped silently (only blank
lines, which hold no record). The fingerprint identifies the data for the privacy ledger: it is a
hash over the records' content, independent of their order and of the file format, so re-exporting
the same records does not open a fresh privacy budget.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from confide.errors import BadInput
from confide.formats import canonical_json
from confide.policies.federation import FederationPolicy, ModelSettings
from confide.policies.institution import DataSource, InstitutionPolicy
from confide.privacy.objective import IGNORE_INDEX


class DataError(BadInput):
    """A data file cannot be used: which file, which line, which field, and how to fix it."""

    def __init__(self, file: str, line: int, field: str, message: str, hint: str = "") -> None:
        where = f"{file}:{line}: " if line else f"{file}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}" + (f" ({hint})" if hint else ""))
        self.file, self.line, self.field, self.message, self.hint = file, line, field, message, hint


@dataclass(frozen=True)
class Record:
    text: str
    label: str | None
    """The label as written in the file (None for causal LM, which has no labels)."""
    line: int


@dataclass
class LocalDataset:
    """An institution's tokenized data, split into a training and a local evaluation set."""

    train: TensorDataset
    """`(input_ids, attention_mask, labels)`; the only part DP training touches."""
    eval: TensorDataset
    fingerprint: str
    """64 hex digits identifying the records; the privacy ledger is kept per fingerprint."""
    path: Path
    records: int
    source: DataSource
    settings: ModelSettings
    tokenizer: PreTrainedTokenizerBase
    record_digests: tuple[bytes, ...] = ()
    """SHA-256 of each record's (text, label), sorted: what the institution's ledger registry keys and
    compares, so the same records under another dataset id or state directory are recognised."""

    @property
    def train_size(self) -> int:
        """Records in the training set (the n in sample rate = expected batch / n)."""
        return len(self.train)

    def encode(self, rows: list[dict], name: str = "<records>") -> TensorDataset:
        """Tokenize other records, e.g. a common test set: dicts `{"text", "label"}` as `read_records` returns.

        Raises DataError naming the record's position (as its line) for a missing field or unknown label.
        """
        needs_label = self.settings.task == "sequence_classification"
        records = [
            _checked(_raw_record(row, name, index + 1, "text", "label", needs_label), name, self.settings)
            for index, row in enumerate(rows)
        ]
        return tokenize(records, self.tokenizer, self.settings)


def _raw_record(row: object, file: str, line: int, text_field: str, label_field: str, require_label: bool) -> dict:
    if not isinstance(row, dict):
        raise DataError(file, line, "", f"expected a record with named fields, got {type(row).__name__}")
    text = row.get(text_field)
    if text is None:
        raise DataError(file, line, text_field, "missing field", "set data.text_field to the text column")
    if not isinstance(text, str):
        raise DataError(file, line, text_field, f"text must be a string, got {type(text).__name__}")
    label = row.get(label_field)
    if label is None:
        if require_label:
            raise DataError(file, line, label_field, "missing field", "set data.label_field to the label column")
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(file, line, label_field, f"label must be a string, got {type(label).__name__}")
    return {"text": text, "label": None if label is None else str(label), "line": line}


def _checked(row: dict, file: str, settings: ModelSettings, label_field: str = "label") -> Record:
    """A Record from a normalised row, with its label checked against the federation's labels."""
    if settings.task == "causal_lm":
        return Record(row["text"], None, row["line"])
    label = row["label"]
    if label not in settings.labels:
        raise DataError(file, row["line"], label_field,
                        f"label {label!r} is not one of the federation's labels {list(settings.labels)}",
                        "fix the record or map it to a federation label")
    return Record(row["text"], label, row["line"])


def _read_text(path: Path) -> str:
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(name, 0, "", "file not found", "check data.path in the institution policy") from None
    except OSError as exc:
        raise DataError(name, 0, "", f"cannot read file: {exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(name, line, "", "not valid UTF-8", "save the file as UTF-8") from None


def _jsonl_rows(text: str, file: str):
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise DataError(file, number, "", f"malformed JSON: {exc}", "each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(file, number, "", f"expected a JSON object, got {type(row).__name__}")
        yield number, row


def _csv_rows(text: str, file: str, needed: list[str]):
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(file, 1, "", f"malformed CSV header: {exc}") from None
    for field in needed:
        if field not in header:
            raise DataError(file, 1, field, f"no such column (columns: {header})", "fix the header or data.*_field")
    line = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(file, line, "", f"malformed CSV: {exc}") from None
        if values and any(v.strip() for v in values):
            if len(values) != len(header):
                raise DataError(file, line, "", f"{len(values)} columns, the header has {len(header)}",
                                "quote fields that contain commas")
            yield line, dict(zip(header, values))
        line = reader.line_num + 1


_NEEDS_DATA_EXTRA = "install confide's data extra: pip install 'confide[data]'"


def _missing_column(file: str, field: str, columns: list[str]) -> DataError:
    return DataError(file, 0, field, f"no such column (columns: {columns})", "fix the data or data.*_field")


def _parquet_rows(path: Path, file: str, needed: list[str]):
    """Rows of a Parquet file, numbered from 1 (the number stands where a text file's line would)."""
    try:
        import pyarrow
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(file, 0, "format", "reading Parquet needs pyarrow", _NEEDS_DATA_EXTRA) from None
    if not path.is_file():
        raise DataError(file, 0, "", "file not found", "check data.path in the institution policy")
    try:
        table = parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(file, 0, "", f"not a readable Parquet file: {_one_line(exc)}",
                        "write it with pandas.to_parquet or pyarrow") from None
    for field in needed:
        if field not in table.column_names:
            raise _missing_column(file, field, table.column_names)
    yield from enumerate(table.to_pylist(), start=1)


def _hf_dataset_rows(path: Path, file: str, needed: list[str], label_field: str):
    """Rows of a Hugging Face dataset saved with `save_to_disk`, numbered from 1; class labels by name."""
    try:
        import datasets
    except ImportError:
        raise DataError(file, 0, "format", "reading a saved Hugging Face dataset needs datasets",
                        _NEEDS_DATA_EXTRA) from None
    if not path.is_dir():
        raise DataError(file, 0, "", "no such directory", "data.path must be the folder save_to_disk wrote")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(file, 0, "", f"not a dataset saved with save_to_disk ({_one_line(exc)})",
                        "point data.path at the folder Dataset.save_to_disk wrote") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        raise DataError(file, 0, "", f"holds the splits {splits}, not one dataset",
                        f"point data.path at one split's folder, e.g. {path / splits[0]}" if splits else "")
    for field in needed:
        if field not in loaded.column_names:
            raise _missing_column(file, field, loaded.column_names)
    feature = loaded.features.get(label_field)
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    for number, row in enumerate(loaded, start=1):
        value = row.get(label_field)
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            row = {**row, label_field: names[value]}
        yield number, row


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_records(
    path: str | Path, format: str = "jsonl", text_field: str = "text", label_field: str = "label",
    require_label: bool = True,
) -> list[dict]:
    """Every record of a JSONL, CSV or Parquet file or a saved Hugging Face dataset (`hf_dataset`:
    the folder `Dataset.save_to_disk` wrote) as `{"text", "label", "line"}` (label None if absent
    and not required), in file order; blank lines hold no record and are passed over. For Parquet
    and datasets, `line` is the row number (from 1); class labels of a dataset are read by name.

    Raises DataError naming the file and line (row) of the first malformed line, missing field or
    non-string value, or if there are no records. Labels are not checked against a federation
    here (see `read_source`).
    """
    path = Path(path)
    file = str(path)
    needed = [text_field] + ([label_field] if require_label else [])
    if format == "parquet":
        rows = _parquet_rows(path, file, needed)
    elif format == "hf_dataset":
        rows = _hf_dataset_rows(path, file, needed, label_field)
    elif format == "jsonl":
        rows = _jsonl_rows(_read_text(path), file)
    elif format == "csv":
        rows = _csv_rows(_read_text(path), file, needed)
    else:
        raise DataError(file, 0, "format", f"unknown format {format!r}", "use jsonl, csv, parquet or hf_dataset")
    records = [_raw_record(row, file, line, text_field, label_field, require_label) for line, row in rows]
    if not records:
        raise DataError(file, 0, "", "no records", "the file is empty")
    return records


def read_source(source: DataSource, settings: ModelSettings) -> list[Record]:
    """The records of an institution's data source, labels checked against `settings.labels`.

    Raises DataError naming the file and line of the first malformed line, missing field or label
    outside the federation's list, or if there are none.
    """
    needs_label = settings.task == "sequence_classification"
    rows = read_records(source.path, source.format, source.text_field, source.label_field, needs_label)
    return [_checked(row, str(source.path), settings, source.label_field) for row in rows]


def _record_digest(record: Record) -> bytes:
    return hashlib.sha256(b"confide-record-v1\0" + canonical_json([record.text, record.label])).digest()


def record_digests(records: list[Record]) -> tuple[bytes, ...]:
    """SHA-256 of (text, label) of every record, sorted: order- and format-independent."""
    return tuple(sorted(_record_digest(r) for r in records))


def dataset_fingerprint(records: list[Record]) -> str:
    """SHA-256 over the sorted digests of (text, label) of every record: order- and format-independent."""
    digest = hashlib.sha256(b"confide-dataset-v1\0")
    for item in record_digests(records):
        digest.update(item)
    return digest.hexdigest()


def split_records(records: list[Record], eval_fraction: float) -> tuple[list[Record], list[Record]]:
    """Deterministic split: records ordered by their content digest, the first `eval_fraction` kept for evaluation.

    The same records give the same split whatever their order in the file. At least one record
    always stays in training.
    """
    ordered = sorted(records, key=lambda r: (_record_digest(r), r.line))
    held_out = min(int(round(len(records) * eval_fraction)), len(records) - 1)
    evaluation, train = ordered[:held_out], ordered[held_out:]
    by_line = lambda rs: sorted(rs, key=lambda r: r.line)  # noqa: E731  (file order reads naturally)
    return by_line(train), by_line(evaluation)


def tokenize(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, settings: ModelSettings
) -> TensorDataset:
    """`(input_ids, attention_mask, labels)` padded on the right to `max_length_tokens`.

    Labels are class indices in `settings.labels` order (sequence classification) or the input
    ids with padding set to -100 (causal LM).
    """
    length = settings.max_length_tokens
    if not records:
        ids = torch.zeros((0, length), dtype=torch.long)
        labels = torch.zeros((0,), dtype=torch.long) if settings.task == "sequence_classification" else ids.clone()
        return TensorDataset(ids, ids.clone(), labels)
    encoded = tokenizer([r.text for r in records], truncation=True, max_length=length, padding="max_length",
                        return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if settings.task == "sequence_classification":
        index = {label: i for i, label in enumerate(settings.labels)}
        labels = torch.tensor([index[r.label] for r in records], dtype=torch.long)
    else:
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return TensorDataset(ids, mask, labels)


def load_institution_data(
    source: DataSource | InstitutionPolicy,
    settings: ModelSettings | FederationPolicy,
    tokenizer: PreTrainedTokenizerBase,
) -> LocalDataset:
    """Read, fingerprint, split (by `eval_fraction`) and tokenize an institution's data.

    `source` is the institution policy or its `data` section; `settings` the federation policy or
    its `model` section (labels, task, max length). Raises DataError for any unusable record.
    """
    source = source.data if isinstance(source, InstitutionPolicy) else source
    settings = settings.model if isinstance(settings, FederationPolicy) else settings
    records = read_source(source, settings)
    train, evaluation = split_records(records, source.eval_fraction)
    return LocalDataset(
        train=tokenize(train, tokenizer, settings),
        eval=tokenize(evaluation, tokenizer, settings),
        fingerprint=dataset_fingerprint(records),
        path=Path(source.path),
        records=len(records),
        source=source,
        settings=settings,
        tokenizer=tokenizer,
        record_digests=record_digests(records),
    )
