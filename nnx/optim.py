"""Optimizers and learning-rate schedules.

An optimizer updates the model's flat parameter buffer from the flat gradient buffer with one
backend call (`ops.sgd_update` / `ops.adam_update`), its state living in flat buffers too. The
learning rate is a float or a schedule: a callable of the step (1-based) returning a float.
"""

from __future__ import annotations

import math

from .errors import unknown


class Schedule:
    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"class": type(self).__name__, **vars(self)}


class StepDecay(Schedule):
    """lr * gamma ** (step // step_size), steps counted from 0."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"StepDecay: step_size must be >= 1, got {step_size}")
        self.lr, self.step_size, self.gamma = float(lr), int(step_size), float(gamma)

    def __call__(self, step):
        return self.lr * self.gamma ** ((step - 1) // self.step_size)


class CosineDecay(Schedule):
    """Linear warm-up for `warmup_steps`, then a half cosine from lr to min_lr at decay_steps."""

    def __init__(self, lr: float, decay_steps: int, min_lr: float = 0.0, warmup_steps: int = 0):
        if decay_steps < 1:
            raise ValueError(f"CosineDecay: decay_steps must be >= 1, got {decay_steps}")
        self.lr, self.decay_steps = float(lr), int(decay_steps)
        self.min_lr, self.warmup_steps = float(min_lr), int(warmup_steps)

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

    def __init__(self, lr):
        lr = _lr_from_config(lr)
        if not callable(lr) and (not isinstance(lr, (int, float)) or lr <= 0):
            raise ValueError(
                f"{type(self).__name__}: lr must be a positive number or a schedule, got {lr!r}"
            )
        self.lr = lr
        self.step = 0
        self.state: dict = {}

    def current_lr(self, step: int | None = None) -> float:
        step = self.step if step is None else step
        return float(self.lr(max(step, 1))) if callable(self.lr) else float(self.lr)

    def setup(self, ops, size: int) -> None:
        """Allocate flat state buffers (once per model)."""
        self.ops = ops
        for name in self.state_names:
            if name not in self.state or self.state[name].shape != (size,):
                self.state[name] = ops.zeros(size)

    def attach(self, model) -> None:
        """Called by Model.compile once the model's flat buffers exist."""

    def step_hooks(self) -> list:
        """`nnx.hooks.StepHooks` this optimizer brings to the model's training step (a
        data-parallel optimizer brings its strategy); none for a plain optimizer."""
        return []

    def update(self, params, grads) -> None:
        self.step += 1
        self._apply(self.ops, params, grads, self.current_lr())

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
    """SGD with optional momentum, Nesterov momentum and L2 weight decay (PyTorch semantics)."""

    def __init__(
        self, lr=0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
    ):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if nesterov and not momentum:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decay = float(weight_decay)
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
    """Adam with PyTorch's bias correction; weight_decay adds L2 to the gradient."""

    state_names = ("m", "v")
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
        for arg, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= b < 1:
                raise ValueError(f"{type(self).__name__}: {arg} must be in [0, 1), got {b}")
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be > 0, got {eps}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay = float(weight_decay)

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
