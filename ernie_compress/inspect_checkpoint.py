"""``info``: describe a checkpoint without building the model (no Paddle import)."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .models import count_parameters
from .results import CheckpointInfo


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_checkpoint(path: str | Path) -> CheckpointInfo:
    ckpt = load_checkpoint(path)
    config = ckpt.config
    return CheckpointInfo(
        path=str(ckpt.path), model_type=config.model_type, architecture=config.architecture,
        layers=config.num_hidden_layers, hidden_size=config.hidden_size, vocab_size=config.vocab_size,
        heads_per_layer=config.heads_per_layer, ffn_per_layer=config.ffn_per_layer, labels=config.labels,
        task=ckpt.task, parameters=count_parameters({k: v.shape for k, v in ckpt.state.items()}),
        size_bytes=directory_size(ckpt.path), weights_sha256=ckpt.weights_sha256, lineage=ckpt.stages,
        head_importance=next((s["report"]["head_importance"] for s in reversed(ckpt.stages)
                              if s.get("name") == "prune" and "report" in s), None))
