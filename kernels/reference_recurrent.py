"""Reference kernels: recurrent cells (RNN, LSTM, GRU), embedding, attention and sequence
pooling; written against `self.xp`, so they run on NumPy and CuPy arrays alike.

Layout and conventions
- Sequences are batch-first: x (N, T, F), hidden sequences (N, T, H).
- Weights follow the Dense convention (in, out), so a step is `x @ W`. PyTorch stores the
  transposes: `weight_ih_l0 = W_ih.T` (gates*H, F), `weight_hh_l0 = W_hh.T` (gates*H, H).
- Gate order is PyTorch's: LSTM (i, f, g, o), GRU (r, z, n).
- Every whole-sequence forward returns `(outputs, saved)`; its backward (BPTT) takes `saved`
  back and returns the input gradient, the weight gradients (written into `*_out` views of the
  flat gradient buffer when given) and the initial-state gradients.

Cost model: all input projections of a sequence are one GEMM (`x @ W_ih` for every timestep at
once, through `dense_forward`, so a backend's fused bias epilogue applies), and so are, in the
backward, `dW_ih`, `dW_hh`, the bias sums and `dx` (over all timesteps). What remains per
timestep is one (N, H) @ (H, gates*H) GEMM and a handful of elementwise ops on whole batches,
mostly in place (`out=`). Internally the sequences are stored time-major (T, N, .), so each
step's slice is one contiguous block; the batch-first results are views of that storage, and
the backward reads the time-major copy of x kept in `saved` (its `x` argument is there for the
contract's symmetry with `dense_backward`).

Nonlinearities: every gate of a step takes a single `xp.tanh` over the whole (N, gates*H) block,
using sigmoid(z) = 0.5 * tanh(z / 2) + 0.5 (exact, stable at both tails); activation
derivatives for all timesteps are computed in a few whole-tensor passes before the BPTT loop.
(Measured on the 2-core box, (128, 512) float32: np.tanh ~0.3 ms; the reference `sigmoid`
~2 ms; the Numba backend's `tanh` override ~2.5 ms; hence xp.tanh here, not self.sigmoid.)
"""

from __future__ import annotations

import math


class RecurrentKernels:
    """Mixin of `Ops` (recurrent cells (RNN, LSTM, GRU), embedding, attention, pooling)."""

    # -- embedding ------------------------------------------------------------------------
    def embedding_forward(self, ids, table):
        """table[ids]: ids of any shape (integers, already range-checked) -> (*ids.shape, D)."""
        return self.xp.take(table, ids, axis=0)

    def embedding_backward(self, dy, ids, table_shape, dtable_out=None):
        """d table: the rows of `dy` scatter-added into the rows named by `ids` (repeated ids
        accumulate). Written into `dtable_out` when given (its old content is overwritten).

        `xp.add.at` is an unbuffered scatter-add on NumPy and on CuPy >= 12 (atomics); older
        CuPy has only `cupyx.scatter_add` (the same operation), used as a fallback (imported
        lazily, so only on a GPU backend)."""
        xp = self.xp
        if dtable_out is None:
            dtable = xp.zeros(table_shape, dtype=dy.dtype)
        else:
            dtable = dtable_out
            dtable[...] = 0
        rows = ids.reshape(-1)
        vals = dy.reshape(rows.shape[0], table_shape[-1])
        try:
            xp.add.at(dtable, rows, vals)
        except (AttributeError, NotImplementedError):  # pragma: no cover - CuPy < 12
            import cupyx

            cupyx.scatter_add(dtable, rows, vals)
        return dtable

    # -- helpers --------------------------------------------------------------------------
    def _time_major(self, x):
        """(N, T, F) -> contiguous (T, N, F): per-timestep slices become contiguous blocks."""
        return self.xp.ascontiguousarray(self.xp.swapaxes(x, 0, 1))

    def _input_proj(self, x, W_ih, b):
        """x_t @ W_ih + b for every timestep in one GEMM: ((T, N, G) xw, (T, N, F) x_tm)."""
        x_tm = self._time_major(x)
        xw, _ = self.dense_forward(x_tm, W_ih, b)
        return xw, x_tm

    def _dW_hh(self, h0, hs, dz, out):
        """sum_t h_{t-1}^T dz_t = hs[:-1]^T dz[1:] + h0^T dz[0] (time-major; h0 None: zeros)."""
        xp = self.xp
        hid, g = hs.shape[-1], dz.shape[-1]
        dW = xp.matmul(hs[:-1].reshape(-1, hid).T, dz[1:].reshape(-1, g), out=out)
        if h0 is not None:
            dW += h0.T @ dz[0]
        return dW

    def _dy_tm(self, dhs, t):
        return None if dhs is None else dhs[:, t]

    def _sigmoid_inplace(self, a):
        """a <- sigmoid(a) as 0.5 * tanh(a / 2) + 0.5: stable on both tails, one
        transcendental, no temporaries beyond the tanh."""
        xp = self.xp
        a *= 0.5
        xp.tanh(a, out=a)
        a *= 0.5
        a += 0.5
        return a

    # -- simple RNN (tanh) ----------------------------------------------------------------
    def rnn_forward(self, x, W_ih, W_hh, b, h0=None):
        """Elman RNN over a whole sequence: h_t = tanh(x_t W_ih + h_{t-1} W_hh + b).

        x (N, T, F), W_ih (F, H), W_hh (H, H), b (H,) or None, h0 (N, H) or None (zeros).
        Returns (hs (N, T, H), saved); hs is a batch-first view of time-major storage."""
        xp = self.xp
        xw, x_tm = self._input_proj(x, W_ih, b)  # one GEMM for every timestep
        hs = xw  # tanh in place, step by step: xw[t] is read once, then holds h_t
        h = h0
        for t in range(xw.shape[0]):
            z = hs[t]
            if h is not None:
                z += h @ W_hh
            xp.tanh(z, out=z)
            h = z
        return xp.swapaxes(hs, 0, 1), (x_tm, h0, hs)

    def rnn_backward(self, dhs, x, W_ih, W_hh, saved, dh_last=None, need_dx=True,
                     need_dh0=True, dW_ih_out=None, dW_hh_out=None, db_out=None):
        """BPTT of `rnn_forward`. `dhs`: gradient w.r.t. every output (N, T, H) or None;
        `dh_last`: gradient w.r.t. the last hidden state (N, H) or None (at least one given).
        Returns (dx (N, T, F) or None, dW_ih, dW_hh, db, dh0 or None)."""
        xp = self.xp
        x_tm, h0, hs = saved
        t_len = hs.shape[0]
        dz_all = 1 - hs * hs  # tanh' for every step in one pass; becomes dz in place
        dh = dh_last
        for t in range(t_len - 1, -1, -1):
            dz = dz_all[t]
            dyt = self._dy_tm(dhs, t)
            if dh is None:
                dz *= dyt
            else:
                dz *= dh if dyt is None else dh + dyt
            dh = dz @ W_hh.T if (t > 0 or need_dh0) else None
        dW_hh = self._dW_hh(h0, hs, dz_all, dW_hh_out)
        dx, dW_ih, db = self.dense_backward(dz_all, x_tm, W_ih, None, "identity", need_dx,
                                            dW_ih_out, db_out)
        return (xp.swapaxes(dx, 0, 1) if need_dx else None), dW_ih, dW_hh, db, dh

    # -- LSTM -----------------------------------------------------------------------------
    def lstm_forward(self, x, W_ih, W_hh, b, h0=None, c0=None):
        """LSTM over a whole sequence, PyTorch's equations and gate order (i, f, g, o):

            z = x_t W_ih + h_{t-1} W_hh + b          (N, 4H)
            i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
            c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

        W_ih (F, 4H), W_hh (H, 4H), b (4H,) = PyTorch's bias_ih + bias_hh; h0, c0 (N, H) or
        None (zeros). Returns (hs (N, T, H), saved); hs is a batch-first view of time-major
        storage; `lstm_final_cell(saved)` is c_T.

        All four gates take one tanh: sigmoid(z) = 0.5 tanh(z / 2) + 0.5, so with the per-block
        scale s = (1/2, 1/2, 1, 1/2) and offset o = (1/2, 1/2, 0, 1/2), a = s tanh(s z) + o."""
        xp = self.xp
        hid = W_hh.shape[0]
        gates, x_tm = self._input_proj(x, W_ih, b)  # (T, N, 4H); activated in place
        t_len, n = gates.shape[:2]
        dt = gates.dtype
        scale = xp.full((4 * hid,), 0.5, dtype=dt)
        scale[2 * hid:3 * hid] = 1.0
        offset = xp.full((4 * hid,), 0.5, dtype=dt)
        offset[2 * hid:3 * hid] = 0.0
        cs = xp.empty((t_len, n, hid), dtype=dt)
        tcs = xp.empty_like(cs)
        hs = xp.empty_like(cs)
        g0, g1 = 2 * hid, 3 * hid
        h, c = h0, c0
        for t in range(t_len):
            a = gates[t]
            if h is not None:
                a += h @ W_hh
            a *= scale
            xp.tanh(a, out=a)
            a *= scale
            a += offset
            i, f, g, o = a[:, :hid], a[:, hid:g0], a[:, g0:g1], a[:, g1:]
            ct = cs[t]
            xp.multiply(i, g, out=ct)
            if c is not None:
                ct += f * c
            xp.tanh(ct, out=tcs[t])
            xp.multiply(o, tcs[t], out=hs[t])
            h, c = hs[t], ct
        return xp.swapaxes(hs, 0, 1), (x_tm, h0, c0, gates, cs, tcs, hs)

    @staticmethod
    def lstm_final_cell(saved):
        """c_T, (N, H), from `lstm_forward`'s saved state."""
        return saved[4][-1]

    def lstm_backward(self, dhs, x, W_ih, W_hh, saved, dh_last=None, dc_last=None,
                      need_dx=True, need_dh0=True, dW_ih_out=None, dW_hh_out=None, db_out=None):
        """BPTT of `lstm_forward`. `dhs` (N, T, H) or None; `dh_last`, `dc_last` (N, H) or None:
        gradients w.r.t. the final hidden and cell states.
        Returns (dx (N, T, F) or None, dW_ih, dW_hh, db, dh0 or None, dc0 or None)."""
        xp = self.xp
        x_tm, h0, c0, gates, cs, tcs, hs = saved
        t_len, n, hid = hs.shape
        g0, g1 = 2 * hid, 3 * hid
        # Activation derivatives of every step in a few whole-tensor passes: a(1-a) for the
        # sigmoid gates, 1-g^2 for g; and o * (1 - tanh(c)^2), the h -> c path.
        deriv = gates * (1 - gates)
        gg = gates[..., g0:g1]
        deriv[..., g0:g1] = 1 - gg * gg
        dcdh = gates[..., g1:] * (1 - tcs * tcs)
        dz_all = xp.empty_like(gates)
        dh = xp.zeros((n, hid), dtype=hs.dtype) if dh_last is None else dh_last
        dc = xp.zeros((n, hid), dtype=hs.dtype) if dc_last is None else dc_last.copy()
        for t in range(t_len - 1, -1, -1):
            dyt = self._dy_tm(dhs, t)
            if dyt is not None:
                dh = dh + dyt
            a, dz = gates[t], dz_all[t]
            i, f, g = a[:, :hid], a[:, hid:g0], a[:, g0:g1]
            dc += dh * dcdh[t]
            xp.multiply(dc, g, out=dz[:, :hid])
            c_prev = cs[t - 1] if t > 0 else c0
            if c_prev is None:
                dz[:, hid:g0] = 0
            else:
                xp.multiply(dc, c_prev, out=dz[:, hid:g0])
            xp.multiply(dc, i, out=dz[:, g0:g1])
            xp.multiply(dh, tcs[t], out=dz[:, g1:])
            dz *= deriv[t]
            dc *= f
            dh = dz @ W_hh.T if (t > 0 or need_dh0) else None
        dW_hh = self._dW_hh(h0, hs, dz_all, dW_hh_out)
        dx, dW_ih, db = self.dense_backward(dz_all, x_tm, W_ih, None, "identity", need_dx,
                                            dW_ih_out, db_out)
        dx = xp.swapaxes(dx, 0, 1) if need_dx else None
        return dx, dW_ih, dW_hh, db, dh, (dc if need_dh0 else None)

    # -- GRU ------------------------------------------------------------------------------
    def gru_forward(self, x, W_ih, W_hh, b_ih, b_hh, h0=None):
        """GRU over a whole sequence, PyTorch's equations and gate order (r, z, n):

            a = x_t W_ih + b_ih;  u = h_{t-1} W_hh + b_hh            (N, 3H) each
            r = sigmoid(a_r + u_r);  z = sigmoid(a_z + u_z)
            n = tanh(a_n + r * u_n)
            h_t = (1 - z) * n + z * h_{t-1}

        Two biases, because b_hh's n-part sits inside r * (...). h0 (N, H) or None (zeros).
        Returns (hs (N, T, H), saved); hs is a batch-first view of time-major storage."""
        xp = self.xp
        hid = W_hh.shape[0]
        h2 = 2 * hid
        acts, x_tm = self._input_proj(x, W_ih, b_ih)  # (T, N, 3H): becomes [r | z | n]
        t_len, n_b = acts.shape[:2]
        dt = acts.dtype
        uns = xp.empty((t_len, n_b, hid), dtype=dt)
        hs = xp.empty_like(uns)
        zeros = None
        h = h0
        for t in range(t_len):
            a = acts[t]
            if h is None:
                if zeros is None:
                    zeros = xp.zeros((n_b, hid), dtype=dt)
                h = zeros
                u = xp.empty((n_b, 3 * hid), dtype=dt)
                u[...] = 0 if b_hh is None else b_hh
            else:
                u = h @ W_hh
                if b_hh is not None:
                    u += b_hh
            rz = a[:, :h2]
            rz += u[:, :h2]
            self._sigmoid_inplace(rz)
            r, z = a[:, :hid], a[:, hid:h2]
            un = uns[t]
            un[...] = u[:, h2:]
            nn_ = a[:, h2:]
            nn_ += r * un
            xp.tanh(nn_, out=nn_)
            ht = hs[t]
            xp.subtract(h, nn_, out=ht)
            ht *= z
            ht += nn_
            h = ht
        return xp.swapaxes(hs, 0, 1), (x_tm, h0, acts, uns, hs)

    def gru_backward(self, dhs, x, W_ih, W_hh, saved, dh_last=None, need_dx=True,
                     need_dh0=True, dW_ih_out=None, dW_hh_out=None, db_ih_out=None,
                     db_hh_out=None):
        """BPTT of `gru_forward`. Returns (dx (N, T, F) or None, dW_ih, dW_hh, db_ih, db_hh,
        dh0 or None)."""
        xp = self.xp
        x_tm, h0, acts, uns, hs = saved
        t_len, n_b, hid = hs.shape
        h2 = 2 * hid
        # Derivatives of every step in whole-tensor passes: r(1-r), z(1-z), 1-n^2.
        deriv = acts * (1 - acts)
        nn_all = acts[..., h2:]
        deriv[..., h2:] = 1 - nn_all * nn_all
        da_all = xp.empty_like(acts)  # d(x W_ih + b_ih)
        du_all = xp.empty_like(acts)  # d(h W_hh + b_hh)
        dh = xp.zeros((n_b, hid), dtype=hs.dtype) if dh_last is None else dh_last
        for t in range(t_len - 1, -1, -1):
            dyt = self._dy_tm(dhs, t)
            if dyt is not None:
                dh = dh + dyt
            a, d = acts[t], deriv[t]
            r, z, nn_ = a[:, :hid], a[:, hid:h2], a[:, h2:]
            da, du = da_all[t], du_all[t]
            dan = da[:, h2:]
            xp.subtract(dh, dh * z, out=dan)           # dh * (1 - z)
            dan *= d[:, h2:]                            # d(pre-tanh of n)
            xp.multiply(dan, uns[t], out=da[:, :hid])   # d r
            h_prev = hs[t - 1] if t > 0 else h0
            if h_prev is None:
                xp.negative(nn_, out=da[:, hid:h2])
            else:
                xp.subtract(h_prev, nn_, out=da[:, hid:h2])
            da[:, hid:h2] *= dh                         # d z
            da[:, :h2] *= d[:, :h2]                     # through the sigmoids
            du[:, :h2] = da[:, :h2]
            xp.multiply(dan, r, out=du[:, h2:])
            if t > 0 or need_dh0:
                dh_new = du @ W_hh.T
                dh_new += dh * z
                dh = dh_new
            else:
                dh = None
        dW_hh = self._dW_hh(h0, hs, du_all, dW_hh_out)
        db_hh = du_all.reshape(-1, 3 * hid).sum(axis=0, out=db_hh_out)
        dx, dW_ih, db_ih = self.dense_backward(da_all, x_tm, W_ih, None, "identity", need_dx,
                                               dW_ih_out, db_ih_out)
        dx = xp.swapaxes(dx, 0, 1) if need_dx else None
        return dx, dW_ih, dW_hh, db_ih, db_hh, dh

    # -- attention ------------------------------------------------------------------------
    def attention_forward(self, q, k, v, causal: bool = False):
        """Scaled dot-product attention: softmax(q k^T / sqrt(d) [+ causal mask]) v.

        q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv), any leading (batch, head) axes.
        The causal mask is top-left aligned (PyTorch's is_causal): query i sees keys j <= i,
        so every row keeps at least key 0. Returns (out (..., Tq, dv), saved)."""
        xp = self.xp
        scale = 1.0 / math.sqrt(q.shape[-1])
        s = xp.matmul(q, xp.swapaxes(k, -1, -2))
        s *= scale
        if causal:
            tq, tk = s.shape[-2], s.shape[-1]
            mask = xp.triu(xp.ones((tq, tk), dtype=bool), k=1)
            # A large finite negative (not -inf): exp underflows to exactly 0 either way, and
            # no fast-math exp ever sees an infinity.
            s = xp.where(mask, s.dtype.type(xp.finfo(s.dtype).min / 2), s)
        p = self.softmax(s)
        out = xp.matmul(p, v)
        return out, (q, k, v, p, scale)

    def attention_backward(self, dout, saved):
        """(dq, dk, dv) of `attention_forward`. Masked positions have p == 0 and so get no
        gradient through the softmax."""
        xp = self.xp
        q, k, v, p, scale = saved
        dv = xp.matmul(xp.swapaxes(p, -1, -2), dout)
        dp = xp.matmul(dout, xp.swapaxes(v, -1, -2))
        ds = self.backprop_softmax(dp, p)
        ds *= scale
        dq = xp.matmul(ds, k)
        dk = xp.matmul(xp.swapaxes(ds, -1, -2), q)
        return dq, dk, dv

    # -- sequence pooling -----------------------------------------------------------------
    def sequence_pool_forward(self, x, mode: str = "mean"):
        """(N, T, F) -> (N, F): mean over time, or the first / last timestep."""
        if mode == "mean":
            return x.mean(axis=1)
        if mode == "last":
            return x[:, -1].copy()
        if mode == "first":
            return x[:, 0].copy()
        raise ValueError(f"sequence_pool: unknown mode {mode!r}")

    def sequence_pool_backward(self, dy, x_shape, mode: str = "mean"):
        dx = self.xp.zeros(x_shape, dtype=dy.dtype)
        if mode == "mean":
            dx[...] = (dy / x_shape[1])[:, None]
        elif mode == "last":
            dx[:, -1] = dy
        elif mode == "first":
            dx[:, 0] = dy
        else:
            raise ValueError(f"sequence_pool: unknown mode {mode!r}")
        return dx
