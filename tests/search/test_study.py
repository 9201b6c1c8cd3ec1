"""search/space.py and search/study.py with a fake, fast objective: the space stays inside the stages'
declared options, the frontier is the non-dominated set, a failing trial is recorded and the study goes
on, a study resumes from its storage, and two workers sharing it finish K trials with none run twice."""

from __future__ import annotations

import multiprocessing

import pytest

from ernie_compress.errors import UserError
from ernie_compress.search.space import Dimension, SearchSpace
from ernie_compress.search.study import StudySettings, failed_trials, frontier, open_study, run_study

SPACE = (Dimension("prune", "heads", low=0.05, high=0.5), Dimension("quantize", "kd_weight", choices=(0.0, 0.5, 1.0)),
         Dimension("distill", "epochs", low=1, high=4))


def fake_measure(values, trial):
    """Pruning costs accuracy and saves latency; more epochs win accuracy back; kd_weight 1.0 fails."""
    heads, kd, epochs = values["prune"]["heads"], values["quantize"]["kd_weight"], values["distill"]["epochs"]
    if kd == 1.0:
        raise RuntimeError("planted failure\nsecond line")
    return {"accuracy": 0.9 - 0.3 * heads + 0.01 * epochs + 0.01 * kd, "latency": 10.0 * (1 - heads) + 0.1 * epochs,
            "note": f"{heads:.2f}"}


def _settings(tmp_path, trials, name="s"):
    return StudySettings(("accuracy", "latency"), f"sqlite:///{tmp_path / 'study.db'}", name, trials=trials)


def test_the_space_refuses_what_the_stages_do_not_accept():
    for bad, message in ((Dimension("prune", "heads", low=0.0, high=1.5), "outside"),
                         (Dimension("prune", "nonsense", low=0.1, high=0.2), "no option"),
                         (Dimension("nowhere", "heads", low=0.1, high=0.2), "no stage"),
                         (Dimension("prune", "heads", low=0.4, high=0.2), "below high"),
                         (Dimension("prune", "heads"), "give choices")):
        with pytest.raises(UserError, match=message):
            SearchSpace((bad,))
    with pytest.raises(UserError, match="twice"):
        SearchSpace((SPACE[0], SPACE[0]))


def test_the_frontier_is_the_non_dominated_completed_trials_and_failures_are_recorded(tmp_path):
    settings = _settings(tmp_path, 24)
    study = open_study(settings)
    run_study(study, SearchSpace(SPACE), fake_measure, settings)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    failed = failed_trials(study)
    assert len(done) + len(failed) == 24 and failed and all("planted failure" == t.user_attrs["error"].split(": ", 1)[1]
                                                          for t in failed)
    front = frontier(study)
    assert front and all(isinstance(t.user_attrs["note"], str) for t in front)

    def dominates(a, b):
        return (a.values[0] >= b.values[0] and a.values[1] <= b.values[1]) and a.values != b.values

    for point in front:
        assert not any(dominates(other, point) for other in done)
    for other in done:
        if other not in front:
            assert any(dominates(point, other) or point.values == other.values for point in front)


def test_a_study_resumes_from_its_storage_and_refuses_other_objectives(tmp_path):
    run_study(open_study(_settings(tmp_path, 3)), SearchSpace(SPACE), fake_measure, _settings(tmp_path, 3))
    again = open_study(_settings(tmp_path, 7))
    assert len(again.trials) == 3
    run_study(again, SearchSpace(SPACE), fake_measure, _settings(tmp_path, 7))
    assert len(open_study(_settings(tmp_path, 7)).trials) == 7
    run_study(open_study(_settings(tmp_path, 7)), SearchSpace(SPACE), fake_measure, _settings(tmp_path, 7))
    assert len(open_study(_settings(tmp_path, 7)).trials) == 7  # done: nothing more runs
    other = StudySettings(("accuracy", "size"), f"sqlite:///{tmp_path / 'study.db'}", "s", trials=3)
    with pytest.raises(UserError, match="use another --study"):
        open_study(other)


def test_an_unreachable_storage_is_one_line():
    settings = StudySettings(("accuracy",), "postgresql://nobody@127.0.0.1:1/none", "s", trials=1)
    with pytest.raises(UserError, match="cannot open the study storage") as err:
        open_study(settings)
    assert len(str(err.value).splitlines()) == 1


def _worker(path: str, trials: int) -> None:
    settings = StudySettings(("accuracy", "latency"), f"sqlite:///{path}", "shared", trials=trials)
    run_study(open_study(settings), SearchSpace(SPACE), fake_measure, settings)


def test_two_workers_on_one_storage_finish_k_trials_once_each(tmp_path):
    path = str(tmp_path / "study.db")
    open_study(StudySettings(("accuracy", "latency"), f"sqlite:///{path}", "shared", trials=10))  # created once
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(path, 10)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert all(w.exitcode == 0 for w in workers)
    trials = open_study(StudySettings(("accuracy", "latency"), f"sqlite:///{path}", "shared", trials=10)).trials
    numbers = [t.number for t in trials]
    counted = [t for t in trials if not t.user_attrs.get("surplus")]  # started in a race: ran nothing
    assert len(numbers) == len(set(numbers)) and len(counted) == 10 and len(trials) <= 11
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in counted)
    assert all(t.state.name == "PRUNED" and "accuracy" not in t.user_attrs for t in trials if t not in counted)


def test_a_finished_worker_waits_for_the_trials_another_worker_still_runs(tmp_path):
    import threading

    from ernie_compress.search.study import wait_for_workers

    study = open_study(_settings(tmp_path, 2))
    other = study.ask()  # another worker's trial, running in the storage
    told: list[int] = []
    finisher = threading.Timer(1.0, lambda: study.tell(other, [0.5, 1.0]))
    finisher.start()
    wait_for_workers(study, told.append, poll_s=0.05)
    finisher.join()
    assert told == [1] and study.trials[0].state.name == "COMPLETE"  # returned only after the tell
    wait_for_workers(study, told.append, poll_s=0.05)  # nothing running: returns at once, says nothing
    assert told == [1]
