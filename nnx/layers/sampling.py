"""Sampling: the reparameterization trick of a variational autoencoder, with its KL term.

Sampling(latent_dim, kl_weight=1.0) takes x of shape (N, ..., 2 * latent_dim), read as
[mean | log-variance] along the last axis, and returns

    z = mean + exp(log_var / 2) * eps,    eps ~ N(0, I) from the backend's generator

of shape (N, ..., latent_dim): a sample of q(z | x) = N(mean, exp(log_var)) that is a
differentiable function of mean and log_var (Kingma & Welling, 2014). It samples in training
and at inference alike (a VAE is a stochastic model; decode the mean yourself for a
deterministic reconstruction). The draws come from the model's seeded generator, so a seed
gives the same samples on every run of a backend.

It also adds the KL divergence of q from the prior N(0, I),

    kl = kl_weight * mean over the batch of  -1/2 * sum(1 + log_var - mean^2 - exp(log_var))

(the sum over every latent entry of a sample), through `Layer.add_loss(kl, "kl")`: the training
step includes it in the loss and in the gradient, `evaluate` in the loss, and the history shows
it per epoch as `kl` (and `val_kl`). Its gradient is this layer's: the backprop adds
kl_weight / N * (mean, (exp(log_var) - 1) / 2) to the input gradient, but only for calls whose
term was collected (outside a training step or evaluation, e.g. `forward`, there is no term and
no extra gradient). Pick `kl_weight` to match the reconstruction loss's scale: with a loss that
averages over the D outputs of a sample (mse, binary_cross_entropy), `kl_weight = 1 / D` makes
the total the negative ELBO per output.

No parameters; it saves and loads like any layer (config: latent_dim, kl_weight, name).
"""

from __future__ import annotations

from .base import LOSS_TERMS, Layer


class Sampling(Layer):
    """Sampling(latent_dim, kl_weight=1.0): x (N, ..., 2 * latent_dim) read as [mean | log_var]
    -> z = mean + exp(log_var / 2) * eps, shape (N, ..., latent_dim), adding the weighted KL
    term to the loss (see the module docstring). No parameters."""

    def __init__(self, latent_dim: int, kl_weight: float = 1.0, name: str | None = None):
        super().__init__(name)
        self._check_positive_ints(latent_dim=latent_dim)
        if not isinstance(kl_weight, (int, float)) or isinstance(kl_weight, bool) \
                or not kl_weight >= 0 or kl_weight == float("inf"):
            raise ValueError(f"Sampling {self.name!r}: kl_weight must be a finite number >= 0, "
                             f"got {kl_weight!r}")
        self.latent_dim = latent_dim
        self.kl_weight = float(kl_weight)

    def call(self, x, training):
        self._check_last_dim(x, 2 * self.latent_dim, "2 * latent_dim")
        d = self.latent_dim
        mean, log_var = x[..., :d], x[..., d:]
        exp = self.ops.xp.exp
        std = exp(0.5 * log_var)
        eps = self.ops.random_normal(tuple(mean.shape))
        z = mean + std * eps
        n = x.shape[0]
        collected = LOSS_TERMS.get() is not None and self.kl_weight > 0 and n > 0
        if collected:
            var = std * std
            kl = (var + mean * mean - 1.0 - log_var).sum() * (0.5 * self.kl_weight / n)
            self.add_loss(kl, "kl")

        def backprop(dz, need_dx=True):
            if not need_dx:
                return None
            dx = self.ops.empty(tuple(x.shape), dtype=dz.dtype)
            dx[..., :d] = dz
            dx[..., d:] = dz * std * eps * 0.5
            if collected:  # d kl / d mean, d kl / d log_var
                scale = self.kl_weight / n
                dx[..., :d] += mean * scale
                dx[..., d:] += (var - 1.0) * (0.5 * scale)
            return dx

        return z, backprop

    def output_shape(self, input_shape):
        if not input_shape or input_shape[-1] != 2 * self.latent_dim:
            raise self._expect("input shape (..., 2 * latent_dim)",
                               f"(..., {2 * self.latent_dim})", tuple(input_shape))
        return (*input_shape[:-1], self.latent_dim)

    def get_config(self):
        return {"latent_dim": self.latent_dim, "kl_weight": self.kl_weight, "name": self.name}
