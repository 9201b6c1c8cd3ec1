"""Test helpers: the tiny hand-written task, CMRC-style QA files, random token ids and an
in-process CLI call (fixtures that use them are in ``conftest.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

POSITIVE = ["这个东西很好用，推荐购买", "质量不错，物流很快", "非常满意，好评", "好书，值得一读",
            "服务态度很好，下次还来", "包装精美，很喜欢", "性价比高，很好", "不错不错，满意"]
NEGATIVE = ["质量太差了，很失望", "物流很慢，不推荐", "差评，再也不买了", "东西坏了，退货",
            "服务态度很差", "不好用，浪费钱", "太失望了，很差", "包装破损，差"]
# Held-out sentences (dev, test): none occurs in the training texts above; they reuse their words, so
# a model that learned which words carry the sentiment classifies them, one that memorised cannot.
DEV = [("物流很快，很满意", "pos"), ("包装很好，推荐", "pos"), ("值得购买，好评", "pos"), ("服务很好，喜欢", "pos"),
       ("质量很差，退货", "neg"), ("很失望，差评", "neg"), ("物流太慢了，差", "neg"), ("坏了，不推荐", "neg")]
TEST = [("很好，非常喜欢", "pos"), ("质量很好，满意", "pos"), ("好用，推荐购买", "pos"), ("不错，下次还来", "pos"),
        ("太差了，浪费钱", "neg"), ("服务很差，失望", "neg"), ("包装破损，退货", "neg"), ("很差，不买了", "neg")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_text_task(directory: Path, train_repeats: int = 3) -> Path:
    """A tiny sentiment task in the plain ``text`` format (JSON lines): train, and dev/test sentences
    that are not in train."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
    write_jsonl(directory / "train.jsonl", rows * train_repeats)
    write_jsonl(directory / "dev.jsonl", [{"text": t, "label": y} for t, y in DEV])
    write_jsonl(directory / "test.jsonl", [{"text": t, "label": y} for t, y in TEST])
    return directory


def train_tiny_checkpoint(root: Path, name: str = "ckpt", epochs: int = 6) -> tuple[Path, Path]:
    """Train the `tiny` preset on the tiny text task through the CLI; (checkpoint, data dir)."""
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    data = write_text_task(root / "data")
    out = root / name
    res = CliRunner().invoke(app, ["--quiet", "train", "--task", "text", "--data", str(data), "--preset", "tiny",
                                   "--out", str(out), "--epochs", str(epochs), "--lr", "3e-3", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    return out, data


def random_ids(batch: int, seq: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, seq)).astype("int64")
    ids[:, 0] = 1
    ids[1:, seq - 2:] = 0  # padding on some rows
    return ids


NAMES = ["张三", "李四", "王五", "赵六", "孙七", "周八"]
CITIES = ["北京", "上海", "广州", "深圳", "南京", "成都"]


def cmrc_document(paragraphs: list[tuple[str, list[tuple[str, str, str]]]]) -> dict:
    """A CMRC2018-format document from (context, [(id, question, answer text)]) paragraphs."""
    return {"version": "v1.0", "data": [{"id": "doc", "title": "测试", "paragraphs": [
        {"context": context, "qas": [{"id": qid, "question": q,
                                       "answers": [{"text": a, "answer_start": context.index(a)}]}
                                      for qid, q, a in qas]}
        for context, qas in paragraphs]}]}


def write_cmrc_task(directory: Path, paragraphs: int = 24, seed: int = 0) -> Path:
    """A tiny CMRC2018-format QA task: who lives where, each context naming several people."""
    import random

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def split(n, tag):
        out = []
        for p in range(n):
            people = rng.sample(NAMES, 3)
            cities = rng.sample(CITIES, 3)
            context = "".join(f"{who}住在{where}。" for who, where in zip(people, cities))
            out.append((context, [(f"{tag}{p}-{i}", f"{who}住在哪里？", where)
                                  for i, (who, where) in enumerate(zip(people, cities))]))
        return cmrc_document(out)

    for name, n in (("train", paragraphs), ("dev", max(2, paragraphs // 6)), ("test", max(2, paragraphs // 6))):
        (directory / f"{name}.json").write_text(json.dumps(split(n, name), ensure_ascii=False), encoding="utf-8")
    return directory


def cli_json(args: list[str]) -> dict:
    """Run a CLI command in-process with --quiet --json; it must succeed; its JSON result."""
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    res = CliRunner().invoke(app, ["--quiet", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)
