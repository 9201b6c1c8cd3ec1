"""Numbers the user docs state that a test can hold: split sizes, deduplication counts, baseline
accuracies and parameter counts are recomputed here and looked up in the text of README.md and docs/*.md."""

from __future__ import annotations

from ernie_compress.data.tasks import TaskSpec, load_task


def test_demo_sentiment_sizes(readme):
    task = load_task(TaskSpec("demo:sentiment"))
    sizes = {name: len(task.split(name)) for name in ("train", "dev", "test")}
    assert f"({sum(sizes.values()):,} remain)" in readme
    assert f"({sizes['train']:,} / {sizes['dev']:,} / {sizes['test']:,} texts)" in readme


def test_demo_ner_sizes(readme):
    task = load_task(TaskSpec("demo:ner"))
    sizes = [len(task.split(name)) for name in ("train", "dev", "test")]
    entities = sum(tag.startswith("B-") for e in task.split("test") for tag in e.label)
    assert f"({' / '.join(f'{n:,}' for n in sizes)} sentences; {entities:,} entities in the test sentences)" in readme


def test_naive_bayes_baseline(readme):
    from ernie_compress.baselines import classification_baselines

    task = load_task(TaskSpec("demo:sentiment"))
    accuracy = {split: {r["model"]: r["accuracy"] for r in classification_baselines(task.split("train"),
                                                                                     task.split(split))}
                for split in ("dev", "test")}
    name = "naive Bayes, char 1-3-grams"  # the generated sentiment-baselines table and the demo's context row
    assert f"| {name} | {accuracy['dev'][name]:.4f} | {accuracy['test'][name]:.4f} |" in readme
    assert f"| {name} (not ERNIE, context) |  |  |  | {accuracy['test'][name]:.4f} |" in readme


def test_ernie45_published_size(readme):
    from ernie_compress.models import build_model, count_parameters
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    model = build_model(config_from_dict(resolve_preset("ernie-4.5-0.3b")))
    total = count_parameters({k: v.shape for k, v in model.state_dict().items()})["total"]
    assert f"{total:,} parameters" in readme
