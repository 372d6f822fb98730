"""Reference optimizer kernels, written once against the array namespace `xp` and mixed into
`reference.Ops` (so they run on NumPy arrays, and on CuPy arrays with `xp = cupy`).

Every update works in place on flat buffers (the parameters, the gradients and the optimizer's
state buffers, all of one size) and returns None. Scalars arrive as Python floats (float64)
and are rounded to the array dtype once where they meet an array (NEP 50), so that `1 - beta2`
or `1 - alpha` is formed in float64 and does not drift in float32. The update rules are
PyTorch's (`torch.optim`, single-tensor path, maximize=False), in its order of operations;
the Numba (`numba_optim.py`) and CUDA (`cuda/optim.cu`) kernels are tested against these.
"""

from __future__ import annotations

import math


class OptimKernels:
    """Mixin: SGD, Adam/AdamW, RMSprop, Adagrad and Adadelta updates over flat buffers. Uses
    `self.xp`."""

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
        g = grads + weight_decay * params if weight_decay else grads
        if momentum:
            velocity *= momentum
            velocity += g
            g = g + momentum * velocity if nesterov else velocity
        params -= lr * g

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
        if weight_decay and decoupled:
            params *= 1.0 - lr * weight_decay
        g = grads + weight_decay * params if (weight_decay and not decoupled) else grads
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        bc1 = 1.0 - beta1**step
        bc2_sqrt = math.sqrt(1.0 - beta2**step)
        denom = self.xp.sqrt(v) / bc2_sqrt + eps
        params -= (lr / bc1) * m / denom

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
        """PyTorch's RMSprop:
            g += wd*p;  s = alpha*s + (1-alpha)*g*g
            centered: a = alpha*a + (1-alpha)*g;  avg = sqrt(max(s - a*a, 0)) + eps
            else:     avg = sqrt(s) + eps
            momentum: b = mu*b + g/avg;  p -= lr*b        else: p -= lr*g/avg
        `grad_avg` (centered) and `momentum_buffer` (momentum > 0) may be None when unused.
        The centered variance is clamped at 0: s >= a*a holds exactly (Jensen), but rounding
        can leave it a few ulps below when the gradient is nearly constant, and PyTorch then
        takes the square root of a negative number (NaN weights); the clamp changes nothing
        else."""
        xp = self.xp
        g = grads + weight_decay * params if weight_decay else grads
        square_avg *= alpha
        square_avg += (1.0 - alpha) * (g * g)
        if centered:
            grad_avg *= alpha
            grad_avg += (1.0 - alpha) * g
            avg = xp.sqrt(xp.maximum(square_avg - grad_avg * grad_avg, 0)) + eps
        else:
            avg = xp.sqrt(square_avg) + eps
        if momentum:
            momentum_buffer *= momentum
            momentum_buffer += g / avg
            params -= lr * momentum_buffer
        else:
            params -= lr * (g / avg)

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
        """PyTorch's Adagrad: g += wd*p;  sum += g*g;
        p -= lr / (1 + (step-1)*lr_decay) * g / (sqrt(sum) + eps)   (step is 1-based)."""
        g = grads + weight_decay * params if weight_decay else grads
        clr = lr / (1.0 + (step - 1) * lr_decay)
        state_sum += g * g
        params -= clr * (g / (self.xp.sqrt(state_sum) + eps))

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
        """PyTorch's Adadelta: g += wd*p;  s = rho*s + (1-rho)*g*g;
        d = sqrt(acc + eps) / sqrt(s + eps) * g;  acc = rho*acc + (1-rho)*d*d;  p -= lr*d."""
        xp = self.xp
        g = grads + weight_decay * params if weight_decay else grads
        square_avg *= rho
        square_avg += (1.0 - rho) * (g * g)
        delta = xp.sqrt(acc_delta + eps) / xp.sqrt(square_avg + eps) * g
        acc_delta *= rho
        acc_delta += (1.0 - rho) * (delta * delta)
        params -= lr * delta
