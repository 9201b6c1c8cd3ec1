"""The built-in demo:sentiment corpus: deduplicated, conflicts dropped, disjoint seeded splits."""

from __future__ import annotations

from ernie_compress.data.corpora import deduplicate_labeled
from ernie_compress.data.tasks import TaskSpec, load_task, seeded_split


def test_deduplicate_drops_conflicts_and_repeats():
    pairs, conflicts = deduplicate_labeled([("a", "1"), ("a ", "1"), ("b", "1"), ("b", "0"), ("", "1")])
    assert pairs == [("a", "1")] and conflicts == 1


def test_seeded_split_is_deterministic_and_complete():
    items = list(range(100))
    a = seeded_split(items, (0.8, 0.1, 0.1), seed=3)
    assert a == seeded_split(items, (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in a] == [80, 10, 10] and sorted(sum(a, [])) == items


def test_demo_sentiment_has_no_leak():
    task = load_task(TaskSpec("demo:sentiment"))
    texts = {s: {e.text_a for e in task.split(s)} for s in ("train", "dev", "test")}
    total = sum(len(v) for v in texts.values())
    assert total == 17363  # DESIGN.md: unique texts after dropping the 47 conflicting ones
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"]
    assert 0.45 < sum(e.label == "positive" for e in task.split("test")) / len(texts["test"]) < 0.52
    assert task.labels == ["negative", "positive"] and task.held_out == "test"
