import json

import pytest

from confide.platform.split import (
    SplitError,
    dirichlet_split,
    parse_split,
    topic_split,
    train_test_split,
    write_jsonl,
)


def records(n_per_label=60, labels=("x", "y", "z")):
    return [{"text": f"{label} {i}", "label": label} for label in labels for i in range(n_per_label)]


def test_train_test_split_is_stratified_disjoint_and_deterministic():
    data = records()
    train, test = train_test_split(data, 0.25, seed=3)
    assert len(test) == 45 and len(train) == 135
    assert {r["label"] for r in test} == {"x", "y", "z"}
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    assert train_test_split(data, 0.25, seed=3) == (train, test)


def test_dirichlet_split_partitions_every_record_exactly_once():
    data = records()
    shards = dirichlet_split(data, 4, alpha=0.5, seed=1)
    flat = sorted(r["text"] for s in shards for r in s)
    assert flat == sorted(r["text"] for r in data)
    assert min(len(s) for s in shards) >= 20


def test_small_alpha_is_more_skewed_than_large_alpha():
    def skew(alpha):
        shards = dirichlet_split(records(200), 3, alpha=alpha, seed=0)
        # mean share of each shard's most common label
        return sum(max(sum(r["label"] == label for r in s) for label in "xyz") / len(s) for s in shards) / 3

    assert skew(0.1) > skew(100.0) + 0.2


def test_topic_split_gives_each_institution_exactly_the_records_of_its_topics():
    parts = topic_split(records(), {"a": ("x", "y"), "b": ("z",)})
    assert {name: {r["label"] for r in part} for name, part in parts.items()} == {"a": {"x", "y"}, "b": {"z"}}
    assert (len(parts["a"]), len(parts["b"])) == (120, 60)


def test_topic_split_refuses_a_topic_given_twice_and_an_institution_left_empty():
    with pytest.raises(SplitError, match="'y' is given to two institutions"):
        topic_split(records(), {"a": ("x", "y"), "b": ("y", "z")})
    with pytest.raises(SplitError, match="b gets no record"):
        topic_split(records(), {"a": ("x",), "b": ("w",)})


def test_impossible_split_is_refused():
    with pytest.raises(SplitError, match="cannot give"):
        dirichlet_split(records(5), 4, alpha=1.0, seed=0)


@pytest.mark.parametrize("spec", ["dirichlet", "dirichlet:-1", "uniform:0.5", "dirichlet:abc"])
def test_bad_split_spec_is_refused_with_the_expected_form(spec):
    with pytest.raises(SplitError, match="dirichlet:ALPHA"):
        parse_split(spec)


def test_write_jsonl_round_trips(tmp_path):
    data = records(2)
    write_jsonl(tmp_path / "d" / "a.jsonl", data)
    assert [json.loads(line) for line in (tmp_path / "d" / "a.jsonl").read_text().splitlines()] == data
