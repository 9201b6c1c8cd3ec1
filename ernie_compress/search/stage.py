"""The ``search`` stage (declared in ``stages/registry.py``, implemented here, above the recipe runner it
drives): the best compressed model inside a latency / size / accuracy budget, found by
a multi-objective search over the other stages' own options (``search/``), reported as a Pareto
frontier with the recipe of every point.

Each trial distils the teacher into a student preset (resized between the presets where ``--depths`` /
``--widths`` say), optionally prunes and quantizes it and exports
ONNX (``search/trial.py``: one recipe per trial, run by the recipe runner); its dev metric, batch-B
latency on the target runtime and file size are the objectives of an Optuna study (``search/study.py``)
kept in ``--storage`` (a SQLite file in ``--out`` unless a URL is given), so the same command resumes
an interrupted search and several workers may share one study. The report (``search/report.py``):
``report.md/json/png``, every frontier point's recipe, and the chosen model (the most accurate point
inside the budget) exported and verified under ``chosen/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..data.task_options import TaskOptions
from ..errors import UserError
from ..models.families import config_from_dict, family_of
from ..models.presets import PRESETS, resize_preset, resolve_preset
from ..options import check_options, fail, option
from ..progress import note
from ..results import SearchResult
from ..runtime.backends import RuntimeConfig, RuntimeOptions
from ..runtime.latency import LatencyConfig
from ..stages.registry import register
from .space import PRECISION, PRECISIONS, Dimension, SearchSpace
from .study import DIRECTIONS, SAMPLERS, StopTrial, StudySettings

NO_PRUNING = 0.0  # in --prune-params: this trial keeps every head and neuron
STUDENT_SHAPE = ("student", "student_layers", "student_hidden")  # distill options that make a student's shape:
# the median rule compares a trial's student with earlier students of the same shape


def _strings(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _strings(text))
    except ValueError:
        raise UserError(f"comma-separated integers expected, got '{text}'") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in _strings(text))
    except ValueError:
        raise UserError(f"comma-separated numbers expected, got '{text}'") from None


@dataclass(frozen=True, kw_only=True)
class SearchConfig(TaskOptions, RuntimeOptions):
    """``ernie-compress search``: a Pareto frontier of compressed models, and the best inside a budget."""

    teacher: Path = option(argument=True, scope="cli", source="from", help=(
        "The fine-tuned FP32 teacher (a task checkpoint) every candidate is distilled from."))
    out: Path = option(short="-o", scope="cli", help=(
        "Output folder: the study (study.db unless --storage), each trial's run, the report and the chosen "
        "model. Running the same command again resumes the search it holds."))
    objective: tuple[str, ...] = option(("accuracy", "latency"), parse=_strings, cli_default="accuracy,latency",
                                        help=(f"What to optimize, comma-separated: {', '.join(DIRECTIONS)} (dev "
                                              "metric; p50 ms at --batch-size on the runtime; MB of the ONNX files)."))
    latency_ms: float | None = option(None, above=0, help="Budget: p50 latency at --batch-size, milliseconds.")
    max_size_mb: float | None = option(None, above=0, help="Budget: size of the ONNX files, MB.")
    max_loss: float | None = option(None, at_least=0, help=(
        "Budget: at most this many points below the teacher's dev metric."))
    trials: int | None = option(None, at_least=1, help=(
        "Finished trials the study ends at, counted over every worker sharing it."))
    budget_minutes: float | None = option(None, above=0, help="This worker starts no trial after this long.")
    storage: str | None = option(None, help=(
        "Optuna storage URL (postgresql://user@host/db, sqlite:///path.db) that workers on several machines "
        "share (default: sqlite in --out)."))
    study: str = option("search", help="The study's name in the storage.")
    sampler: str = option("nsga2", choices=SAMPLERS, help="NSGA-II (Deb et al. 2002) or multivariate TPE.")
    students: tuple[str, ...] = option((), parse=_strings, cli_default="", help=(
        "Student presets to choose from, comma-separated (default: the teacher's family's presets no deeper "
        "and no wider than the teacher)."))
    depths: tuple[int, ...] = option((), at_least=1, parse=_ints, cli_default="", help=(
        "Student depths to choose from (distill --student-layers), comma-separated: depths between the presets "
        "(default: each preset's own)."))
    widths: tuple[int, ...] = option((), at_least=1, parse=_ints, cli_default="", help=(
        "Student hidden sizes to choose from (distill --student-hidden), comma-separated; each must fit every "
        "student preset's head size (default: each preset's own)."))
    epochs: tuple[int, ...] = option((1, 2, 3), at_least=1, parse=_ints, cli_default="1,2,3", help=(
        "Distillation epochs to choose from."))
    prune_params: tuple[float, ...] = option((0.0, 0.15, 0.3), at_least=0, below=1, parse=_floats,
                                             cli_default="0,0.15,0.3", help=(
        "Fractions of non-embedding parameters to prune to choose from (0: no pruning)."))
    precisions: tuple[str, ...] = option(("fp32", "int8-ptq", "int8-qat"), parse=_strings,
                                         cli_default="fp32,int8-ptq,int8-qat", help=(
        f"Precisions to choose from: {', '.join(PRECISIONS)} (int8-ptq: quantize --ptq int8; int8-qat: "
        "--qat int8; w8/w4: weight-only, decoders)."))
    batch_size: int = option(1, at_least=1, help="Batch size latency is measured at.")
    seq_len: int = option(128, at_least=1, at_most=4096, help="Sequence length latency is measured at.")
    iterations: int = option(30, at_least=1, help="Timed runs per candidate.")
    seed: int = option(42, scope="run", help="Random seed of the sampler and of every trial's training.")

    def __post_init__(self) -> None:
        check_options(self)
        unknown = [o for o in self.objective if o not in DIRECTIONS]
        if unknown or not self.objective:
            fail(f"{{objective}} can be {', '.join(DIRECTIONS)}; got {', '.join(self.objective) or 'nothing'}",
                 "objective")
        if self.trials is None and self.budget_minutes is None:
            fail("give {trials} or {budget_minutes}", "trials", "budget_minutes")
        wrong = [p for p in self.precisions if p not in PRECISIONS]
        if wrong or not self.precisions:
            fail(f"{{precisions}} can be {', '.join(PRECISIONS)}; got {', '.join(wrong) or 'nothing'}", "precisions")

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(device=self.device, backend=self.backend, threads=self.threads)

    def latency_config(self) -> LatencyConfig:
        return LatencyConfig(batch_sizes=(self.batch_size,), seq_len=self.seq_len, iterations=self.iterations,
                             warmup=max(2, self.iterations // 10))


def default_students(teacher_config) -> tuple[str, ...]:
    """The teacher's family's presets no deeper and no wider than the teacher (the teacher's own shape
    left out), smallest first."""
    family = family_of(teacher_config)
    found = []
    for name, keys in PRESETS.items():
        keys = dict(keys, vocab_size=teacher_config.vocab_size)
        try:
            config = config_from_dict(keys)
        except (UserError, KeyError, TypeError, ValueError):
            continue
        shape = (config.num_hidden_layers, config.hidden_size)
        teacher_shape = (teacher_config.num_hidden_layers, teacher_config.hidden_size)
        if (family_of(config) is family and config.architectures == teacher_config.architectures
                and shape[0] <= teacher_shape[0] and shape[1] <= teacher_shape[1] and shape != teacher_shape
                and not getattr(config, "moe_num_experts", 0)):
            found.append((shape[0] * shape[1] ** 2, name))
    return tuple(name for _, name in sorted(found))


def search_space(cfg: SearchConfig, students: tuple[str, ...]) -> SearchSpace:
    """The dimensions the options above name, checked against the stages' declarations."""
    prune = tuple(None if p == NO_PRUNING else p for p in cfg.prune_params)
    for student in students:  # every width must fit every preset: refused here, not as failed trials
        for width in cfg.widths:
            resize_preset(resolve_preset(student), student, hidden=width)
    shape = tuple(Dimension("distill", option, choices=tuple(values))
                  for option, values in (("student_layers", cfg.depths), ("student_hidden", cfg.widths)) if values)
    return SearchSpace((Dimension("distill", "student", choices=students), *shape,
                        Dimension("distill", "epochs", choices=tuple(cfg.epochs)),
                        Dimension("prune", "params", choices=prune),
                        Dimension("quantize", PRECISION, choices=tuple(cfg.precisions))))


@register("search", SearchConfig)
def run_search(cfg: SearchConfig) -> SearchResult:
    from ..data.tasks import load_task, resolve_task
    from ..evaluate import evaluate_checkpoint
    from ..metrics import PRIMARY_METRIC
    from . import report as search_report
    from .study import open_study, run_study, wait_for_workers
    from .trial import RungStopped, SearchTarget, describe, run_trial

    start = time.perf_counter()
    teacher = load_checkpoint(cfg.teacher)
    task = load_task(resolve_task(cfg.task, None if cfg.data is None else str(cfg.data), teacher.task))
    if not task.splits.get("dev"):
        raise UserError(f"search chooses on the dev split; {task.spec.name} has none")
    metric = PRIMARY_METRIC[task.kind]
    students = cfg.students or default_students(teacher.config)
    if not students:
        raise UserError(f"no preset of {family_of(teacher.config).title} is smaller than this teacher: pass --students")
    space = search_space(cfg, students)
    out = Path(cfg.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = SearchTarget(teacher=Path(teacher.path).resolve(), task=task.spec.name, data=task.spec.data,
                          metric=metric, seed=cfg.seed, threads=cfg.threads, runtime=cfg.runtime_config(),
                          latency=cfg.latency_config())
    teacher_dev = 100 * evaluate_checkpoint(teacher.path, target.task, target.data, split="dev").metrics[metric]
    settings = StudySettings(objectives=tuple(cfg.objective), storage=cfg.storage or f"sqlite:///{out / 'study.db'}",
                             name=cfg.study, trials=cfg.trials,
                             timeout_s=None if cfg.budget_minutes is None else 60 * cfg.budget_minutes,
                             sampler=cfg.sampler, seed=cfg.seed)
    study = open_study(settings)
    budget = search_report.Budget(latency_ms=cfg.latency_ms, max_size_mb=cfg.max_size_mb,
                                  min_accuracy=None if cfg.max_loss is None else teacher_dev - cfg.max_loss)

    def measure(values, trial) -> dict[str, float]:
        shape = {f"distill.{o}": values["distill"].get(o) for o in STUDENT_SHAPE}
        peers = [t.user_attrs["student_dev"] for t in study.get_trials(deepcopy=False)
                 if t.number != trial.number and "student_dev" in t.user_attrs
                 and all(t.params.get(name) == value for name, value in shape.items())]
        trial.set_user_attr("values", describe(values))
        run_dir = out / "trials" / f"{trial.number:04d}"
        try:
            outcome = run_trial(target, values, run_dir, peers)
        except RungStopped as exc:
            trial.set_user_attr("student_dev", exc.student_dev)
            raise StopTrial(str(exc)) from None
        return {**outcome.objectives(), "student_dev": outcome.student_dev, "export": outcome.export,
                "recipe": outcome.recipe, "recipe_text": Path(outcome.recipe).read_text(encoding="utf-8")}

    def after_trial(study, trial) -> None:
        if trial.user_attrs.get("surplus"):
            return  # started as another worker's K-th trial ended: ran nothing
        best = search_report.best_inside(study, budget)
        where = (f"best inside the budget: trial {best.number} ({search_report.point_text(best, metric)})"
                 if best is not None else "none inside the budget yet")
        left = ("" if settings.timeout_s is None
                else f", {max(0.0, settings.timeout_s - (time.perf_counter() - start)) / 60:.0f} min left")
        note(f"trial {trial.number} {trial.state.name.lower()}: {search_report.trial_text(trial, metric)}; {where} "
             f"[{search_report.count_text(study, settings.trials)}{left}]")

    try:
        run_study(study, space, measure, settings, after_trial)
        if settings.trials is not None:  # the study ends at K trials: the report holds all of them
            wait_for_workers(study, lambda n: note(f"waiting for {n} trial(s) other workers are running"))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the command line makes it unwind (sigterm_as_interrupt)
        try:
            search_report.write(out, study, target, teacher_dev, budget, settings)
            written = ""
        except Exception:  # noqa: BLE001 - an interrupt inside a module's first import (e.g. matplotlib's)
            written = "; the report is written when it resumes"  # leaves it half-made: the study is what counts
        raise UserError(f"interrupted: {search_report.count_text(study, settings.trials)}; run the same command to "
                        f"resume (the interrupted trial runs again){written}") from None
    written = search_report.write(out, study, target, teacher_dev, budget, settings, finish=True)
    if budget.given and written["chosen"] is None:
        closest = written["closest"]
        raise UserError("no candidate meets the budget (" + budget.text(metric) + ")"
                        + (f"; the closest is trial {closest['number']} ({closest['text']})" if closest else "")
                        + f": see {out / 'report.md'}")
    return SearchResult(out=str(out), study=settings.name, storage=settings.storage, objectives=list(cfg.objective),
                        metric=metric, teacher_dev=teacher_dev, trials=written["counts"], frontier=written["frontier"],
                        chosen=written["chosen"], report=str(out / "report.md"),
                        seconds=round(time.perf_counter() - start, 1))
