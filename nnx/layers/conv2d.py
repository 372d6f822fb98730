"""Conv2D: 2-D convolution (cross-correlation) over NCHW inputs, with a fused activation."""

from __future__ import annotations

from ..errors import ShapeError
from ..kernels.reference_conv import out_size
from .base import Layer
from .conv_base import ConvBase
from .conv_base import is_int as _is_int


def positive_pair(layer: Layer, arg: str, v) -> tuple[int, int]:
    """(a, b) from a positive int or a pair of positive ints (lists from JSON accepted)."""
    if _is_int(v):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(_is_int(a) and a >= 1 for a in v)):
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: {arg} must be a positive int "
                         f"or a pair of positive ints, got {v!r}")
    return (int(v[0]), int(v[1]))


def padding_spec(layer: Layer, padding, allow_same: bool = True):
    """Normalize a padding argument: "same", or ((top, bottom), (left, right)) of ints >= 0.

    Accepts "valid" (0), "same" (where allowed), an int, (ph, pw) or ((t, b), (l, r))."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same" and allow_same:
            return "same"
    elif _is_int(padding) and padding >= 0:
        return ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        out = []
        for p in padding:
            if _is_int(p) and p >= 0:
                out.append((p, p))
            elif (isinstance(p, (tuple, list)) and len(p) == 2
                  and all(_is_int(a) and a >= 0 for a in p)):
                out.append((int(p[0]), int(p[1])))
            else:
                break
        else:
            return tuple(out)
    choices = '"valid", "same", ' if allow_same else '"valid", '
    raise ValueError(f"{type(layer).__name__} {layer.name!r}: padding must be {choices}an int "
                     f">= 0, (ph, pw) or ((top, bottom), (left, right)), got {padding!r}")


def padding_config(padding):
    """JSON form of a normalized padding: "same", an int, [ph, pw] or [[t, b], [l, r]]."""
    if padding == "same":
        return "same"
    (t, b), (l, r) = padding
    if t == b == l == r:
        return t
    if t == b and l == r:
        return [t, l]
    return [[t, b], [l, r]]


def same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's "same": output ceil(size / s); the odd cell of padding goes after."""
    total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return (total // 2, total - total // 2)


def check_image(layer: Layer, shape: tuple, channels: int | None, arg: str) -> None:
    """Rank-4 NCHW input with `channels` channels (any number while None: not inferred yet),
    or a ShapeError naming the layer."""
    if len(shape) != 4 or (channels is not None and shape[1] != channels):
        raise ShapeError(f"{type(layer).__name__} {layer.name!r}: expected input of shape "
                         f"(batch, {channels}, height, width) ({arg}={channels}), "
                         f"got shape {tuple(shape)}")


def check_window(layer: Layer, shape: tuple, extent: tuple, pads, what: str) -> tuple[int, int]:
    """Output (Ho, Wo) of a window of `extent` (kh, kw, dilation included) sliding with the
    layer's stride over the padded input; ShapeError if the window does not fit."""
    H, W = shape[2], shape[3]
    (pt, pb), (pl, pr) = pads
    Hp, Wp = H + pt + pb, W + pl + pr
    if extent[0] > Hp or extent[1] > Wp:
        raise ShapeError(
            f"{type(layer).__name__} {layer.name!r}: {what} {extent[0]}x{extent[1]} is larger "
            f"than the padded input {Hp}x{Wp} (input shape {tuple(shape)}, padding "
            f"{padding_config(pads)}); expected height >= {extent[0] - pt - pb} and width >= "
            f"{extent[1] - pl - pr}, got shape {tuple(shape)}")
    sh, sw = layer.stride
    return out_size(H, extent[0], sh, pt, pb), out_size(W, extent[1], sw, pl, pr)


class Conv2D(ConvBase):
    """2-D convolution over NCHW inputs: y = act(conv(x, W) + b).

    - W of shape (out_channels, in_channels, kh, kw), b of shape (out_channels,);
      `get_weights()` order: W then b (b only with `use_bias`).
    - `padding`: an int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
      (TensorFlow's: output size ceil(size / stride), the odd padding cell at the bottom/right).
    - The activation is fused: the backend computes conv + bias in one GEMM pass and the
      activation on its output (`ops.activation_forward`).
    - `in_channels=None`: inferred from the input shape when the model is built (as Keras's
      Conv2D(filters, kernel_size)).
    """

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
        self.kernel_size = positive_pair(self, "kernel_size", kernel_size)
        self.stride = positive_pair(self, "stride", stride)
        self.dilation = positive_pair(self, "dilation", dilation)
        self.padding = padding_spec(self, padding)

    def _kernel_shape(self):
        return self.kernel_size

    # -- geometry -------------------------------------------------------------------------
    def _extent(self) -> tuple[int, int]:
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        return (dh * (kh - 1) + 1, dw * (kw - 1) + 1)

    def _geometry(self, shape: tuple):
        """(pads, (Ho, Wo)) for an input shape (N, C, H, W), validating it."""
        check_image(self, shape, self.in_channels, "in_channels")
        if self.padding == "same":
            (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
            pads = (same_pads(shape[2], kh, sh, dh), same_pads(shape[3], kw, sw, dw))
        else:
            pads = self.padding
        extent = self._extent()
        what = "kernel" if extent == self.kernel_size else "dilated kernel extent"
        return pads, check_window(self, shape, extent, pads, what)

    def output_shape(self, input_shape):
        _pads, (Ho, Wo) = self._geometry((None, *input_shape))
        return (self.out_channels, Ho, Wo)

    def size_from_input(self, input_shape):
        check_image(self, (None, *input_shape), None, "in_channels")
        return int(input_shape[0])

    # -- computation ----------------------------------------------------------------------
    def _conv(self, x, activation):
        pads, _ = self._geometry(tuple(x.shape))
        W = self.params["W"]
        z, saved = self.ops.conv2d_forward(x, W, self.params.get("b"), self.stride, pads,
                                           self.dilation)
        y, act_saved = self.ops.activation_forward(z, activation)

        def backprop(dy, need_dx=True):
            nonlocal x, saved, act_saved
            if saved is None:
                raise RuntimeError(f"{self.describe()}: backprop called twice; the first call "
                                   "freed what the forward saved")
            dz = self.ops.activation_backward(dy, act_saved, activation)
            dx, _dW, _db = self.ops.conv2d_backward(
                dz, x, W, saved, self.stride, pads, self.dilation, need_dx, self.grads["W"],
                self.grads.get("b"))
            x = saved = act_saved = None  # free the im2col buffer
            return dx

        return y, backprop

    def get_config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": padding_config(self.padding),
            "dilation": list(self.dilation),
            **self._common_config(),
        }
