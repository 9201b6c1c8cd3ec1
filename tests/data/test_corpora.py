"""The built-in demo:sentiment corpus: deduplicated, conflicts dropped, disjoint seeded splits."""

from __future__ import annotations

from ernie_compress.data.corpora import deduplicate_labeled
from ernie_compress.data.tasks import TaskSpec, load_task
from ernie_compress.data.types import seeded_split


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


def test_no_builtin_pretraining_corpus_holds_a_dev_or_test_text():
    """Pre-training on `--corpus demo:peoples-daily` once read every demo:ner test sentence; now no
    built-in corpus holds a dev/test text of any built-in task (checked text by text and by
    containment in longer texts, since a corpus paragraph could hold a test sentence)."""
    from ernie_compress.data.corpora import PRETRAINING_CORPORA
    from ernie_compress.stages.pretrain import read_corpus

    held_out = {e.text_a for name in ("demo:ner", "demo:sentiment")
                for split in ("dev", "test") for e in load_task(TaskSpec(name)).split(split)}
    long_held_out = [t for t in held_out if len(t) >= 10]  # shorter ones occur inside texts by chance
    for name in PRETRAINING_CORPORA:
        corpus = read_corpus(name)
        assert len(corpus) > 10000, name
        assert not held_out & set(corpus), name
        joined = "\n".join(corpus)
        assert not [t for t in long_held_out if t in joined], name


def test_user_dev_test_texts_found_in_train_are_warned_about(tmp_path, capsys):
    from tests.helpers import TEST, write_jsonl, write_text_task

    from ernie_compress.data.tasks import warn_held_out_overlap

    data = write_text_task(tmp_path)
    load_task(TaskSpec("text", str(data)))
    assert capsys.readouterr().err == ""  # the tiny task's splits are disjoint
    write_jsonl(data / "train.jsonl", [{"text": t, "label": y} for t, y in TEST[:3] + [("另一句", "neg")]])
    task = load_task(TaskSpec("text", str(data)))
    err = capsys.readouterr().err
    assert "warning:" in err and "3 of 8 test texts also occur in the train file" in err
    assert "of 8 dev" not in err
    warn_held_out_overlap(task)  # once per task and process
    assert capsys.readouterr().err == ""
