"""Optimizers and learning-rate schedules.

An optimizer updates the model's flat parameter buffer from the flat gradient buffer with one
backend call (`ops.sgd_update` / `ops.adam_update`), its state living in flat buffers too. The
learning rate is a float or a schedule: a callable of the step (1-based) returning a float.

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


class Schedule:
    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"class": type(self).__name__, **vars(self)}


class StepDecay(Schedule):
    """lr * gamma ** (step // step_size), steps counted from 0. lr > 0, step_size >= 1 and
    gamma in (0, 1] (a decay, never a growth that ends in inf)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = check_number("StepDecay", "lr", lr, 0, low_open=True)
        self.step_size = check_int("StepDecay", "step_size", step_size, 1)
        self.gamma = check_number("StepDecay", "gamma", gamma, 0, 1, low_open=True)

    def __call__(self, step):
        return self.lr * self.gamma ** ((step - 1) // self.step_size)


class CosineDecay(Schedule):
    """Linear warm-up for `warmup_steps`, then a half cosine from lr to min_lr at decay_steps.
    lr > 0, decay_steps >= 1, 0 <= min_lr <= lr, warmup_steps >= 0."""

    def __init__(self, lr: float, decay_steps: int, min_lr: float = 0.0, warmup_steps: int = 0):
        self.lr = check_number("CosineDecay", "lr", lr, 0, low_open=True)
        self.decay_steps = check_int("CosineDecay", "decay_steps", decay_steps, 1)
        self.min_lr = check_number("CosineDecay", "min_lr", min_lr, 0, self.lr)
        self.warmup_steps = check_int("CosineDecay", "warmup_steps", warmup_steps, 0)

    def __call__(self, step):
        if step <= self.warmup_steps:
            return self.lr * step / max(self.warmup_steps, 1)
        t = min(step - self.warmup_steps, self.decay_steps) / self.decay_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


SCHEDULES = {"StepDecay": StepDecay, "CosineDecay": CosineDecay}


def _lr_from_config(lr):
    if isinstance(lr, dict):
        cfg = dict(lr)
        cls = cfg.pop("class", None)
        if cls not in SCHEDULES:
            raise unknown("learning-rate schedule", cls, SCHEDULES)
        return SCHEDULES[cls](**cfg)
    return lr


class Optimizer:
    state_names: tuple = ()
    nonnegative_state: tuple = ()  # state that is >= 0 by construction (checked on load)

    def __init__(self, lr):
        lr = _lr_from_config(lr)
        if not callable(lr):
            if not isinstance(lr, numbers.Real) or isinstance(lr, (bool, np.bool_)) \
                    or not math.isfinite(lr) or lr <= 0:
                why = " (not finite)" if isinstance(lr, numbers.Real) and \
                    not math.isfinite(lr) else ""
                raise ValueError(f"{type(self).__name__}: lr must be a positive number or a "
                                 f"schedule, got {lr!r}{why}")
            lr = float(lr)
        self.lr = lr
        self.step = 0
        self.state: dict = {}

    def current_lr(self, step: int | None = None) -> float:
        """The learning rate at `step` (default: the current step); a schedule's value is
        checked, so that a schedule returning NaN, inf or a negative rate stops training with
        its name instead of corrupting the weights."""
        step = self.step if step is None else step
        if not callable(self.lr):
            return float(self.lr)
        lr = self.lr(max(step, 1))
        if not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"{type(self).__name__}: the learning-rate schedule {self.lr!r} "
                             f"returned {lr!r} at step {max(step, 1)}; expected a finite "
                             "number >= 0")
        return float(lr)

    def state_dtype(self, ops):
        """float32 for half-precision models (see the module docstring), else the model's."""
        return "float32" if np.dtype(ops.dtype).itemsize < 4 else ops.dtype

    def setup(self, ops, size: int) -> None:
        """Allocate flat state buffers (once per model)."""
        self.ops = ops
        dtype = np.dtype(self.state_dtype(ops))
        for name in self.state_names:
            st = self.state.get(name)
            if st is None or st.shape != (size,) or st.dtype != dtype:
                self.state[name] = ops.zeros(size, dtype=dtype)

    def attach(self, model) -> None:
        """Called by Model.compile once the model's flat buffers exist."""

    def step_hooks(self) -> list:
        """`nnx.hooks.StepHooks` this optimizer brings to the model's training step (a
        data-parallel optimizer brings its strategy); none for a plain optimizer."""
        return []

    def update(self, params, grads) -> None:
        """One step: params -= f(grads, state). A half-precision model's parameters and
        gradients are updated in float32 (the state's dtype) and rounded back once."""
        self.step += 1
        lr = self.current_lr()
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


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(opt) -> Optimizer:
    """An optimizer from an instance, a name ('adam') or a saved config dict."""
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
