"""training_loop.LoopState: what a resumable state saves comes back field by field on restore
(compared with the state that was saved, not with a second run that shares a dropped field), and
the restored optimizer takes the same next step as the one that was saved.

The SIGTERM tests (test_interrupt.py) resume real runs, but there the best weights are always found
after the cut and the schedule also travels inside the optimizer's state, so a restore that drops
the best-so-far passes them."""

from __future__ import annotations

import dataclasses

import numpy as np

from ernie_compress.models import build_model
from ernie_compress.paddle_env import import_paddle
from ernie_compress.training_loop import LoopConfig, LoopState, _build_optimizer, _weights, load_train_state

paddle = import_paddle()


def _steps(model, optimizer, count: int) -> None:
    for _ in range(count):
        loss = sum((p * p).mean() for p in optimizer.params)
        loss.backward()
        optimizer.step()


def test_a_saved_loop_state_is_restored_field_by_field(tiny_config, tmp_path):
    config = LoopConfig(learning_rate=1e-2, warmup_ratio=0.25)
    paddle.seed(1)
    with paddle.utils.unique_name.guard():  # parameter and moment names as a fresh process gives them
        model = build_model(tiny_config)
        optimizer = _build_optimizer(model, None, config, total=20)
        best = _weights(model)  # the best weights: an earlier point than the current ones
        _steps(model, optimizer, 3)
    state = LoopState(best, np.random.default_rng(7).bit_generator.state, step=3, last_eval=2, epoch=1,
                      batch_in_epoch=1, best_metrics={"accuracy": 0.75}, best_step=2,
                      history=[{"step": 2, "epoch": 0.5, "dev_accuracy": 0.75}], steps_run=3, step_seconds=1.5)
    state.save(tmp_path, {"total": 20, "seed": config.seed}, model, optimizer, {})
    weights = _weights(model)
    _steps(model, optimizer, 2)  # what the run does next

    paddle.seed(2)
    with paddle.utils.unique_name.guard():
        other = build_model(tiny_config)
        other_optimizer = _build_optimizer(other, None, config, total=20)
        restored = LoopState.restore(load_train_state(tmp_path), other, other_optimizer, {})
        for name, value in weights.items():
            np.testing.assert_array_equal(_weights(other)[name], value, err_msg=name)
        assert other_optimizer.schedule.last_epoch == 3
        _steps(other, other_optimizer, 2)  # the same next steps: moments, step counts and learning rate came back

    for f in dataclasses.fields(LoopState):
        if f.name in ("best_state", "epoch_rng_state"):
            continue
        expected = 0 if f.name in ("steps_run", "step_seconds") else getattr(state, f.name)  # this process's own
        assert getattr(restored, f.name) == expected, f.name
    assert restored.epoch_rng_state == state.epoch_rng_state
    assert set(restored.best_state) == set(best)
    for name, value in best.items():
        np.testing.assert_array_equal(np.asarray(restored.best_state[name]), value, err_msg=name)
    for name, value in _weights(model).items():
        np.testing.assert_allclose(_weights(other)[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
