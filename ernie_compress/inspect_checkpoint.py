"""``info``: describe a checkpoint without building the model (no Paddle import).

Besides checkpoint directories, ``info`` describes a model from its ``config.json`` alone (a
directory without weights, e.g. a published model's config downloaded for memory planning) and an
ERNIE 4.5 preset by name: parameters are then counted from the shapes the config implies. A
checkpoint's parameters are counted from its safetensors headers (``lazy_checkpoint.py``): no weight
is read, so the memory ``info`` needs does not grow with the model (a ``.pdparams`` pickle is read whole).
Mixture-of-experts models also show the parameters one token uses and the experts per layer.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import CONFIG_FILE, WEIGHTS_CANDIDATES
from .errors import UserError
from .lazy_checkpoint import open_checkpoint
from .models import count_parameters
from .models.families import config_from_dict
from .models.presets import is_preset, resolve_preset
from .results import CheckpointInfo


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_checkpoint(path: str | Path) -> CheckpointInfo:
    """A checkpoint directory, a directory holding only ``config.json``, or a preset name."""
    folder = Path(path).expanduser()
    if not folder.exists() and is_preset(str(path)):
        return describe_config(str(path), config_from_dict(resolve_preset(str(path))))
    if (folder / CONFIG_FILE).is_file() and not any((folder / name).is_file() for name in WEIGHTS_CANDIDATES):
        return describe_config(str(folder), _read_config(folder / CONFIG_FILE), directory_size(folder))
    ckpt = open_checkpoint(path)  # shapes from the headers: no weight is read (lazy_checkpoint.py)
    config = ckpt.config
    return CheckpointInfo(
        path=str(ckpt.path), model_type=config.model_type, architecture=config.architecture,
        layers=config.num_hidden_layers, hidden_size=config.hidden_size, vocab_size=config.vocab_size,
        heads_per_layer=config.heads_per_layer, ffn_per_layer=config.ffn_per_layer, labels=config.labels,
        task=ckpt.task, parameters=count_parameters(ckpt.shapes(), config),
        size_bytes=directory_size(ckpt.path), weights_sha256=ckpt.weights_sha256, lineage=ckpt.stages,
        head_importance=next((s["report"]["head_importance"] for s in reversed(ckpt.stages)
                              if s.get("name") == "prune" and "report" in s), None),
        **_experts(config))


def describe_config(name: str, config, size_bytes: int = 0) -> CheckpointInfo:
    """A model known by its config only (no weights): parameters from the shapes it implies."""
    shapes = getattr(config, "causal_lm_shapes", None)
    if shapes is None:
        raise UserError(f"{name}: no weights; parameters are counted from config.json alone for ERNIE 4.5 "
                        f"decoders only")
    return CheckpointInfo(
        path=name, model_type=config.model_type, architecture=config.architecture,
        layers=config.num_hidden_layers, hidden_size=config.hidden_size, vocab_size=config.vocab_size,
        heads_per_layer=config.heads_per_layer, ffn_per_layer=config.ffn_per_layer, labels=config.labels,
        task=None, parameters=count_parameters(shapes(), config), size_bytes=size_bytes, weights_sha256=None,
        lineage=[], head_importance=None, config_only=True, **_experts(config))


def _experts(config) -> dict:
    per_layer = getattr(config, "experts_per_layer", None)
    return {} if per_layer is None else {"experts_per_layer": per_layer, "experts_per_token": config.moe_k}


def _read_config(path: Path):
    try:
        return config_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except UserError as exc:
        raise UserError(f"{path.parent}: {exc}") from None
