"""Reference kernels: conv2d, pooling, batch norm and layer norm; written against `self.xp`.

Layout is NCHW throughout: x (N, C, H, W), conv weights W (O, C, kh, kw), bias b (O,).

Geometry arguments, as the layers pass them (plain ints are accepted too):
- `stride`, `dilation`: (sh, sw), (dh, dw);
- `padding`: ((top, bottom), (left, right)), already resolved by the layer ("same" is the
  layer's business, since it may be asymmetric and depend on the input size); (ph, pw) and an
  int mean symmetric padding.
Output size per spatial axis: (size + pad_lo + pad_hi - d*(k-1) - 1) // s + 1.

Contract (every op has a backward twin, as in `reference.py`):
- `conv2d_forward(x, W, b, stride, padding, dilation) -> (y, saved)`: y = conv(x, W) + b, no
  activation (the layer fuses it with `activation_forward`). Computed as im2col + one GEMM with
  the batch folded into it: cols (C*kh*kw, N*Ho*Wo) built by a loop over the kh*kw kernel
  offsets, each a strided slice copy (no `as_strided`, so CuPy runs it unchanged).
  `saved` is the cols matrix (reused by the weight gradient).
- `conv2d_backward(dy, x, W, saved, stride, padding, dilation, need_dx, dW_out, db_out)
  -> (dx, dW, db)`: dW, db written into `dW_out` / `db_out` when given; dx skipped (None)
  unless `need_dx`; col2im by the same loop with slice `+=`.
- `maxpool2d_forward(x, pool_size, stride, padding) -> (y, saved)` / `maxpool2d_backward(dy,
  saved) -> dx`: -inf padding; the first maximum of a window (row-major) gets the gradient.
- `avgpool2d_forward(x, pool_size, stride, padding, count_include_pad) -> (y, saved)` /
  `avgpool2d_backward(dy, saved) -> dx`.
- `global_avgpool2d_forward(x) -> (y (N, C), saved)` / `global_avgpool2d_backward(dy, saved)`.
- `batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training, axes)
  -> (y, saved)`: statistics over `axes` (e.g. (0,) for (N, F), (0, 2, 3) for NCHW); in training
  the batch statistics normalize and the running ones are updated in place with PyTorch's rule
  (r = (1 - momentum) * r + momentum * stat, the variance unbiased); in eval the running ones
  normalize. `batchnorm_backward(dy, saved, need_dx, dgamma_out, dbeta_out) -> (dx, dgamma,
  dbeta)` (eval mode: the statistics are constants).
- `layernorm_forward(x, gamma, beta, eps) -> (y, saved)`: normalizes over the trailing
  `gamma.ndim` axes (biased variance, as PyTorch); `layernorm_backward(dy, saved, need_dx,
  dgamma_out, dbeta_out) -> (dx, dgamma, dbeta)`.
"""

from __future__ import annotations

import math


def pair(v, what: str = "value") -> tuple[int, int]:
    """(a, b) from an int or a pair of ints."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def pads2d(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) from an int, (ph, pw) or ((t, b), (l, r))."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding), (padding, padding))
    ph, pw = padding
    out = []
    for p in (ph, pw):
        if isinstance(p, int) and not isinstance(p, bool):
            out.append((p, p))
        else:
            lo, hi = p
            out.append((int(lo), int(hi)))
    return tuple(out)


def out_size(size: int, k: int, s: int, lo: int, hi: int, d: int = 1) -> int:
    """Output length of a sliding window (floor mode); < 1 when the window does not fit."""
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def _window(offset: int, s: int, n_out: int) -> slice:
    """Positions offset, offset+s, ..., offset+s*(n_out-1)."""
    return slice(offset, offset + s * (n_out - 1) + 1, s)


class ConvKernels:
    """Mixin of `Ops` (conv2d, pooling, batch norm and layer norm)."""

    # -- conv2d ---------------------------------------------------------------------------
    def _im2col(self, x, kh, kw, stride, pads, dilation):
        """cols (C*kh*kw, N*Ho*Wo): row (c, i, j), column (n, oh, ow) holds
        xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]. The input is first copied once into a padded
        channel-major buffer (C, N, Hp, Wp), so that each of the kh*kw copies writes a
        contiguous (N, Ho, Wo) block."""
        xp = self.xp
        N, C, H, W = x.shape
        (pt, pb), (pl, pr) = pads
        (sh, sw), (dh, dw) = stride, dilation
        Hp, Wp = H + pt + pb, W + pl + pr
        Ho, Wo = out_size(H, kh, sh, pt, pb, dh), out_size(W, kw, sw, pl, pr, dw)
        if pt or pb or pl or pr:
            xt = xp.zeros((C, N, Hp, Wp), dtype=x.dtype)
            xt[:, :, pt:pt + H, pl:pl + W] = x.transpose(1, 0, 2, 3)
        else:
            xt = xp.ascontiguousarray(x.transpose(1, 0, 2, 3))
        cols = xp.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)
        for i in range(kh):
            rows = _window(i * dh, sh, Ho)
            for j in range(kw):
                cols[:, i, j] = xt[:, :, rows, _window(j * dw, sw, Wo)]
        return cols.reshape(C * kh * kw, N * Ho * Wo), Ho, Wo

    def _col2im(self, dcols, x_shape, kh, kw, stride, pads, dilation, Ho, Wo):
        """Adjoint of `_im2col`: (C*kh*kw, N*Ho*Wo) -> dx (N, C, H, W), C-contiguous."""
        xp = self.xp
        N, C, H, W = x_shape
        (pt, pb), (pl, pr) = pads
        (sh, sw), (dh, dw) = stride, dilation
        dcols = dcols.reshape(C, kh, kw, N, Ho, Wo)
        dxt = xp.zeros((C, N, H + pt + pb, W + pl + pr), dtype=dcols.dtype)
        for i in range(kh):
            rows = _window(i * dh, sh, Ho)
            for j in range(kw):
                dxt[:, :, rows, _window(j * dw, sw, Wo)] += dcols[:, i, j]
        return xp.ascontiguousarray(dxt[:, :, pt:pt + H, pl:pl + W].transpose(1, 0, 2, 3))

    def conv2d_forward(self, x, W, b, stride=1, padding=0, dilation=1):
        """y = conv2d(x, W) + b (cross-correlation, as every framework), NCHW. Returns
        (y (N, O, Ho, Wo) C-contiguous, saved)."""
        stride, dilation, pads = pair(stride), pair(dilation), pads2d(padding)
        O, C, kh, kw = W.shape
        N = x.shape[0]
        cols, Ho, Wo = self._im2col(x, kh, kw, stride, pads, dilation)
        z = (W.reshape(O, C * kh * kw) @ cols).reshape(O, N, Ho, Wo)  # the one GEMM
        if b is None:
            return self.xp.ascontiguousarray(z.transpose(1, 0, 2, 3)), cols
        y = self.xp.empty((N, O, Ho, Wo), dtype=z.dtype)
        self.xp.add(z.transpose(1, 0, 2, 3), b.reshape(1, O, 1, 1), out=y)  # bias + NCHW copy
        return y, cols

    def conv2d_backward(self, dy, x, W, saved, stride=1, padding=0, dilation=1, need_dx=True,
                        dW_out=None, db_out=None):
        """(dx, dW, db) of conv2d_forward; `saved` is its cols. dx is None unless need_dx."""
        xp = self.xp
        stride, dilation, pads = pair(stride), pair(dilation), pads2d(padding)
        O, C, kh, kw = W.shape
        K = C * kh * kw
        cols = saved
        Ho, Wo = dy.shape[2], dy.shape[3]
        dy2 = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(O, -1)  # (O, N*Ho*Wo)
        if dW_out is not None and dW_out.flags.c_contiguous:
            xp.matmul(dy2, cols.T, out=dW_out.reshape(O, K))
            dW = dW_out
        else:
            dW = (dy2 @ cols.T).reshape(W.shape)
            if dW_out is not None:
                dW_out[...] = dW
                dW = dW_out
        db = dy2.sum(axis=1, out=db_out)
        dx = None
        if need_dx:
            dcols = W.reshape(O, K).T @ dy2  # (K, N*Ho*Wo)
            dx = self._col2im(dcols, x.shape, kh, kw, stride, pads, dilation, Ho, Wo)
        return dx, dW, db

    # -- pooling --------------------------------------------------------------------------
    def _pool_geometry(self, x, pool_size, stride, padding):
        (kh, kw) = pair(pool_size)
        (sh, sw) = pair(stride if stride is not None else pool_size)
        pads = pads2d(padding)
        (pt, pb), (pl, pr) = pads
        N, C, H, W = x.shape
        Ho, Wo = out_size(H, kh, sh, pt, pb), out_size(W, kw, sw, pl, pr)
        return (kh, kw), (sh, sw), pads, (Ho, Wo)

    def _padded(self, x, pads, fill):
        (pt, pb), (pl, pr) = pads
        if not (pt or pb or pl or pr):
            return x
        N, C, H, W = x.shape
        xpad = self.xp.full((N, C, H + pt + pb, W + pl + pr), fill, dtype=x.dtype)
        xpad[:, :, pt:pt + H, pl:pl + W] = x
        return xpad

    def _unpad(self, dxpad, pads, x_shape):
        (pt, pb), (pl, pr) = pads
        if not (pt or pb or pl or pr):
            return dxpad
        H, W = x_shape[2], x_shape[3]
        return self.xp.ascontiguousarray(dxpad[:, :, pt:pt + H, pl:pl + W])

    def maxpool2d_forward(self, x, pool_size, stride=None, padding=0):
        """Max over each window (stride defaults to the pool size; -inf padding). Returns
        (y, saved); the backward finds each window's first maximum again from `saved`, so the
        forward is kh*kw elementwise maxima and nothing more (inference pays no argmax)."""
        xp = self.xp
        (kh, kw), (sh, sw), pads, (Ho, Wo) = self._pool_geometry(x, pool_size, stride, padding)
        xpad = self._padded(x, pads, -math.inf)
        views = [xpad[:, :, _window(i, sh, Ho), _window(j, sw, Wo)]
                 for i in range(kh) for j in range(kw)]
        if len(views) == 1:
            y = views[0].copy()
        else:
            y = xp.maximum(views[0], views[1])
            for v in views[2:]:
                xp.maximum(y, v, out=y)
        return y, (xpad, y, tuple(x.shape), (kh, kw), (sh, sw), pads)

    def maxpool2d_backward(self, dy, saved):
        """Each window's gradient goes to its first maximum (row-major order), as PyTorch."""
        xp = self.xp
        xpad, y, x_shape, (kh, kw), (sh, sw), pads = saved
        Ho, Wo = dy.shape[2], dy.shape[3]
        Hp, Wp = xpad.shape[2], xpad.shape[3]
        disjoint = sh >= kh and sw >= kw  # windows do not overlap: write instead of add
        tiled = sh == kh and sw == kw and Ho * kh == Hp and Wo * kw == Wp  # and cover xpad
        dxpad = (xp.empty if tiled else xp.zeros)(xpad.shape, dtype=dy.dtype)
        taken = None
        last = kh * kw - 1
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            win = (slice(None), slice(None), _window(i, sh, Ho), _window(j, sw, Wo))
            hit = xpad[win] == y
            if taken is None:
                taken = hit
            else:
                xp.greater(hit, taken, out=hit)  # hit and not taken: an earlier max wins ties
                if k < last:
                    xp.logical_or(taken, hit, out=taken)
            if disjoint:
                xp.multiply(dy, hit, out=dxpad[win])
            else:
                dxpad[win] += dy * hit
        return self._unpad(dxpad, pads, x_shape)

    def avgpool2d_forward(self, x, pool_size, stride=None, padding=0, count_include_pad=True):
        """Mean over each window (zero padding; the divisor counts padded cells when
        `count_include_pad`, as PyTorch's default). Returns (y, saved)."""
        xp = self.xp
        (kh, kw), (sh, sw), pads, (Ho, Wo) = self._pool_geometry(x, pool_size, stride, padding)
        xpad = self._padded(x, pads, 0)
        y = xp.zeros((x.shape[0], x.shape[1], Ho, Wo), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                y += xpad[:, :, _window(i, sh, Ho), _window(j, sw, Wo)]
        (pt, pb), (pl, pr) = pads
        if count_include_pad or not (pt or pb or pl or pr):
            scale = 1.0 / (kh * kw)
            y *= scale
        else:  # per-output count of real (unpadded) cells
            ones = self._padded(xp.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype), pads, 0)
            count = xp.zeros((1, 1, Ho, Wo), dtype=x.dtype)
            for i in range(kh):
                for j in range(kw):
                    count += ones[:, :, _window(i, sh, Ho), _window(j, sw, Wo)]
            scale = 1.0 / count
            y *= scale
        return y, (tuple(x.shape), (kh, kw), (sh, sw), pads, scale)

    def avgpool2d_backward(self, dy, saved):
        xp = self.xp
        x_shape, (kh, kw), (sh, sw), pads, scale = saved
        (pt, pb), (pl, pr) = pads
        N, C, H, W = x_shape
        Ho, Wo = dy.shape[2], dy.shape[3]
        g = dy * scale
        dxpad = xp.zeros((N, C, H + pt + pb, W + pl + pr), dtype=dy.dtype)
        for i in range(kh):
            for j in range(kw):
                dxpad[:, :, _window(i, sh, Ho), _window(j, sw, Wo)] += g
        return self._unpad(dxpad, pads, x_shape)

    def global_avgpool2d_forward(self, x):
        """(N, C, H, W) -> (N, C): the mean over the spatial axes."""
        return x.mean(axis=(2, 3)), tuple(x.shape)

    def global_avgpool2d_backward(self, dy, saved):
        N, C, H, W = saved
        dx = self.xp.empty((N, C, H, W), dtype=dy.dtype)
        dx[...] = (dy * (1.0 / (H * W))).reshape(N, C, 1, 1)
        return dx

    # -- normalization --------------------------------------------------------------------
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum=0.1,
                          eps=1e-5, training=True, axes=(0,)):
        """Batch norm over `axes` (the feature axis is the one not in `axes`, e.g. 1). In
        training: batch statistics (biased variance) normalize, and the running statistics are
        updated in place, PyTorch's way: r = (1 - momentum) r + momentum * stat, with the
        unbiased variance. In eval: the running statistics normalize."""
        xp = self.xp
        axes = tuple(axes)
        bshape = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
        n = math.prod(x.shape[a] for a in axes)
        if training:
            mean = x.mean(axis=axes, keepdims=True)
            xhat = x - mean  # centred now, normalized in place below
            var = xp.square(xhat).mean(axis=axes, keepdims=True)
            if running_mean is not None:
                running_mean *= 1.0 - momentum
                running_mean += momentum * mean.reshape(running_mean.shape)
            if running_var is not None:
                unbiased = n / (n - 1) if n > 1 else 1.0
                running_var *= 1.0 - momentum
                running_var += (momentum * unbiased) * var.reshape(running_var.shape)
        else:
            xhat = x - running_mean.reshape(bshape)
            var = running_var.reshape(bshape)
        invstd = 1.0 / xp.sqrt(var + eps)
        xhat *= invstd
        y = xhat * gamma.reshape(bshape) if gamma is not None else xhat.copy()
        if beta is not None:
            y += beta.reshape(bshape)
        return y, (xhat, invstd, gamma, axes, bool(training), n)

    def batchnorm_backward(self, dy, saved, need_dx=True, dgamma_out=None, dbeta_out=None):
        """(dx, dgamma, dbeta). Training: dx = gamma*invstd * (dy - mean(dy) - xhat *
        mean(dy*xhat)), the means over `axes`; eval: dx = gamma*invstd * dy."""
        xhat, invstd, gamma, axes, training, n = saved
        fshape = invstd.reshape(-1).shape
        bshape = invstd.shape
        dbeta = dy.sum(axis=axes).reshape(fshape)
        dgamma = (dy * xhat).sum(axis=axes).reshape(fshape)
        if dbeta_out is not None:
            dbeta_out[...] = dbeta
            dbeta = dbeta_out
        if dgamma_out is not None:
            dgamma_out[...] = dgamma
            dgamma = dgamma_out
        dx = None
        if need_dx:
            scale = invstd if gamma is None else invstd * gamma.reshape(bshape)
            if training:  # in place on one buffer: fewer passes over a large array
                dx = xhat * (dgamma.reshape(bshape) * (-1.0 / n))
                dx += dy
                dx -= dbeta.reshape(bshape) * (1.0 / n)
                dx *= scale
            else:
                dx = dy * scale
        return dx, dgamma, dbeta

    def layernorm_forward(self, x, gamma, beta, eps=1e-5):
        """Normalizes over the trailing gamma.ndim axes (biased variance), then y = xhat *
        gamma + beta. Returns (y, saved)."""
        xp = self.xp
        F = gamma.size
        x2 = x.reshape(-1, F)
        mean = x2.mean(axis=1, keepdims=True)
        xc = x2 - mean
        var = (xc * xc).mean(axis=1, keepdims=True)
        invstd = 1.0 / xp.sqrt(var + eps)
        xhat = xc * invstd
        y = xhat * gamma.reshape(1, F)
        if beta is not None:
            y += beta.reshape(1, F)
        return y.reshape(x.shape), (xhat, invstd, gamma, tuple(x.shape))

    def layernorm_backward(self, dy, saved, need_dx=True, dgamma_out=None, dbeta_out=None):
        xhat, invstd, gamma, x_shape = saved
        F = gamma.size
        dy2 = dy.reshape(-1, F)
        dbeta = dy2.sum(axis=0).reshape(gamma.shape)
        dgamma = (dy2 * xhat).sum(axis=0).reshape(gamma.shape)
        if dbeta_out is not None:
            dbeta_out[...] = dbeta
            dbeta = dbeta_out
        if dgamma_out is not None:
            dgamma_out[...] = dgamma
            dgamma = dgamma_out
        dx = None
        if need_dx:
            g = dy2 * gamma.reshape(1, F)
            dx = g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True)
            dx *= invstd
            dx = dx.reshape(x_shape)
        return dx, dgamma, dbeta
