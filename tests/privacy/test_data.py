"""Institution data: every bad record is an error with file and line; fingerprints and splits are stable."""

from __future__ import annotations

import csv
import json

import pytest

from confide.platform.data import DataError, dataset_fingerprint, load_institution_data, read_records, read_source
from confide.platform.models import load_tokenizer
from confide.policies import DataSource

from .helpers import make_federation, make_institution, write_jsonl

SETTINGS = make_federation().model


def source(path, fmt="jsonl", **extra) -> DataSource:
    return DataSource(path=path, format=fmt, **extra)


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("lines, line, message", [
    (['{"text": "a", "label": "sport"}', '{"text": "b", "label": '], 2, "malformed JSON"),
    (['{"text": "a", "label": "sport"}', '["not", "an object"]'], 2, "JSON object"),
    (['{"text": "a", "label": "sport"}', '', '{"label": "tech"}'], 3, "text: missing field"),
    (['{"text": "a"}'], 1, "label: missing field"),
    (['{"text": "a", "label": "sport"}', '{"text": "b", "label": "weather"}'], 2, "'weather' is not one of"),
    (['{"text": 5, "label": "sport"}'], 1, "text must be a string"),
])
def test_bad_jsonl_record_is_an_error_naming_file_and_line(tmp_path, lines, line, message):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as caught:
        read_source(source(path), SETTINGS)
    assert caught.value.line == line and str(caught.value).startswith(f"{path}:{line}: ")


def test_bad_csv_rows_name_their_line_and_a_missing_column_names_the_header(tmp_path):
    path = write_csv(tmp_path / "a.csv", [["fine text", "sport"], ["multi\nline, quoted", "tech"], ["x", "nope"]])
    with pytest.raises(DataError, match="'nope'") as caught:
        read_source(source(path, "csv"), SETTINGS)
    assert caught.value.line == 5  # header 1, rows start at 2, 3 (two physical lines) and 5
    with pytest.raises(DataError, match="no such column") as caught:
        read_source(source(write_csv(tmp_path / "b.csv", [["t", "sport"]], header=("body", "label")), "csv"),
                     SETTINGS)
    assert caught.value.line == 1 and caught.value.field == "text"
    (tmp_path / "c.csv").write_text("text,label\nfine,sport\ntoo,many,columns\n")
    with pytest.raises(DataError, match="3 columns") as caught:
        read_source(source(tmp_path / "c.csv", "csv"), SETTINGS)
    assert caught.value.line == 3


def test_missing_file_and_empty_file_are_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_source(source(tmp_path / "none.jsonl"), SETTINGS)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_source(source(tmp_path / "empty.jsonl"), SETTINGS)


def test_fingerprint_follows_content_not_order_or_format(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 10)
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    (tmp_path / "shuffled.jsonl").write_text("\n".join(json.dumps(r) for r in reversed(rows)) + "\n")
    write_csv(tmp_path / "a.csv", [[r["text"], r["label"]] for r in rows])
    rows[0]["text"] += "!"
    (tmp_path / "edited.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def fingerprint(name, fmt="jsonl"):
        return dataset_fingerprint(read_source(source(tmp_path / name, fmt), SETTINGS))

    original = fingerprint("a.jsonl")
    assert len(original) == 64
    assert fingerprint("shuffled.jsonl") == original == fingerprint("a.csv", "csv")
    assert fingerprint("edited.jsonl") != original


def test_split_is_deterministic_and_tokenized_labels_follow_the_federation_order(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 20)
    rows = (tmp_path / "a.jsonl").read_text().splitlines()
    (tmp_path / "b.jsonl").write_text("\n".join(reversed(rows)) + "\n")
    tokenizer = load_tokenizer(SETTINGS)
    institution = make_institution(tmp_path, data={"path": str(tmp_path / "a.jsonl"), "format": "jsonl",
                                                   "eval_fraction": 0.25})
    first = load_institution_data(institution, make_federation(), tokenizer)
    again = load_institution_data(institution.data, SETTINGS, tokenizer)
    reordered = load_institution_data(source(tmp_path / "b.jsonl", eval_fraction=0.25), SETTINGS, tokenizer)
    assert (first.train_size, len(first.eval), first.records) == (15, 5, 20)
    eval_texts = lambda d: sorted(map(tuple, d.eval.tensors[0].tolist()))  # noqa: E731
    assert eval_texts(first) == eval_texts(again) == eval_texts(reordered)
    ids, mask, labels = first.train.tensors
    assert ids.shape == (15, SETTINGS.max_length_tokens) and set(labels.tolist()) <= {0, 1}
    encoded = first.encode([{"text": "goal match team", "label": "tech"}])
    assert encoded.tensors[2].tolist() == [1]
    with pytest.raises(DataError, match="<records>:1"):
        first.encode([{"text": "x", "label": "weather"}])


def test_raw_reader_normalises_field_names_and_still_names_bad_lines(tmp_path):
    path = write_csv(tmp_path / "a.csv", [["first", "sport"], ["second", "anything"]], header=("body", "kind"))
    rows = read_records(path, "csv", "body", "kind")
    assert [(r["text"], r["label"], r["line"]) for r in rows] == [("first", "sport", 2), ("second", "anything", 3)]
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n{"kind": "y"}\n')
    with pytest.raises(DataError, match=r"b.jsonl:2: body: missing field"):
        read_records(tmp_path / "b.jsonl", "jsonl", "body", "kind", require_label=False)
