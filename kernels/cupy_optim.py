"""The optimizer updates of the CuPy backend: SGD and Adam/AdamW as ONE kernel launch each over
the flat parameter buffer, with the loss-scaling checks of mixed precision around them.

Kept apart from the layer kernels because it is the one place where CUDA graphs and the host
meet: the step-dependent scalars (Adam's lr / (1 - beta1**step), sqrt(1 - beta2**step),
1 - lr*wd, and the learning rate a schedule changes) are kernel arguments in an eager step, and
come from a device buffer that `CapturedGraph.replay()` rewrites when the update is being
captured into a graph (cupy_graphs.py explains why).
"""

from __future__ import annotations

import math

import numpy

from .cupy_graphs import recording
from .cupy_source import BLOCK, _grid


def adam_scalars(step: int, lr: float, beta1: float, beta2: float, weight_decay: float):
    """(lr / (1 - beta1**step), sqrt(1 - beta2**step), 1 - lr*wd), in float64 on the host."""
    bc1 = 1.0 - beta1**step
    return lr / bc1, math.sqrt(1.0 - beta2**step), 1.0 - lr * weight_decay


class OptimizerMixin:
    """The fused optimizer updates of CupyOps (mixed in before `Ops`). Uses `_k`, `_scope`,
    `max_grid`, `_dummy` and the loss-scale state of MixedPrecisionMixin."""

    def _flat_variant(self, params, *others) -> str | None:
        v = {numpy.dtype(numpy.float32): "f32", numpy.dtype(numpy.float64): "f64"}.get(
            numpy.dtype(params.dtype)
        )
        if v is None or not params.flags.c_contiguous:
            return None
        for a in others:
            if a.dtype != params.dtype or not a.flags.c_contiguous or a.size != params.size:
                return None
        return v

    def _no_fused_update(self, what):
        if self._scaling:
            raise ValueError(
                f"{what} with loss scaling needs C-contiguous float32 params, grads and state "
                "of equal size (the flat buffers)"
            )

    def _begin_update(self, grads) -> None:
        if self._scaling:
            self._found_inf.fill(0)
            self._k("nnx_check_finite_" + ("f64" if grads.dtype == numpy.float64 else "f32"))(
                _grid(grads.size, self.max_grid), BLOCK, grads, grads.size, self._found_inf
            )

    def _end_update(self) -> None:
        if self._dynamic:
            self._k("nnx_update_loss_scale")(
                1,
                1,
                self._loss_scale,
                self._good_steps,
                self._found_inf,
                self._skipped_steps,
                *self._scale_args,
            )

    def _hyper(self, compute, step: int, lr: float):
        """(hyper buffer, use_hyper) for an optimizer launch: the dummy and 0 in an eager step,
        a device buffer that replay() refills while a CUDA graph is being captured."""
        rec = recording(self)
        if rec is None:
            return self._dummy[numpy.dtype(numpy.float64)], 0
        return rec.hyper_buffer(3, compute, step, lr), 1

    def sgd_update(
        self,
        params,
        grads,
        velocity,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        """PyTorch's SGD: g += wd*p; v = mu*v + g; p -= lr*(g + mu*v if nesterov else v)."""
        if momentum and velocity is None:
            raise ValueError("sgd_update with momentum needs a velocity buffer")
        state = (velocity,) if momentum else ()
        variant = self._flat_variant(params, grads, *state)
        if variant is None:
            self._no_fused_update("sgd_update")
            return super().sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay)
        with self._scope():
            self._begin_update(grads)
            if params.size:
                vel = velocity if momentum else self._dummy[numpy.dtype(params.dtype)]
                # SGD has no step counter: a replay's step only selects its lr
                hyper, use_hyper = self._hyper(lambda _s, rate: (rate, 0.0, 0.0), 0, lr)
                self._k("nnx_sgd_" + variant)(
                    _grid(params.size, self.max_grid),
                    BLOCK,
                    params,
                    grads,
                    vel,
                    params.size,
                    float(lr),
                    float(momentum),
                    int(bool(nesterov)),
                    float(weight_decay),
                    self._loss_scale,
                    self._found_inf,
                    hyper,
                    use_hyper,
                )
            self._end_update()
        return None

    def adam_update(
        self,
        params,
        grads,
        m,
        v,
        step: int,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        """Adam (decoupled=False: L2 added to the gradient) or AdamW (decoupled weight decay),
        with PyTorch's bias correction. Scalars are computed in float64 on the host."""
        variant = self._flat_variant(params, grads, m, v)
        if variant is None:
            self._no_fused_update("adam_update")
            return super().adam_update(
                params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled
            )
        lr_bc1, bc2_sqrt, decay = adam_scalars(step, lr, beta1, beta2, weight_decay)
        with self._scope():
            self._begin_update(grads)
            if params.size:
                hyper, use_hyper = self._hyper(
                    lambda s, rate: adam_scalars(s, rate, beta1, beta2, weight_decay), step, lr
                )
                self._k("nnx_adam_" + variant)(
                    _grid(params.size, self.max_grid),
                    BLOCK,
                    params,
                    grads,
                    m,
                    v,
                    params.size,
                    float(lr_bc1),
                    float(beta1),
                    1.0 - beta1,
                    float(beta2),
                    1.0 - beta2,
                    float(bc2_sqrt),
                    float(eps),
                    float(weight_decay),
                    float(decay),
                    int(bool(weight_decay and decoupled)),
                    self._loss_scale,
                    self._found_inf,
                    hyper,
                    use_hyper,
                )
            self._end_update()
        return None
