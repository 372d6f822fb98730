"""GlobalAvgPool1D: (N, C, L) -> (N, C), the mean over the length axis of channels-first
sequences (Conv1D's layout)."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer
from .conv1d import check_sequence


class GlobalAvgPool1D(Layer):
    """(N, C, L) -> (N, C): the mean over the length axis of a channels-first sequence, as
    PyTorch's `nn.AdaptiveAvgPool1d(1)` followed by a flatten. No parameters.

    For channels-last sequences (N, T, F) (recurrent and attention layers), use Keras's
    `GlobalAveragePooling1D` (the mean over T) instead. Runs the backend's global_avgpool2d
    kernels on an (N, C, 1, L) view."""

    def call(self, x, training):
        check_sequence(self, tuple(x.shape), None, "channels")
        N, C, L = x.shape
        if L < 1:
            raise ShapeError(f"GlobalAvgPool1D {self.name!r}: expected length >= 1, got shape "
                             f"{tuple(x.shape)}")
        y, saved = self.ops.global_avgpool2d_forward(x.reshape(N, C, 1, L))

        def backprop(dy, need_dx=True):
            if not need_dx:
                return None
            return self.ops.global_avgpool2d_backward(dy, saved).reshape(N, C, L)

        return y, backprop

    def output_shape(self, input_shape):
        check_sequence(self, (None, *input_shape), None, "channels")
        return (input_shape[0],)
