"""A multi-objective study in Optuna's storage (Akiba et al. 2019, "Optuna: A Next-generation
Hyperparameter Optimization Framework"; NSGA-II, Deb et al. 2002, by default).

The study lives in an Optuna RDB storage: a SQLite file by default, or any URL Optuna takes
(``postgresql://...``), so that workers on several machines running the same search share one study.
Each trial asks the :class:`~.space.SearchSpace` for values, runs ``measure`` on them and returns its
objectives; a trial whose ``measure`` raises is recorded as failed with its error (user attribute
``error``) and the study goes on; one that raises :class:`StopTrial` is stopped early (Optuna's
``PRUNED``, the reason kept as ``stopped``). ``trials`` counts finished trials (complete, stopped or
failed) across every worker: each stops when the study holds that many, so K trials run once each
however many workers share the storage. A worker interrupted mid-trial (Ctrl-C, or SIGTERM, which the
command line makes unwind as Ctrl-C: ``paddle_env.sigterm_as_interrupt``) records that trial as failed
and ``interrupted``, which does not count; the next
run of the same command runs it again with the same values. Workers that start trials at the same
moment may open more than K: a trial numbered after K others that count is ``surplus`` and runs
nothing (the storage numbers trials atomically). A worker killed outright leaves its trial
running in the storage; the heartbeat marks it failed after :data:`GRACE_SECONDS` and it is retried once.
A worker that ends a K-trial search while others still run trials waits for them
(:func:`wait_for_workers`), so that every worker's report holds the same K trials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .space import SearchSpace

DIRECTIONS = {"accuracy": "maximize", "latency": "minimize", "size": "minimize"}  # what --objective names
SCHEMA_RACE_RETRIES = 5  # opening a new storage again after another worker created its tables first
WAIT_POLL_SECONDS = 2.0  # how often a finished worker looks at the trials other workers still run
HEARTBEAT_SECONDS = 30  # a running trial's worker writes its heartbeat this often
GRACE_SECONDS = 90  # a trial without a heartbeat for this long is failed (and retried once)
SAMPLERS = ("nsga2", "tpe")


@dataclass(frozen=True)
class StudySettings:
    objectives: tuple[str, ...]  # of DIRECTIONS, in the order the trials return them
    storage: str  # an Optuna RDB URL: sqlite:///path/study.db, postgresql://user@host/db
    name: str
    trials: int | None = None  # finished trials the study ends at, counted over every worker
    timeout_s: float | None = None  # this worker stops starting trials after this long
    sampler: str = "nsga2"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [o for o in self.objectives if o not in DIRECTIONS]
        if unknown or not self.objectives:
            raise UserError(f"objectives must be some of {', '.join(DIRECTIONS)}, got {', '.join(self.objectives)}")
        if len(set(self.objectives)) != len(self.objectives):
            raise UserError(f"an objective is given twice: {', '.join(self.objectives)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler}")
        if self.trials is None and self.timeout_s is None:
            raise UserError("give a number of trials or a time budget")

    @property
    def directions(self) -> list[str]:
        return [DIRECTIONS[o] for o in self.objectives]


class StopTrial(Exception):
    """Raised by a trial's measurement to stop it early (a poor first rung): recorded as ``PRUNED``."""


FINISHED = ("COMPLETE", "PRUNED", "FAIL")  # trial states that count, a FAIL only when not interrupted


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed or interrupted trial: our own one line says it
    return optuna


def open_study(settings: StudySettings):
    """The study ``settings.name`` in ``settings.storage``, created or loaded (a resumed or a second
    worker's search); refused in one line when the storage cannot be reached or holds a study of
    that name with other objectives."""
    optuna = _quiet_optuna()
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            storage = RDBStorage(settings.storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                 heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=1))
            break
        except Exception as exc:  # noqa: BLE001 - the driver's own errors (sqlalchemy, psycopg) vary
            # workers started together race to create the storage's tables: the loser's insert
            # collides with the winner's (an integrity error); once the tables exist it opens
            if attempt < SCHEMA_RACE_RETRIES and type(exc).__name__ in ("IntegrityError", "ProgrammingError"):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise UserError(f"cannot open the study storage {settings.storage}: {_first_line(exc)}") from None
    sampler = (optuna.samplers.NSGAIISampler(seed=settings.seed) if settings.sampler == "nsga2"
               else optuna.samplers.TPESampler(seed=settings.seed, multivariate=True))
    try:
        study = _create_or_load(optuna, storage, settings, sampler)
    except ValueError as exc:  # a stored study of that name with other directions
        raise UserError(f"study '{settings.name}' in {settings.storage}: {_first_line(exc)}; use another --study "
                        f"name") from None
    stored = study.user_attrs.get("objectives")
    if stored is None:  # a new study records what it optimizes (the directions alone do not say)
        study.set_user_attr("objectives", list(settings.objectives))
    elif stored != list(settings.objectives):
        raise UserError(f"study '{settings.name}' in {settings.storage} optimizes {', '.join(stored)}, not "
                        f"{', '.join(settings.objectives)}: use another --study name")
    return study


def _create_or_load(optuna, storage, settings: StudySettings, sampler):
    """The study, created by whichever worker comes first (the others, racing, load it)."""
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            return optuna.create_study(storage=storage, study_name=settings.name, directions=settings.directions,
                                       sampler=sampler, load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - a concurrent insert of the same study name
            if attempt == SCHEMA_RACE_RETRIES or type(exc).__name__ != "IntegrityError":
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def run_study(study, space: SearchSpace, measure: Callable[[dict[str, dict[str, Any]], Any], dict[str, float]],
              settings: StudySettings, after_trial: Callable[[Any, Any], None] | None = None) -> None:
    """Run trials in ``study`` until it holds ``settings.trials`` finished ones or this worker's
    ``timeout_s`` is spent. ``measure(values, trial)`` returns every objective by name (more keys are
    kept as the trial's user attributes); ``after_trial(study, frozen_trial)`` follows each trial."""
    optuna = _quiet_optuna()

    def objective(trial):
        if settings.trials is not None and _ahead_of(study, trial.number) >= settings.trials:
            trial.set_user_attr("surplus", True)  # other workers already hold K trials: run nothing
            study.stop()
            raise optuna.TrialPruned("surplus")
        values = space.suggest(trial)
        try:
            measured = measure(values, trial)
        except StopTrial as exc:
            trial.set_user_attr("stopped", _first_line(exc))
            raise optuna.TrialPruned(_first_line(exc)) from None
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (sigterm_as_interrupt)
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {_first_line(exc)}")
            raise
        missing = [o for o in settings.objectives if o not in measured]
        if missing:
            raise RuntimeError(f"the trial measured no {', '.join(missing)}")
        for key, value in measured.items():
            trial.set_user_attr(key, value)
        return [measured[o] for o in settings.objectives]

    def stop_at_count(study, trial) -> None:
        if settings.trials is not None and finished(study) >= settings.trials:
            study.stop()

    callbacks = [stop_at_count] + ([after_trial] if after_trial is not None else [])
    _retry_interrupted(study)
    if settings.trials is not None and finished(study) >= settings.trials:
        return  # a resumed search that was already done
    study.optimize(objective, timeout=settings.timeout_s, catch=(Exception,), callbacks=callbacks,
                   gc_after_trial=True)


def wait_for_workers(study, on_wait: Callable[[int], None] | None = None,
                     poll_s: float = WAIT_POLL_SECONDS) -> None:
    """Return once no counted trial of ``study`` is running: the trials other workers still run when
    this one has seen K started. A worker that died stops its heartbeat and its trial is failed
    after :data:`GRACE_SECONDS` (``fail_stale_trials``), so the wait ends. ``on_wait(n)`` is told
    once how many trials it waits for."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    told = False
    while True:
        fail_stale_trials(study)
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if not _left_out(t)]
        if not running:
            return
        if on_wait is not None and not told:
            on_wait(len(running))
            told = True
        time.sleep(poll_s)


def _left_out(trial) -> bool:
    """A trial that never counts: interrupted (it runs again as another trial) or surplus (ran nothing)."""
    return bool(trial.user_attrs.get("interrupted") or trial.user_attrs.get("surplus"))


def _ahead_of(study, number: int) -> int:
    """Trials numbered before ``number`` (the storage numbers them atomically) that run or will count:
    when they are K already, trial ``number`` is surplus, however the workers raced to start it."""
    return sum(t.number < number and not _left_out(t) for t in study.get_trials(deepcopy=False))


def finished(study) -> int:
    """Trials that count towards ``trials``: complete, stopped early, or failed (not interrupted)."""
    return sum(t.state.name in FINISHED and not _left_out(t) for t in study.get_trials(deepcopy=False))


def _retry_interrupted(study) -> None:
    """Queue once more, with the same values, each trial an interrupted worker left (the study
    records which it queued, so a second resume does not queue them again)."""
    done = set(study.user_attrs.get("requeued", []))
    again = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("interrupted") and t.number not in done]
    for trial in again:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    if again:
        study.set_user_attr("requeued", sorted(done | {t.number for t in again}))


def frontier(study) -> list:
    """The Pareto frontier: the completed trials no other completed trial is at least as good as on
    every objective and better on one (``study.best_trials``), by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def failed_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.FAIL,))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
