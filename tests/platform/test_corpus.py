
from confide.platform.corpus import BBC_LABELS, bbc_records


def test_bbc_corpus_has_every_article_with_a_known_label():
    data = bbc_records()
    assert len(data) == 2225
    assert {r["label"] for r in data} == set(BBC_LABELS)
    assert all(r["text"] and "\n" not in r["text"] for r in data)
