"""The optimizer updates of the CuPy backend: SGD, Adam/AdamW, RMSprop, Adagrad and Adadelta as
ONE kernel launch each over the flat parameter buffer, with the loss-scaling checks of mixed
precision around them.

Kept apart from the layer kernels because it is the one place where CUDA graphs and the host
meet: the step-dependent scalars (Adam's lr / (1 - beta1**step), sqrt(1 - beta2**step),
1 - lr*wd, Adagrad's lr / (1 + (step-1)*lr_decay), and the learning rate a schedule or a
callback changes: read afresh at every call, never cached) are kernel arguments in an eager
step, and come from a device buffer that `CapturedGraph.replay()` rewrites when the update is
being captured into a graph (cupy_graphs.py explains why; a replay takes its rate from
`replay(lr=...)`, not from the optimizer).
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



def _lr_only(_step, rate):
    """The replay scalars of an optimizer whose only step-dependent value is its rate."""
    return (rate, 0.0, 0.0)

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

    def _launch_update(self, kernel: str, params, grads, args: tuple, compute, step: int, lr):
        """One fused optimizer launch on the Ops' device, between the loss-scale overflow check
        and the dynamic loss-scale update. `args` are the kernel's arguments before the shared
        tail (loss scale, overflow flag, hyper buffer, use_hyper); `compute(step, lr)` gives the
        step-dependent scalars a replayed CUDA graph reads (see `_hyper`)."""
        with self._scope():
            self._begin_update(grads)
            if params.size:
                hyper, use_hyper = self._hyper(compute, step, lr)
                self._k(kernel)(_grid(params.size, self.max_grid), BLOCK, *args,
                                self._loss_scale, self._found_inf, hyper, use_hyper)
            self._end_update()

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
        vel = velocity if momentum else self._dummy[numpy.dtype(params.dtype)]
        args = (params, grads, vel, params.size, float(lr), float(momentum), int(bool(nesterov)),
                float(weight_decay))
        # SGD has no step counter: a replay's step only selects its lr
        self._launch_update("nnx_sgd_" + variant, params, grads, args, _lr_only, 0, lr)
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
        args = (params, grads, m, v, params.size, float(lr_bc1), float(beta1), 1.0 - beta1,
                float(beta2), 1.0 - beta2, float(bc2_sqrt), float(eps), float(weight_decay),
                float(decay), int(bool(weight_decay and decoupled)))
        self._launch_update(
            "nnx_adam_" + variant, params, grads, args,
            lambda s, rate: adam_scalars(s, rate, beta1, beta2, weight_decay), step, lr,
        )
        return None

    def rmsprop_update(
        self,
        params,
        grads,
        square_avg,
        grad_avg,
        momentum_buffer,
        lr: float,
        alpha: float,
        eps: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        """PyTorch's RMSprop in one launch (see `reference_optim.OptimKernels`); `grad_avg`
        and `momentum_buffer` are read only when centered / momentum > 0."""
        state = [square_avg]
        if centered:
            state.append(grad_avg)
        if momentum:
            state.append(momentum_buffer)
        variant = None if any(a is None for a in state) else self._flat_variant(params, grads,
                                                                                  *state)
        if variant is None:
            self._no_fused_update("rmsprop_update")
            return super().rmsprop_update(params, grads, square_avg, grad_avg, momentum_buffer,
                                          lr, alpha, eps, weight_decay, momentum, centered)
        dummy = self._dummy[numpy.dtype(params.dtype)]
        args = (params, grads, square_avg, grad_avg if centered else dummy,
                momentum_buffer if momentum else dummy, params.size, float(lr), float(alpha),
                1.0 - alpha, float(eps), float(weight_decay), float(momentum),
                int(bool(centered)))
        self._launch_update("nnx_rmsprop_" + variant, params, grads, args, _lr_only, 0, lr)
        return None

    def adagrad_update(
        self,
        params,
        grads,
        state_sum,
        step: int,
        lr: float,
        lr_decay: float,
        eps: float,
        weight_decay: float = 0.0,
    ) -> None:
        """PyTorch's Adagrad in one launch; lr / (1 + (step-1)*lr_decay) is formed in float64
        on the host (and per replayed step inside a CUDA graph)."""
        variant = self._flat_variant(params, grads, state_sum)
        if variant is None:
            self._no_fused_update("adagrad_update")
            return super().adagrad_update(params, grads, state_sum, step, lr, lr_decay, eps,
                                          weight_decay)

        def decayed(s, rate):
            return (rate / (1.0 + (s - 1) * lr_decay), 0.0, 0.0)

        args = (params, grads, state_sum, params.size, float(decayed(step, lr)[0]), float(eps),
                float(weight_decay))
        self._launch_update("nnx_adagrad_" + variant, params, grads, args, decayed, step, lr)
        return None

    def adadelta_update(
        self,
        params,
        grads,
        square_avg,
        acc_delta,
        lr: float,
        rho: float,
        eps: float,
        weight_decay: float = 0.0,
    ) -> None:
        """PyTorch's Adadelta in one launch (see `reference_optim.OptimKernels`)."""
        variant = self._flat_variant(params, grads, square_avg, acc_delta)
        if variant is None:
            self._no_fused_update("adadelta_update")
            return super().adadelta_update(params, grads, square_avg, acc_delta, lr, rho, eps,
                                           weight_decay)
        args = (params, grads, square_avg, acc_delta, params.size, float(lr), float(rho),
                1.0 - rho, float(eps), float(weight_decay))
        self._launch_update("nnx_adadelta_" + variant, params, grads, args, _lr_only, 0, lr)
        return None
