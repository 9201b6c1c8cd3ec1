"""Model families, registered by ``config.json``'s ``model_type``.

A family (:class:`~.family.ModelFamily`) declares, in its own module, its config class, its Paddle
implementation, the architecture for each task kind, its parameter names, Linear roles and
smoothing map (``architecture.py``), how heads sit in its weights (which picks the pruning
strategy), what a distillation teacher of it offers, the exported graph's inputs and its checkpoint
layouts. A stage or algorithm asks ``family_of(config)`` instead of testing ``model_type`` or
spelling a parameter name; a new family (an MoE, another encoder) is its modules in this folder
plus one entry in ``FAMILIES``.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .architecture import DISTILLATION_SIGNALS
from .ernie3_family import FAMILY as ERNIE3
from .ernie4_5_family import FAMILY as ERNIE4_5
from .ernie4_5_moe_family import FAMILY as ERNIE4_5_MOE
from .family import ModelFamily

__all__ = ["FAMILIES", "ModelFamily", "config_from_dict", "family_of", "family_of_keys", "require_distillation",
           "require_teachable"]

FAMILIES: dict[str, ModelFamily] = {f.model_type: f for f in (ERNIE3, ERNIE4_5, ERNIE4_5_MOE)}
DEFAULT_MODEL_TYPE = ERNIE3.model_type  # PaddleNLP's ERNIE 3.0 files carry no model_type


def family_of(config_or_type: Any) -> ModelFamily:
    """The family of a config (or a ``model_type`` string)."""
    model_type = config_or_type if isinstance(config_or_type, str) else config_or_type.model_type
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(f"model_type '{model_type}' is not supported (supported: {', '.join(FAMILIES)})")
    return family


def model_type_of(keys: Any) -> str:
    """The ``model_type`` of config keys (a preset, a ``config.json``); a missing one is ERNIE 3.0."""
    return str(keys.get("model_type", DEFAULT_MODEL_TYPE)) if isinstance(keys, dict) else DEFAULT_MODEL_TYPE


def family_of_keys(keys: dict[str, Any]) -> ModelFamily:
    """The family of config keys (a preset, a ``config.json``)."""
    return family_of(model_type_of(keys))


def config_from_dict(data: dict[str, Any]):
    """The config class ``model_type`` names (a missing one is ERNIE 3.0, as PaddleNLP's files; another
    ``ernie4_5*`` type, such as ``ernie4_5_moe_vl``, reaches the ERNIE 4.5 config, which says what it
    cannot read)."""
    model_type = model_type_of(data)
    family = FAMILIES.get(model_type) or (ERNIE4_5 if model_type.startswith(ERNIE4_5.model_type) else ERNIE3)
    return family.config_class.from_dict(data)


def require_distillation(config, signal: str) -> None:
    """Refuse a distillation signal (``architecture.DISTILLATION_SIGNALS``) the teacher's family
    does not give, naming the families that do."""
    if signal not in DISTILLATION_SIGNALS:
        raise ValueError(f"unknown distillation signal '{signal}'")
    supported = [f"{f.title} models" for f in FAMILIES.values() if signal in f.distillation.signals]
    family = family_of(config)
    family.distillation.require(signal, family.title, " and ".join(supported))


def require_teachable(teacher_config, student: ModelFamily, what: str) -> None:
    """Refuse a student family (``what``: how the user named the student) that a teacher of
    ``teacher_config``'s family does not teach (:meth:`ModelFamily.teaches`), naming those it does."""
    teacher = family_of(teacher_config)
    if teacher.teaches(student):
        return
    taught = [teacher.title] + [FAMILIES[t].title for t in sorted(teacher.distillation.students)]
    raise UserError(f"the student {what} is from the {student.model_type} family but the teacher is "
                    f"{teacher.model_type}; distill within one family or a family that shares its vocabulary "
                    f"(an {teacher.title} teacher teaches {' or '.join(taught)} students)")
