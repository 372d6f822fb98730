"""The learning-rate callbacks (issue 15): LearningRateScheduler and ReduceLROnPlateau with
Keras's semantics, changing `model.optimizer.lr` in place (on every backend, with schedules, and
through a DistributedOptimizer); schedules per epoch in `fit`; the ProgressBar showing every
value of the logs."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

import nnx
from nnx.callbacks import LearningRateScheduler, ProgressBar, ReduceLROnPlateau
from nnx.optim import ScaledSchedule


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.int64)


def _model(backend="numpy", opt=None, seed=0):
    model = nnx.Sequential([nnx.Dense(5, 8, "relu"), nnx.Dense(8, 2)], backend=backend,
                           seed=seed)
    return model.compile(opt if opt is not None else nnx.SGD(0.1, momentum=0.9),
                         "softmax_cross_entropy")


def _same_weights(a, b):
    for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)


# -- LearningRateScheduler ---------------------------------------------------------------------
@pytest.mark.parametrize("opt", [lambda: nnx.SGD(0.1, momentum=0.9), lambda: nnx.Adam(0.01),
                                 lambda: nnx.RMSprop(0.01), lambda: nnx.Adagrad(0.1)])
def test_scheduler_sets_each_epochs_rate_in_place(backend, opt):
    """fit(3 epochs, scheduler) == three fit(1 epoch) calls with the rate set by hand (the
    epoch order generator carries over between fit calls): the new rate is used at once."""
    x, y = _data()
    rates = {0: 0.05, 1: 0.02, 2: 0.002}
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return rates[epoch] * (1 if isinstance(a.optimizer, nnx.SGD) else 0.1)

    a = _model(backend, opt())
    hist = a.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[
        LearningRateScheduler(schedule)])
    b = _model(backend, opt())
    scale = 1 if isinstance(b.optimizer, nnx.SGD) else 0.1
    for epoch in range(3):
        b.optimizer.lr = rates[epoch] * scale
        b.fit(x, y, epochs=1, batch_size=8, verbose=0)
    _same_weights(a, b)
    assert hist.history["learning_rate"] == pytest.approx([r * scale for r in rates.values()])
    assert [e for e, _ in seen] == [0, 1, 2]
    assert seen[1][1] == pytest.approx(rates[0] * scale)  # the current rate, as a float
    c = _model(backend, opt())  # and the rate does matter: without the callback, other weights
    c.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert not np.array_equal(c.get_weights()[0], a.get_weights()[0])


def test_scheduler_takes_a_function_of_the_epoch_alone_and_prints(capsys):
    model = _model()
    cb = LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1), verbose=1)
    hist = model.fit(*_data(), epochs=2, batch_size=20, verbose=0, callbacks=[cb])
    assert hist.history["learning_rate"] == pytest.approx([0.1, 0.05])
    out = capsys.readouterr().out
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.05." in out


@pytest.mark.parametrize("value", [float("nan"), 0.0, -0.1, float("inf"), "0.1", None, True])
def test_scheduler_refuses_a_bad_rate_naming_the_epoch(value):
    model = _model()
    before = model.get_weights()
    cb = LearningRateScheduler(lambda epoch, lr: 0.1 if epoch == 0 else value)
    with pytest.raises(ValueError, match=r"schedule returned .* for epoch 1; expected a finite "
                                         r"number > 0"):
        model.fit(*_data(), epochs=3, batch_size=20, verbose=0, callbacks=[cb])
    assert model.optimizer.lr == 0.1  # the last good rate stays
    assert not np.array_equal(model.get_weights()[0], before[0])  # epoch 0 ran


def test_scheduler_arguments_and_a_scheduled_optimizer_are_refused_before_training():
    with pytest.raises(ValueError, match="schedule must be a callable"):
        LearningRateScheduler(0.1)
    with pytest.raises(ValueError, match="must take \\(epoch, lr\\) or \\(epoch\\)"):
        LearningRateScheduler(lambda **kw: 0.1)
    with pytest.raises(ValueError, match="verbose must be"):
        LearningRateScheduler(lambda e, lr: lr, verbose=-1)
    model = _model(opt=nnx.SGD(nnx.StepDecay(0.1, 10)))
    before = model.get_weights()
    with pytest.raises(ValueError, match="the optimizer's rate is already a schedule"):
        model.fit(*_data(), epochs=1, verbose=0,
                  callbacks=[LearningRateScheduler(lambda e, lr: lr)])
    _same_weights_list(before, model.get_weights())
    assert model.optimizer.step == 0


def _same_weights_list(a, b):
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


# -- ReduceLROnPlateau: Keras's algorithm as the oracle -------------------------------------------
def keras_reduce_lr(values, lr, monitor="val_loss", factor=0.1, patience=10, mode="auto",
                    min_delta=1e-4, cooldown=0, min_lr=0.0):
    """keras.callbacks.ReduceLROnPlateau (Keras 3), transcribed: the rate after each epoch."""
    if mode == "min" or (mode == "auto" and "acc" not in monitor):
        op, best = (lambda a, b: np.less(a, b - min_delta)), np.inf
    else:
        op, best = (lambda a, b: np.greater(a, b + min_delta)), -np.inf
    wait, cooldown_counter, out = 0, 0, []
    for current in values:
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if op(current, best):
            best, wait = current, 0
        elif not cooldown_counter > 0:
            wait += 1
            if wait >= patience:
                old_lr = lr
                if old_lr > np.float32(min_lr):
                    lr = max(old_lr * factor, min_lr)
                    cooldown_counter, wait = cooldown, 0
        out.append(lr)
    return out


def _drive(cb, model, values, monitor):
    """Feed `values` as the monitor's value of successive epochs; the rate after each."""
    cb.model = model
    cb.on_train_begin({"validation": True, "metrics": ("accuracy",)})
    rates = []
    for epoch, v in enumerate(values):
        logs = {monitor: v}
        cb.on_epoch_end(epoch, logs)
        assert logs["learning_rate"] == pytest.approx(rates[-1] if rates else 0.1)
        rates.append(model.optimizer.lr)
    return rates


PLATEAU_CASES = [
    dict(monitor="val_loss", patience=2),
    dict(monitor="val_loss", patience=0, factor=0.5),
    dict(monitor="loss", patience=1, cooldown=2, factor=0.5),
    dict(monitor="val_loss", patience=1, min_lr=0.004, factor=0.2),
    dict(monitor="val_loss", patience=1, min_delta=0.05),
    dict(monitor="val_accuracy", patience=1, factor=0.5),
    dict(monitor="loss", patience=2, mode="max", cooldown=1),
]


@pytest.mark.parametrize("kw", PLATEAU_CASES)
@pytest.mark.parametrize("seed", range(3))
def test_plateau_follows_keras(kw, seed):
    rng = np.random.default_rng(seed)
    values = list(np.round(1.0 - 0.02 * np.arange(30) + rng.normal(0, 0.05, 30), 3))
    values[10:20] = [values[9]] * 10  # a plateau
    model = _model(opt=nnx.SGD(0.1))
    args = {k: v for k, v in kw.items() if k not in ("monitor", "factor", "patience")}
    cb = ReduceLROnPlateau(kw["monitor"], kw.get("factor", 0.1), kw.get("patience", 10), **args)
    got = _drive(cb, model, values, kw["monitor"])
    want = keras_reduce_lr(values, 0.1, **kw)
    assert got == pytest.approx(want, rel=1e-12)
    assert got[-1] < 0.1 or kw.get("min_delta", 0) > 0.04  # the cases do reduce


def test_plateau_in_fit_reduces_the_rate_used_by_the_next_step(backend):
    x, y = _data()
    # never improves after the first epoch (which always does: the best starts at inf)
    cb = ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0)
    a = _model(backend, nnx.Adam(0.01))
    hist = a.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[cb])
    assert hist.history["learning_rate"] == pytest.approx([0.01, 0.01, 0.005])
    assert a.optimizer.lr == pytest.approx(0.0025)
    b = _model(backend, nnx.Adam(0.01))
    for lr in (0.01, 0.01, 0.005):
        b.optimizer.lr = lr
        b.fit(x, y, epochs=1, batch_size=8, verbose=0)
    _same_weights(a, b)


def test_plateau_scales_a_schedule_and_the_checkpoint_keeps_it(tmp_path):
    sched = nnx.StepDecay(0.1, step_size=4, gamma=0.5)
    model = _model(opt=nnx.SGD(sched))
    cb = ReduceLROnPlateau("loss", factor=0.2, patience=0, min_delta=10.0, min_lr=0.005)
    model.fit(*_data(), epochs=3, batch_size=20, verbose=0, callbacks=[cb])  # 2 steps an epoch
    lr = model.optimizer.lr
    assert isinstance(lr, ScaledSchedule) and lr.schedule is sched
    # end of epoch 2 (step 4): 0.1 -> 0.02 (scale 0.2); end of epoch 3 (step 6): the scaled
    # schedule gives 0.05 * 0.2 = 0.01, and 0.01 * 0.2 < min_lr: 0.005 (scale 0.1)
    assert lr.scale == pytest.approx(0.1)
    assert model.optimizer.current_lr(6) == pytest.approx(0.005)
    assert model.optimizer.current_lr(9) == pytest.approx(0.0025)  # the schedule goes on
    model.save(tmp_path / "m.npz")
    again = nnx.load(tmp_path / "m.npz").optimizer
    assert again.current_lr(9) == pytest.approx(0.0025)
    # at min_lr: no further reduction, whatever the monitor says
    cb2 = ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0, min_lr=1.0)
    model.fit(*_data(), epochs=2, batch_size=20, verbose=0, callbacks=[cb2])
    assert model.optimizer.lr.scale == pytest.approx(0.1)


def test_plateau_prints_and_validates(capsys):
    model = _model(opt=nnx.SGD(0.1))
    cb = ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0, verbose=1)
    model.fit(*_data(), epochs=2, batch_size=20, verbose=0, callbacks=[cb])
    assert "Epoch 2: ReduceLROnPlateau reducing learning rate to 0.05." in capsys.readouterr().out
    nan = float("nan")
    for kw, match in [({"factor": 1.0}, r"factor must be a finite number in \(0, 1\)"),
                      ({"factor": 0}, "factor must be"), ({"factor": nan}, "factor must be"),
                      ({"patience": -1}, "patience must be an int >= 0"),
                      ({"patience": 1.5}, "patience must be"),
                      ({"min_delta": -1e-3}, "min_delta must be a finite number >= 0"),
                      ({"min_lr": nan}, "min_lr must be"), ({"min_lr": True}, "min_lr must be"),
                      ({"cooldown": -1}, "cooldown must be an int >= 0"),
                      ({"mode": "up"}, "mode must be 'min', 'max' or 'auto'"),
                      ({"monitor": ""}, "monitor must be a log name"),
                      ({"verbose": "loud"}, "verbose must be")]:
        with pytest.raises(ValueError, match=match):
            ReduceLROnPlateau(**kw)
    with pytest.raises(TypeError):  # Keras's positional verbose (4th) is not taken as min_delta
        ReduceLROnPlateau("val_loss", 0.5, 2, 1)


def test_plateau_on_val_loss_needs_validation_data_before_training():
    model = _model()
    with pytest.raises(ValueError, match="'val_loss' needs validation data"):
        model.fit(*_data(), epochs=1, verbose=0, callbacks=[ReduceLROnPlateau()])
    assert model.optimizer.step == 0


def test_callbacks_change_the_rate_of_a_distributed_optimizer():
    dist = nnx.distributed
    comm = dist.comm.LocalCommunicator()
    x, y = _data()
    model = _model(opt=dist.DistributedOptimizer(nnx.SGD(0.1), comm=comm))
    hist = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[
        LearningRateScheduler(lambda e, lr: 0.05 / (e + 1)),
        ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0)])
    assert hist.history["learning_rate"] == pytest.approx([0.05, 0.025])
    assert model.optimizer.optimizer.lr == pytest.approx(0.0125)


# -- schedules per epoch, driven by fit ------------------------------------------------------------
@pytest.mark.parametrize("sched", [lambda: nnx.StepDecay(0.1, 1, 0.5, per="epoch"),
                                   lambda: nnx.CosineDecay(0.1, 3, warmup_steps=1, per="epoch")])
def test_fit_drives_per_epoch_schedules(backend, sched):
    """fit tells the optimizer each epoch (nnx/training.py: optimizer.begin_epoch(epoch)), so a
    per-epoch schedule equals setting its value by hand before each one-epoch fit."""
    x, y = _data()
    s = sched()
    a = _model(backend, nnx.SGD(s, momentum=0.9))
    a.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert a.optimizer.epoch == 2
    b = _model(backend, nnx.SGD(0.1, momentum=0.9))
    for epoch in range(3):
        b.optimizer.lr = s(epoch + 1)
        b.fit(x, y, epochs=1, batch_size=8, verbose=0)
    _same_weights(a, b)


def test_a_resumed_fit_starts_at_its_epochs_rate(tmp_path):
    x, y = _data()
    model = _model(opt=nnx.SGD(nnx.StepDecay(0.1, 1, 0.5, per="epoch")))
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npz")
    again = nnx.load(tmp_path / "m.npz")
    seen = []

    class Spy(nnx.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, self.model.optimizer.current_lr()))

    again.fit(x, y, epochs=4, initial_epoch=2, batch_size=8, verbose=0, callbacks=[Spy()])
    assert seen == [(2, pytest.approx(0.025)), (3, pytest.approx(0.0125))]


# -- ProgressBar: every value of the logs ---------------------------------------------------------
def test_progress_bar_shows_every_log_value():
    stream = io.StringIO()
    bar = ProgressBar(1, stream=stream)
    bar.on_train_begin({"epochs": 3, "samples": 10})
    bar.on_epoch_begin(1)
    bar.on_epoch_end(1, {"loss": 0.5, "top_k_accuracy": 0.875, "kl": 12.25, "count": 7,
                         "learning_rate": 1e-5, "time": 0.25, "samples_per_s": 1234.5,
                         "val_loss": float("nan"), "val_top_k_accuracy": 0.75,
                         "flag": True, "note": "text"})
    line = stream.getvalue()
    for part in ("epoch 2/3", "loss 0.5000", "top_k_accuracy 0.8750", "kl 12.2500", "count 7",
                 "learning_rate 1e-05", "val_loss nan", "val_top_k_accuracy 0.7500",
                 "flag True", "note text", "time 0.25s", "1,234 samples/s"):
        assert part in line, part
    assert line.index("val_top_k_accuracy") < line.index("time 0.25s")  # timing last


def test_progress_bar_in_fit_shows_what_callbacks_add(capsys):
    model = _model()
    model.fit(*_data(), epochs=1, batch_size=20, verbose=1,
              callbacks=[LearningRateScheduler(lambda e, lr: 0.05)])
    out = capsys.readouterr().out
    assert "learning_rate 0.0500" in out and "loss" in out and "accuracy" in out
    assert math.isfinite(model.evaluate(*_data())["loss"])
