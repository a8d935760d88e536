"""Institution data as Parquet or a saved Hugging Face dataset: the same records, fingerprint and one-line errors."""

from __future__ import annotations

import json

import pytest

from confide.platform.data import DataError, dataset_fingerprint, read_source
from confide.policies import DataSource

from .helpers import make_federation

SETTINGS = make_federation().model
ROWS = [{"text": "goal in the last minute", "label": "sport"}, {"text": "a faster phone chip", "label": "tech"},
        {"text": "the coach resigned", "label": "sport"}]


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _saved_dataset(path, rows, class_labels=False):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if class_labels:
        ds = ds.cast_column("label", datasets.ClassLabel(names=["sport", "tech"]))
    ds.save_to_disk(str(path))
    return path


def test_parquet_and_saved_dataset_give_the_jsonl_records_and_fingerprint(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    expected = read_source(DataSource(path=jsonl, format="jsonl"), SETTINGS)
    parquet = _parquet(tmp_path / "a.parquet", ROWS[::-1])
    # A dataset whose labels are a ClassLabel (stored as integers) is read by label name.
    saved = _saved_dataset(tmp_path / "ds", ROWS, class_labels=True)
    for path, fmt in ((parquet, "parquet"), (saved, "hf_dataset")):
        records = read_source(DataSource(path=path, format=fmt), SETTINGS)
        assert sorted((r.text, r.label) for r in records) == sorted((r.text, r.label) for r in expected)
        assert dataset_fingerprint(records) == dataset_fingerprint(expected)


def test_missing_column_or_bad_label_is_one_line_naming_the_file_row_and_field(tmp_path):
    no_label = _parquet(tmp_path / "b.parquet", [{"text": "x"}])
    with pytest.raises(DataError) as err:
        read_source(DataSource(path=no_label, format="parquet"), SETTINGS)
    assert err.value.field == "label" and "no such column" in str(err.value) and str(no_label) in str(err.value)
    bad = _saved_dataset(tmp_path / "bad", [*ROWS, {"text": "rain again", "label": "weather"}])
    with pytest.raises(DataError) as err:
        read_source(DataSource(path=bad, format="hf_dataset"), SETTINGS)
    assert (err.value.line, err.value.field) == (4, "label") and "'weather' is not one of" in str(err.value)
    assert len(err.value.lines()) == 1
    renamed = _parquet(tmp_path / "c.parquet", [{"body": r["text"], "label": r["label"]} for r in ROWS])
    assert len(read_source(DataSource(path=renamed, format="parquet", text_field="body"), SETTINGS)) == 3


def test_a_dataset_dict_a_foreign_folder_or_a_non_parquet_file_is_refused_with_the_fix(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"splits \['train'\].*dd/train"):
        read_source(DataSource(path=tmp_path / "dd", format="hf_dataset"), SETTINGS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        read_source(DataSource(path=tmp_path / "empty", format="hf_dataset"), SETTINGS)
    (tmp_path / "x.parquet").write_text("text,label\n")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_source(DataSource(path=tmp_path / "x.parquet", format="parquet"), SETTINGS)
    with pytest.raises(DataError, match="file not found"):
        read_source(DataSource(path=tmp_path / "none.parquet", format="parquet"), SETTINGS)
