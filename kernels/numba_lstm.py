"""Numba LSTM backward step: one timestep's elementwise BPTT work (dc update, the four gate
derivatives, dc <- f dc) fused into one pass; `NumbaLayerKernels.lstm_backward` loops over the
timesteps and keeps the GEMMs in BLAS."""

from __future__ import annotations

from numba import njit

from .numba_common import SER as _SER


# ============================================================================================
# LSTM backward: one fused pass per timestep (GEMMs stay in BLAS)
# ============================================================================================
@njit(**_SER)
def _lstm_step_bwd(a, tct, c_prev, has_c, dh, dyt, has_dy, dc, dz):
    """One BPTT step: dh (+ dy_t), dc updated in place (dc <- f * dc), dz (N, 4H) written."""
    hid = dc.shape[1]
    for n in range(a.shape[0]):
        ar = a[n]
        ai = ar[:hid]
        af = ar[hid:2 * hid]
        ag = ar[2 * hid:3 * hid]
        ao = ar[3 * hid:]
        zr = dz[n]
        zi = zr[:hid]
        zf = zr[hid:2 * hid]
        zg = zr[2 * hid:3 * hid]
        zo = zr[3 * hid:]
        tr = tct[n]
        dhr = dh[n]
        dyr = dyt[n]
        dcr = dc[n]
        cp = c_prev[n]
        for k in range(len(dcr)):
            h = dhr[k]
            if has_dy:
                h += dyr[k]
            i = ai[k]
            f = af[k]
            g = ag[k]
            o = ao[k]
            tc = tr[k]
            d = dcr[k] + h * (o * (1 - tc * tc))
            zi[k] = d * g * (i * (1 - i))
            zf[k] = (d * cp[k] * (f * (1 - f))) if has_c else d * 0
            zg[k] = d * i * (1 - g * g)
            zo[k] = h * tc * (o * (1 - o))
            dcr[k] = d * f
