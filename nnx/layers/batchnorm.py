"""Batch normalization: BatchNorm1d ((N, F) or (N, F, L)) and BatchNorm2d ((N, C, H, W)); the
shared computation is `BatchNormBase` (batchnorm_base.py)."""

from __future__ import annotations

from .batchnorm_base import BatchNormBase


class BatchNorm1d(BatchNormBase):
    """Batch norm of (N, F) or (N, F, L) inputs over the batch (and length) axes, PyTorch's
    semantics: training normalizes with the batch statistics (biased variance) and updates
    running_mean / running_var as r = (1 - momentum) r + momentum * stat (unbiased variance);
    inference (training=False) normalizes with the running statistics.

    `get_weights()` order: gamma then beta; running_mean and running_var are buffers (saved in
    checkpoints, `model.get_buffers()`), not weights."""

    ranks = (2, 3)
    layout = "(batch, {F}) or (batch, {F}, length)"


class BatchNorm2d(BatchNormBase):
    """Batch norm of NCHW inputs over (N, H, W) per channel; otherwise as BatchNorm1d.

    `get_weights()` order: gamma then beta; running_mean and running_var are buffers."""

    ranks = (4,)
    layout = "(batch, {F}, height, width)"
