"""Conv1D: 1-D convolution (cross-correlation) over channels-first sequences (N, C, L), as
PyTorch's nn.Conv1d, with a fused activation.

It runs on the backend's conv2d kernels by viewing (N, C, L) as (N, C, 1, L) and W (O, C, k) as
(O, C, 1, k): one im2col + GEMM, no kernel of its own, so every backend that has conv2d has
Conv1D. The helpers below (argument normalization, geometry) are shared with the 1-D pooling
layers (`pool1d_base.py`).
"""

from __future__ import annotations

from ..errors import ShapeError
from ..kernels.reference_conv import out_size
from .base import Layer
from .conv2d import same_pads
from .conv_base import ConvBase
from .conv_base import is_int as _is_int


def positive_int(layer: Layer, arg: str, v) -> int:
    """A positive int from an int or a one-element tuple/list (PyTorch writes `(3,)`);
    ValueError naming the layer and the argument otherwise."""
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    if not _is_int(v) or v < 1:
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: {arg} must be a positive int, "
                         f"got {v!r}")
    return int(v)


def padding1d_spec(layer: Layer, padding, allow_same: bool = True):
    """Normalize a 1-D padding: "same" (where allowed) or (left, right) ints >= 0.

    Accepts "valid" (0), "same", an int, (p,) or (left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same" and allow_same:
            return "same"
    elif _is_int(padding) and padding >= 0:
        return (int(padding), int(padding))
    elif (isinstance(padding, (tuple, list)) and len(padding) in (1, 2)
          and all(_is_int(p) and p >= 0 for p in padding)):
        return (int(padding[0]), int(padding[-1]))
    choices = '"valid", "same", ' if allow_same else '"valid", '
    raise ValueError(f"{type(layer).__name__} {layer.name!r}: padding must be {choices}an int "
                     f">= 0 or (left, right), got {padding!r}")


def padding1d_config(padding):
    """JSON form of a normalized 1-D padding: "same", an int, or [left, right]."""
    if padding == "same":
        return "same"
    left, right = padding
    return left if left == right else [left, right]


def check_sequence(layer: Layer, shape: tuple, channels: int | None, arg: str) -> None:
    """Rank-3 channels-first input (batch, channels, length) with `channels` channels (any
    number when None); ShapeError naming the layer, the expected and the actual shape."""
    if len(shape) != 3 or (channels is not None and shape[1] != channels):
        what = f"{channels}" if channels is not None else "channels"
        extra = f" ({arg}={channels})" if channels is not None else ""
        raise ShapeError(f"{type(layer).__name__} {layer.name!r}: expected input of shape "
                         f"(batch, {what}, length){extra}, got shape {tuple(shape)}")


def window_length(layer: Layer, shape: tuple, extent: int, pads: tuple[int, int],
                  stride: int, what: str) -> int:
    """Output length of a window of `extent` (dilation included) sliding with `stride` over
    the padded length of `shape` (N, C, L); ShapeError if the window does not fit."""
    L = shape[2]
    left, right = pads
    if extent > L + left + right:
        raise ShapeError(
            f"{type(layer).__name__} {layer.name!r}: {what} {extent} is longer than the padded "
            f"input length {L + left + right} (padding {padding1d_config(pads)}); expected "
            f"length >= {extent - left - right}, got shape {tuple(shape)}")
    return out_size(L, extent, stride, left, right)


class Conv1D(ConvBase):
    """1-D convolution over channels-first sequences: y = act(conv(x, W) + b), x (N, C, L) ->
    y (N, out_channels, L_out), as PyTorch's nn.Conv1d (Keras's Conv1D is channels-last: put a
    `Reshape`/transpose in front, or feed (N, C, L)).

    - W of shape (out_channels, in_channels, kernel_size), b of shape (out_channels,); the same
      layout as nn.Conv1d.weight / .bias (no transpose); `get_weights()` order: W then b (b only
      with `use_bias`).
    - `stride`, `dilation`: positive ints. `padding`: an int, (left, right), "valid" or "same"
      (TensorFlow's: output length ceil(L / stride), the odd padding cell on the right; for
      stride 1 that is PyTorch's padding="same").
    - L_out = (L + left + right - dilation * (kernel_size - 1) - 1) // stride + 1.
    - The activation is fused as in Conv2D (`ops.activation_forward` on the conv output).

    - `in_channels=None`: inferred from the input shape when the model is built.

    Computed through the backend's conv2d kernels on an (N, C, 1, L) view, so it inherits their
    speed and their tests."""

    def __init__(
        self,
        in_channels: int | None,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        use_bias: bool = True,
        activation: str | None = None,
        kernel_initializer="he_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        name: str | None = None,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         use_bias, activation, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, name)

    def _parse_geometry(self, kernel_size, stride, padding, dilation):
        self.kernel_size = positive_int(self, "kernel_size", kernel_size)
        self.stride = positive_int(self, "stride", stride)
        self.dilation = positive_int(self, "dilation", dilation)
        self.padding = padding1d_spec(self, padding)

    def _kernel_shape(self):
        return (self.kernel_size,)

    # -- geometry -------------------------------------------------------------------------
    def _geometry(self, shape: tuple) -> tuple[tuple[int, int], int]:
        """((left, right) padding, L_out) for an input shape (N, C, L), validating it."""
        check_sequence(self, shape, self.in_channels, "in_channels")
        k, s, d = self.kernel_size, self.stride, self.dilation
        pads = same_pads(shape[2], k, s, d) if self.padding == "same" else self.padding
        extent = d * (k - 1) + 1
        what = "kernel" if d == 1 else "dilated kernel extent"
        return pads, window_length(self, shape, extent, pads, s, what)

    def output_shape(self, input_shape):
        _pads, length = self._geometry((None, *input_shape))
        return (self.out_channels, length)

    def size_from_input(self, input_shape):
        check_sequence(self, (None, *input_shape), None, "in_channels")
        return int(input_shape[0])

    # -- computation ----------------------------------------------------------------------
    def _conv(self, x, activation):
        pads, _ = self._geometry(tuple(x.shape))
        N, C, L = x.shape
        O, k = self.out_channels, self.kernel_size
        x4 = x.reshape(N, C, 1, L)
        W4 = self.params["W"].reshape(O, C, 1, k)
        geometry = ((1, self.stride), ((0, 0), pads), (1, self.dilation))
        z4, saved = self.ops.conv2d_forward(x4, W4, self.params.get("b"), *geometry)
        z = z4.reshape(N, O, z4.shape[3])
        y, act_saved = self.ops.activation_forward(z, activation)

        def backprop(dy, need_dx=True):
            nonlocal x4, saved, act_saved
            if saved is None:
                raise RuntimeError(f"{self.describe()}: backprop called twice; the first call "
                                   "freed what the forward saved")
            dz = self.ops.activation_backward(dy, act_saved, activation)
            dz4 = dz.reshape(N, O, 1, dz.shape[2])
            dW4 = self.grads["W"].reshape(O, C, 1, k)  # a view: the kernel writes through it
            db = self.grads.get("b")
            dx4, _dW, _db = self.ops.conv2d_backward(dz4, x4, W4, saved, *geometry, need_dx,
                                                     dW4, db)
            x4 = saved = act_saved = None  # free the im2col buffer
            return None if dx4 is None else dx4.reshape(N, C, L)

        return y, backprop

    def get_config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": padding1d_config(self.padding),
            "dilation": self.dilation,
            **self._common_config(),
        }
