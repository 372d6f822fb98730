"""Optimizers and learning-rate schedules.

An optimizer updates the model's flat parameter buffer from the flat gradient buffer with one
backend call (`ops.sgd_update`, `ops.adam_update`, `ops.rmsprop_update`, `ops.adagrad_update`,
`ops.adadelta_update`), its state living in flat buffers too. Update rules and defaults are
PyTorch's (`torch.optim`): SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta; the names of `OPTIMIZERS`
are what `Model.compile` accepts as strings.

The learning rate is a float or a schedule: a callable returning a float, of the optimizer step
(1-based, the default, `per="step"`) or of the epoch (`per="epoch"`: called with the epoch
index + 1; `fit` tells the optimizer where it is with `begin_epoch(epoch)`). `optimizer.lr` may
be changed in place between steps (the callbacks `LearningRateScheduler` and `ReduceLROnPlateau`
do): every backend reads it afresh at each update; a new value is validated like the
constructor's. Lowering the rate of a scheduled optimizer wraps the schedule in
`ScaledSchedule`, so the schedule keeps its shape at a lower level.

Every hyperparameter is checked where it is given (finite, in range; NaN and inf are refused,
and so are bools where a number is meant), because a NaN learning rate or an eps of 0 trains
without complaint and returns NaN weights. A schedule's value is checked at each step too.

Half-precision models (float16, bfloat16): the optimizer state and the update arithmetic run in
float32 (the parameters are cast up, updated, and rounded back once), because Adam's default
eps = 1e-8 rounds to 0 in float16 and g*g underflows there, which gives NaN weights on the first
step.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import unknown


def check_number(owner: str, arg: str, value, low=None, high=None, *, low_open=False,
                 high_open=False) -> float:
    """`value` as a float, or ValueError naming `owner` and `arg`: a real number (not a bool),
    finite, within [low, high] (an open end with `low_open` / `high_open`)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    v = float(value) if real else math.nan
    ok = math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) and \
        (high is None or (v < high if high_open else v <= high))
    if not ok:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        why = "" if math.isfinite(v) else (", which is not a finite number" if real
                                            else ", which is not a number")
        raise ValueError(f"{owner}: {arg} must be in {left}{lo}, {hi}{right}, got {value!r}"
                         f"{why}")
    return v


def check_int(owner: str, arg: str, value, low: int = 0) -> int:
    """`value` as an int >= low (Python or NumPy integers; not bools), or ValueError."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) \
            or value < low:
        raise ValueError(f"{owner}: {arg} must be an int >= {low}, got {value!r}")
    return int(value)


SCHEDULE_UNITS = ("step", "epoch")


def _check_per(owner: str, per) -> str:
    if per not in SCHEDULE_UNITS:
        raise ValueError(f"{owner}: per must be 'step' or 'epoch', got {per!r}")
    return per


class Schedule:
    """A learning rate that changes during training: `schedule(t) -> float` with t the 1-based
    optimizer step (`per = "step"`) or the epoch index + 1 (`per = "epoch"`). Subclasses keep
    their hyperparameters as attributes, which `get_config` saves with the optimizer."""

    per = "step"

    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        """{"class": name, **hyperparameters}: JSON-able; SCHEDULES[name](**rest) rebuilds it."""
        return {"class": type(self).__name__, **vars(self)}

    def __repr__(self) -> str:
        cfg = self.get_config()
        cfg.pop("class", None)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"


class StepDecay(Schedule):
    """lr * gamma ** ((t - 1) // step_size): the rate drops by `gamma` every `step_size` optimizer
    steps (per="step", the default) or epochs (per="epoch": epochs 0 .. step_size-1 run at lr, as
    PyTorch's StepLR stepped once per epoch). lr > 0, step_size >= 1 and gamma in (0, 1] (a
    decay, never a growth that ends in inf)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1, per: str = "step"):
        self.lr = check_number("StepDecay", "lr", lr, 0, low_open=True)
        self.step_size = check_int("StepDecay", "step_size", step_size, 1)
        self.gamma = check_number("StepDecay", "gamma", gamma, 0, 1, low_open=True)
        self.per = _check_per("StepDecay", per)

    def __call__(self, step):
        return self.lr * self.gamma ** ((step - 1) // self.step_size)


class CosineDecay(Schedule):
    """Linear warm-up for `warmup_steps`, then a half cosine from lr to min_lr at decay_steps;
    the counts are optimizer steps (per="step", the default) or epochs (per="epoch").
    lr > 0, decay_steps >= 1, 0 <= min_lr <= lr, warmup_steps >= 0."""

    def __init__(self, lr: float, decay_steps: int, min_lr: float = 0.0, warmup_steps: int = 0,
                 per: str = "step"):
        self.lr = check_number("CosineDecay", "lr", lr, 0, low_open=True)
        self.decay_steps = check_int("CosineDecay", "decay_steps", decay_steps, 1)
        self.min_lr = check_number("CosineDecay", "min_lr", min_lr, 0, self.lr)
        self.warmup_steps = check_int("CosineDecay", "warmup_steps", warmup_steps, 0)
        self.per = _check_per("CosineDecay", per)

    def __call__(self, step):
        if step <= self.warmup_steps:
            return self.lr * step / max(self.warmup_steps, 1)
        t = min(step - self.warmup_steps, self.decay_steps) / self.decay_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


class ScaledSchedule(Schedule):
    """`schedule(t) * scale`: a schedule at another level with the same shape (warm-up, decay,
    unit). `ReduceLROnPlateau` puts one in place of an optimizer's schedule when it lowers the
    rate, instead of replacing the schedule by a constant. A ScaledSchedule of a ScaledSchedule
    collapses into one (the scales multiply). `schedule`: a Schedule (or its config dict; any
    callable works, but only a Schedule can be saved); scale > 0, finite."""

    def __init__(self, schedule, scale: float):
        schedule = _lr_from_config(schedule)
        if not callable(schedule):
            raise ValueError(f"ScaledSchedule: schedule must be a Schedule or a callable of the "
                             f"step, got {schedule!r}")
        scale = check_number("ScaledSchedule", "scale", scale, 0, low_open=True)
        if isinstance(schedule, ScaledSchedule):
            schedule, scale = schedule.schedule, schedule.scale * scale
        self.schedule = schedule
        self.scale = check_number("ScaledSchedule", "scale", scale, 0, low_open=True)

    @property
    def per(self) -> str:
        """The wrapped schedule's unit."""
        return getattr(self.schedule, "per", "step")

    def __call__(self, t):
        return self.schedule(t) * self.scale

    def __repr__(self) -> str:
        return f"ScaledSchedule({self.schedule!r}, scale={self.scale!r})"

    def get_config(self) -> dict:
        if not isinstance(self.schedule, Schedule):
            raise TypeError("only Schedule subclasses can be saved as a learning rate")
        return {"class": "ScaledSchedule", "schedule": self.schedule.get_config(),
                "scale": self.scale}


SCHEDULES = {"StepDecay": StepDecay, "CosineDecay": CosineDecay,
             "ScaledSchedule": ScaledSchedule}


def _lr_from_config(lr):
    if isinstance(lr, dict):
        cfg = dict(lr)
        cls = cfg.pop("class", None)
        if cls not in SCHEDULES:
            raise unknown("learning-rate schedule", cls, SCHEDULES)
        return SCHEDULES[cls](**cfg)
    return lr


def _check_lr(owner: str, lr):
    """A learning rate as given to an optimizer: a schedule (or its config dict) as is, a
    positive finite number as a float; ValueError naming `owner` otherwise."""
    lr = _lr_from_config(lr)
    if callable(lr):
        return lr
    if not isinstance(lr, numbers.Real) or isinstance(lr, (bool, np.bool_)) \
            or not math.isfinite(lr) or lr <= 0:
        why = " (not finite)" if isinstance(lr, numbers.Real) and not math.isfinite(lr) else ""
        raise ValueError(f"{owner}: lr must be a positive number or a schedule, got {lr!r}{why}")
    return float(lr)


class ScheduleClock:
    """Where training stands for the schedules: `epoch`, the 0-based index of the current epoch
    (None until `Optimizer.begin_epoch`). An object of its own, reached as `optimizer.clock`,
    so that a wrapper which forwards unknown attributes to the optimizer it wraps (a
    DistributedOptimizer) moves the wrapped optimizer's clock."""

    __slots__ = ("epoch",)

    def __init__(self):
        self.epoch = None


class Optimizer:
    """Base class: the learning rate (`lr`, a float or a schedule), the step count, the state
    buffers (`state`, named by `state_names`) and one backend call per update (`_apply`)."""

    state_names: tuple = ()
    nonnegative_state: tuple = ()  # state that is >= 0 by construction (checked on load)

    def __init__(self, lr):
        self.lr = lr  # validated by the property
        self.step = 0
        self.state: dict = {}
        self.clock = ScheduleClock()

    @property
    def lr(self):
        """The learning rate: a float, or a schedule (see the module docstring). Settable
        between steps, validated like the constructor's argument; the next update uses it on
        every backend (the kernels receive it per call)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_lr(type(self).__name__, value)

    @property
    def epoch(self) -> int | None:
        """The 0-based index of the current epoch (None before the first `begin_epoch`)."""
        return self.clock.epoch

    def begin_epoch(self, epoch: int) -> None:
        """Note that epoch `epoch` (0-based, counting on from `initial_epoch` in a resumed fit)
        starts: the schedules with per="epoch" read it. `fit` calls this at each epoch start; a
        training loop of your own over `train_step` calls it itself."""
        self.clock.epoch = check_int(type(self).__name__, "epoch", epoch, 0)

    def current_lr(self, step: int | None = None) -> float:
        """The learning rate at `step` (default: the current step; a per-epoch schedule reads
        the current epoch instead); a schedule's value is checked, so that a schedule returning
        NaN, inf or a negative rate stops training with its name instead of corrupting the
        weights. RuntimeError for a per-epoch schedule before any `begin_epoch`: there is no
        right value to return."""
        lr = self.lr
        if not callable(lr):
            return float(lr)
        if getattr(lr, "per", "step") == "epoch":
            if self.clock.epoch is None:
                raise RuntimeError(
                    f"{type(self).__name__}: the learning-rate schedule {lr!r} counts epochs "
                    "(per='epoch') and no epoch has begun: fit calls optimizer.begin_epoch("
                    "epoch) at each epoch start; a loop of your own over train_step must call "
                    "model.optimizer.begin_epoch(epoch) itself")
            unit, t = "epoch", self.clock.epoch + 1
        else:
            unit, t = "step", max(self.step if step is None else step, 1)
        value = lr(t)
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{type(self).__name__}: the learning-rate schedule {lr!r} "
                             f"returned {value!r} at {unit} {t}; expected a finite number >= 0")
        return float(value)

    def state_dtype(self, ops):
        """float32 for half-precision models (see the module docstring), else the model's."""
        return "float32" if np.dtype(ops.dtype).itemsize < 4 else ops.dtype

    def initial_state(self, name: str) -> float:
        """The value state buffer `name` starts from (0; Adagrad's accumulator differs)."""
        return 0.0

    def setup(self, ops, size: int) -> None:
        """Allocate flat state buffers (once per model), filled with `initial_state`."""
        self.ops = ops
        dtype = np.dtype(self.state_dtype(ops))
        for name in self.state_names:
            st = self.state.get(name)
            if st is None or st.shape != (size,) or st.dtype != dtype:
                st = self.state[name] = ops.zeros(size, dtype=dtype)
                if self.initial_state(name):
                    st[...] = self.initial_state(name)

    def check_state(self, state: dict) -> None:
        """Check state arrays read from a checkpoint (host arrays by name, already checked to
        be finite, of the right shapes, and >= 0 where `nonnegative_state` says) for what
        must hold between them; ValueError naming the state otherwise. Nothing by default."""

    def attach(self, model) -> None:
        """Called by Model.compile once the model's flat buffers exist."""

    def step_hooks(self) -> list:
        """`nnx.hooks.StepHooks` this optimizer brings to the model's training step (a
        data-parallel optimizer brings its strategy); none for a plain optimizer."""
        return []

    def update(self, params, grads) -> None:
        """One step: params -= f(grads, state). A half-precision model's parameters and
        gradients are updated in float32 (the state's dtype) and rounded back once. The rate
        is found before the step is counted: a schedule that fails leaves the step as it was."""
        lr = self.current_lr(self.step + 1)
        self.step += 1
        wide = np.dtype(self.state_dtype(self.ops))
        if params.dtype == wide:
            self._apply(self.ops, params, grads, lr)
            return
        p = params.astype(wide)
        self._apply(self.ops, p, grads.astype(wide), lr)
        params[...] = p.astype(params.dtype)

    def _apply(self, ops, params, grads, lr):
        raise NotImplementedError

    def get_config(self) -> dict:
        """{"class", "lr" (a float or a schedule's config), **hyperparameters}: what a
        checkpoint saves and `get` rebuilds."""
        lr = self.lr.get_config() if isinstance(self.lr, Schedule) else self.lr
        if callable(lr):
            raise TypeError("only Schedule subclasses can be saved as a learning rate")
        return {"class": type(self).__name__, "lr": lr, **self._hyper()}

    def _hyper(self) -> dict:
        return {}


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay (PyTorch semantics).
    momentum in [0, 1), weight_decay >= 0 (finite)."""

    def __init__(
        self, lr=0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
    ):
        super().__init__(lr)
        name = type(self).__name__
        momentum = check_number(name, "momentum", momentum, 0, 1, high_open=True)
        weight_decay = check_number(name, "weight_decay", weight_decay, 0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"{name}: nesterov must be True or False, got {nesterov!r}")
        if nesterov and not momentum:
            raise ValueError(f"{name}: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.weight_decay = weight_decay
        self.state_names = ("velocity",) if momentum else ()

    def _apply(self, ops, params, grads, lr):
        ops.sgd_update(
            params,
            grads,
            self.state.get("velocity"),
            lr,
            self.momentum,
            self.nesterov,
            self.weight_decay,
        )

    def _hyper(self):
        return {
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


class Adam(Optimizer):
    """Adam with PyTorch's bias correction; weight_decay adds L2 to the gradient.
    beta1, beta2 in [0, 1), eps > 0 and weight_decay >= 0, all finite."""

    state_names = ("m", "v")
    nonnegative_state = ("v",)  # a running mean of g*g
    decoupled = False

    def __init__(
        self,
        lr=1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(lr)
        name = type(self).__name__
        self.beta1 = check_number(name, "beta1", beta1, 0, 1, high_open=True)
        self.beta2 = check_number(name, "beta2", beta2, 0, 1, high_open=True)
        self.eps = check_number(name, "eps", eps, 0, low_open=True)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, 0)

    def _apply(self, ops, params, grads, lr):
        ops.adam_update(
            params,
            grads,
            self.state["m"],
            self.state["v"],
            self.step,
            lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.decoupled,
        )

    def _hyper(self):
        return {
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr*wd each step."""

    decoupled = True

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay: float = 0.01):
        super().__init__(lr, beta1, beta2, eps, weight_decay)


def _check_flag(owner: str, arg: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {arg} must be True or False, got {value!r}")
    return bool(value)


class RMSprop(Optimizer):
    """RMSprop with PyTorch's update rule and defaults (torch.optim.RMSprop): a running mean of
    g*g with weight `alpha` scales each step; `centered` subtracts the square of the running
    mean of g (an estimate of the variance; clamped at 0 against rounding), `momentum` adds a
    momentum buffer of the scaled steps, `weight_decay` adds L2 to the gradient.
    alpha in [0, 1), eps > 0, weight_decay >= 0, momentum in [0, 1), all finite.
    State: square_avg (>= 0), momentum_buffer (momentum > 0), grad_avg (centered)."""

    nonnegative_state = ("square_avg",)

    def __init__(self, lr=1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(lr)
        name = type(self).__name__
        self.alpha = check_number(name, "alpha", alpha, 0, 1, high_open=True)
        self.eps = check_number(name, "eps", eps, 0, low_open=True)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, 0)
        self.momentum = check_number(name, "momentum", momentum, 0, 1, high_open=True)
        self.centered = _check_flag(name, "centered", centered)
        self.state_names = ("square_avg",) + (("momentum_buffer",) if self.momentum else ()) \
            + (("grad_avg",) if self.centered else ())

    def check_state(self, state):
        """Centered: grad_avg**2 <= square_avg (a mean of squares is at least the square of
        the mean), up to rounding."""
        if self.centered:
            sq = np.asarray(state["square_avg"], np.float64)
            ga = np.asarray(state["grad_avg"], np.float64)
            bad = ga * ga > sq * (1 + 1e-3) + 1e-30
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"RMSprop: grad_avg**2 exceeds square_avg at index {i} "
                                 f"({ga[i] ** 2!r} > {sq[i]!r}); no run of RMSprop gives that")

    def _apply(self, ops, params, grads, lr):
        ops.rmsprop_update(
            params,
            grads,
            self.state["square_avg"],
            self.state.get("grad_avg"),
            self.state.get("momentum_buffer"),
            lr,
            self.alpha,
            self.eps,
            self.weight_decay,
            self.momentum,
            self.centered,
        )

    def _hyper(self):
        return {
            "alpha": self.alpha,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "centered": self.centered,
        }


class Adagrad(Optimizer):
    """Adagrad with PyTorch's update rule and defaults (torch.optim.Adagrad): each step is
    lr / (1 + (step-1)*lr_decay) * g / (sqrt(sum of g*g so far) + eps), the sum starting from
    `initial_accumulator_value`; `weight_decay` adds L2 to the gradient. lr_decay >= 0,
    weight_decay >= 0, initial_accumulator_value >= 0, eps > 0, all finite. State: sum (>= 0)."""

    state_names = ("sum",)
    nonnegative_state = ("sum",)

    def __init__(self, lr=1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        super().__init__(lr)
        name = type(self).__name__
        self.lr_decay = check_number(name, "lr_decay", lr_decay, 0)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, 0)
        self.initial_accumulator_value = check_number(
            name, "initial_accumulator_value", initial_accumulator_value, 0)
        self.eps = check_number(name, "eps", eps, 0, low_open=True)

    def initial_state(self, name):
        return self.initial_accumulator_value

    def _apply(self, ops, params, grads, lr):
        ops.adagrad_update(params, grads, self.state["sum"], self.step, lr, self.lr_decay,
                           self.eps, self.weight_decay)

    def _hyper(self):
        return {
            "lr_decay": self.lr_decay,
            "weight_decay": self.weight_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
            "eps": self.eps,
        }


class Adadelta(Optimizer):
    """Adadelta with PyTorch's update rule and defaults (torch.optim.Adadelta, lr=1.0): each
    step is lr * sqrt(mean of past squared steps + eps) / sqrt(mean of g*g + eps) * g, the means
    running with weight `rho`; `weight_decay` adds L2 to the gradient. rho in [0, 1), eps > 0,
    weight_decay >= 0, all finite. State: square_avg and acc_delta (both >= 0)."""

    state_names = ("square_avg", "acc_delta")
    nonnegative_state = ("square_avg", "acc_delta")

    def __init__(self, lr=1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(lr)
        name = type(self).__name__
        self.rho = check_number(name, "rho", rho, 0, 1, high_open=True)
        self.eps = check_number(name, "eps", eps, 0, low_open=True)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, 0)

    def _apply(self, ops, params, grads, lr):
        ops.adadelta_update(params, grads, self.state["square_avg"], self.state["acc_delta"],
                            lr, self.rho, self.eps, self.weight_decay)

    def _hyper(self):
        return {"rho": self.rho, "eps": self.eps, "weight_decay": self.weight_decay}


# The optimizer names Model.compile accepts (lower case; a saved config's "class" too).
OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad,
              "adadelta": Adadelta}


def get(opt) -> Optimizer:
    """An optimizer from an instance (returned as is), a name of OPTIMIZERS ('adam', any case;
    the defaults) or a saved config dict ({"class": "Adam", "lr": ..., ...});
    UnknownNameError listing the names otherwise."""
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, dict):
        cfg = dict(opt)
        name = str(cfg.pop("class", "")).lower()
        if name not in OPTIMIZERS:
            raise unknown("optimizer", name, OPTIMIZERS)
        return OPTIMIZERS[name](**cfg)
    if not isinstance(opt, str) or opt.lower() not in OPTIMIZERS:
        raise unknown("optimizer", opt, OPTIMIZERS)
    return OPTIMIZERS[opt.lower()]()
