// nnx dense-layer epilogues: bias + activation forward, activation backward, row softmax,
// dropout and bf16 rounding. See nnx_common.cuh for the storage variants (kernel suffixes).
// Shapes: every array is C-contiguous; `n` is the element count, `cols` the row length.

#include "nnx_common.cuh"

// y = act(z + bias); with write_pre, pre = z + bias (the saved pre-activation for gelu).
// z, y and pre may alias (each element is read before it is written, by the same thread).
// `cols` (the bias length) is read only with has_bias; it is 64-bit so a row of 2^31 or more
// elements cannot wrap.
template <class T>
__device__ __forceinline__ void nnx_bias_act_impl(
    const typename T::S* z, const typename T::A* bias, typename T::S* y, typename T::S* pre,
    long long n, long long cols, int act, int has_bias, int write_pre) {
    typedef typename T::A A;
    typedef typename T::S S;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        A v = T::load(z[i]);
        if (has_bias) v += bias[nnx_col(i, n, cols)];
        S s = T::store(v);  // z + b is rounded to the storage type, as in the reference
        if (write_pre) pre[i] = s;
        y[i] = T::store(nnx_act_forward<A>(T::load(s), act));
    }
}

extern "C" __global__ void nnx_bias_act_f32(const float* z, const float* bias, float* y,
                                            float* pre, long long n, long long cols, int act,
                                            int has_bias, int write_pre) {
    nnx_bias_act_impl<nnx_f32>(z, bias, y, pre, n, cols, act, has_bias, write_pre);
}
extern "C" __global__ void nnx_bias_act_f64(const double* z, const double* bias, double* y,
                                            double* pre, long long n, long long cols, int act,
                                            int has_bias, int write_pre) {
    nnx_bias_act_impl<nnx_f64>(z, bias, y, pre, n, cols, act, has_bias, write_pre);
}
extern "C" __global__ void nnx_bias_act_f16(const nnx_half_t* z, const float* bias, nnx_half_t* y,
                                            nnx_half_t* pre, long long n, long long cols, int act,
                                            int has_bias, int write_pre) {
    nnx_bias_act_impl<nnx_f16>(z, bias, y, pre, n, cols, act, has_bias, write_pre);
}
extern "C" __global__ void nnx_bias_act_bf16(const float* z, const float* bias, float* y,
                                             float* pre, long long n, long long cols, int act,
                                             int has_bias, int write_pre) {
    nnx_bias_act_impl<nnx_bf16>(z, bias, y, pre, n, cols, act, has_bias, write_pre);
}

// dz = act'(saved) * dy  (dz may alias dy)
template <class T>
__device__ __forceinline__ void nnx_act_bwd_impl(const typename T::S* dy,
                                                 const typename T::S* saved,
                                                 typename T::S* dz, long long n, int act) {
    typedef typename T::A A;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        dz[i] = T::store(nnx_act_backward<A>(T::load(dy[i]), T::load(saved[i]), act));
    }
}

extern "C" __global__ void nnx_act_bwd_f32(const float* dy, const float* saved, float* dz,
                                           long long n, int act) {
    nnx_act_bwd_impl<nnx_f32>(dy, saved, dz, n, act);
}
extern "C" __global__ void nnx_act_bwd_f64(const double* dy, const double* saved, double* dz,
                                           long long n, int act) {
    nnx_act_bwd_impl<nnx_f64>(dy, saved, dz, n, act);
}
extern "C" __global__ void nnx_act_bwd_f16(const nnx_half_t* dy, const nnx_half_t* saved,
                                           nnx_half_t* dz, long long n, int act) {
    nnx_act_bwd_impl<nnx_f16>(dy, saved, dz, n, act);
}
extern "C" __global__ void nnx_act_bwd_bf16(const float* dy, const float* saved, float* dz,
                                            long long n, int act) {
    nnx_act_bwd_impl<nnx_bf16>(dy, saved, dz, n, act);
}

// The dense layer's backward epilogue in one pass: dz = act'(saved) * dy stored in the storage
// type (act = identity: dz = dy, rounded to bf16 in that variant), and the column sums of the
// STORED dz (the bias gradient), accumulated in the math type A. With write_dz = 0, dz is not
// written (identity on f32/f64, where it would equal dy) and may be a dummy; `saved` is read
// only when act is not identity.
//
// Work items: (column tile of 32, chunk of `chunk_rows` rows); blockDim.x = 32 * lanes (a
// multiple of 32, <= NNX_MAX_ROW_THREADS). Thread (cx, ry) = (t % 32, t / 32) takes column
// tile*32 + cx and rows r0 + ry, r0 + ry + lanes, ... (consecutive threads read consecutive
// columns of a row: coalesced). The lanes are summed in a fixed order and each chunk's sum
// goes to partial[chunk * cols + c]; nnx_colsum_* adds the chunks up, again in a fixed order,
// so the result is deterministic (no atomics). With one chunk, partial is the bias gradient.
template <class T>
__device__ __forceinline__ void nnx_act_bwd_colsum_impl(
    const typename T::S* dy, const typename T::S* saved, typename T::S* dz,
    typename T::A* partial, long long rows, long long cols, int act, int write_dz,
    long long chunk_rows) {
    typedef typename T::A A;
    typedef typename T::S S;
    __shared__ A buf[NNX_MAX_ROW_THREADS];
    const long long lanes = blockDim.x / 32;
    const long long cx = threadIdx.x % 32, ry = threadIdx.x / 32;
    const long long tiles = (cols + 31) / 32;
    const long long chunks = (rows + chunk_rows - 1) / chunk_rows;
    for (long long w = blockIdx.x; w < tiles * chunks; w += gridDim.x) {
        const long long tile = w % tiles, chunk = w / tiles;
        const long long c = tile * 32 + cx;
        const long long r0 = chunk * chunk_rows;
        const long long r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
        A acc = (A)0;
        if (c < cols) {
            for (long long r = r0 + ry; r < r1; r += lanes) {
                const long long i = r * cols + c;
                A g = T::load(dy[i]);
                if (act != NNX_ACT_IDENTITY) g = nnx_act_backward<A>(g, T::load(saved[i]), act);
                const S st = T::store(g);
                if (write_dz) dz[i] = st;
                acc += T::load(st);
            }
        }
        buf[threadIdx.x] = acc;
        __syncthreads();
        if (ry == 0 && c < cols) {
            A t = (A)0;
            for (long long l = 0; l < lanes; ++l) t += buf[l * 32 + cx];
            partial[chunk * cols + c] = t;
        }
        __syncthreads();  // buf is reused by the next work item
    }
}

extern "C" __global__ void nnx_act_bwd_colsum_f32(const float* dy, const float* saved, float* dz,
                                                  float* partial, long long rows, long long cols,
                                                  int act, int write_dz, long long chunk_rows) {
    nnx_act_bwd_colsum_impl<nnx_f32>(dy, saved, dz, partial, rows, cols, act, write_dz,
                                     chunk_rows);
}
extern "C" __global__ void nnx_act_bwd_colsum_f64(const double* dy, const double* saved,
                                                  double* dz, double* partial, long long rows,
                                                  long long cols, int act, int write_dz,
                                                  long long chunk_rows) {
    nnx_act_bwd_colsum_impl<nnx_f64>(dy, saved, dz, partial, rows, cols, act, write_dz,
                                     chunk_rows);
}
extern "C" __global__ void nnx_act_bwd_colsum_f16(const nnx_half_t* dy, const nnx_half_t* saved,
                                                  nnx_half_t* dz, float* partial, long long rows,
                                                  long long cols, int act, int write_dz,
                                                  long long chunk_rows) {
    nnx_act_bwd_colsum_impl<nnx_f16>(dy, saved, dz, partial, rows, cols, act, write_dz,
                                     chunk_rows);
}
extern "C" __global__ void nnx_act_bwd_colsum_bf16(const float* dy, const float* saved,
                                                   float* dz, float* partial, long long rows,
                                                   long long cols, int act, int write_dz,
                                                   long long chunk_rows) {
    nnx_act_bwd_colsum_impl<nnx_bf16>(dy, saved, dz, partial, rows, cols, act, write_dz,
                                      chunk_rows);
}

// out[c] = sum over chunks of partial[chunk * cols + c], chunks in order (deterministic).
template <typename A>
__device__ __forceinline__ void nnx_colsum_impl(const A* partial, A* out, long long chunks,
                                                long long cols) {
    const long long stride = nnx_grid_stride();
    for (long long c = nnx_global_tid(); c < cols; c += stride) {
        A t = (A)0;
        for (long long k = 0; k < chunks; ++k) t += partial[k * cols + c];
        out[c] = t;
    }
}

extern "C" __global__ void nnx_colsum_f32(const float* partial, float* out, long long chunks,
                                          long long cols) {
    nnx_colsum_impl<float>(partial, out, chunks, cols);
}
extern "C" __global__ void nnx_colsum_f64(const double* partial, double* out, long long chunks,
                                          long long cols) {
    nnx_colsum_impl<double>(partial, out, chunks, cols);
}

// y = softmax(z + bias) over each row; one block per row (grid-strided over rows).
// y may alias z.
template <class T>
__device__ __forceinline__ void nnx_softmax_fwd_impl(const typename T::S* z,
                                                     const typename T::A* bias,
                                                     typename T::S* y, int rows, int cols,
                                                     int has_bias) {
    typedef typename T::A A;
    __shared__ A buf[NNX_MAX_ROW_THREADS];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const typename T::S* zr = z + row * (long long)cols;
        typename T::S* yr = y + row * (long long)cols;
        A m = (A)nnx_neg_inf();
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A v = T::load(zr[c]);
            if (has_bias) v = T::load(T::store(v + bias[c]));
            m = nnx_max_nan(m, v);
        }
        m = nnx_block_max<A>(m, buf);
        A s = (A)0;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A v = T::load(zr[c]);
            if (has_bias) v = T::load(T::store(v + bias[c]));
            s += nnx_exp(v - m);
        }
        s = nnx_block_sum<A>(s, buf);
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A v = T::load(zr[c]);
            if (has_bias) v = T::load(T::store(v + bias[c]));
            yr[c] = T::store(nnx_exp(v - m) / s);
        }
    }
}

extern "C" __global__ void nnx_softmax_fwd_f32(const float* z, const float* bias, float* y,
                                               int rows, int cols, int has_bias) {
    nnx_softmax_fwd_impl<nnx_f32>(z, bias, y, rows, cols, has_bias);
}
extern "C" __global__ void nnx_softmax_fwd_f64(const double* z, const double* bias, double* y,
                                               int rows, int cols, int has_bias) {
    nnx_softmax_fwd_impl<nnx_f64>(z, bias, y, rows, cols, has_bias);
}
extern "C" __global__ void nnx_softmax_fwd_f16(const nnx_half_t* z, const float* bias,
                                               nnx_half_t* y, int rows, int cols, int has_bias) {
    nnx_softmax_fwd_impl<nnx_f16>(z, bias, y, rows, cols, has_bias);
}
extern "C" __global__ void nnx_softmax_fwd_bf16(const float* z, const float* bias, float* y,
                                                int rows, int cols, int has_bias) {
    nnx_softmax_fwd_impl<nnx_bf16>(z, bias, y, rows, cols, has_bias);
}

// dz = y * (dy - sum(dy * y)) over each row; dz may alias dy.
template <class T>
__device__ __forceinline__ void nnx_softmax_bwd_impl(const typename T::S* dy,
                                                     const typename T::S* y,
                                                     typename T::S* dz, int rows, int cols) {
    typedef typename T::A A;
    __shared__ A buf[NNX_MAX_ROW_THREADS];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long off = row * (long long)cols;
        A d = (A)0;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            d += T::load(dy[off + c]) * T::load(y[off + c]);
        }
        d = nnx_block_sum<A>(d, buf);
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A yv = T::load(y[off + c]);
            dz[off + c] = T::store(yv * (T::load(dy[off + c]) - d));
        }
    }
}

extern "C" __global__ void nnx_softmax_bwd_f32(const float* dy, const float* y, float* dz,
                                               int rows, int cols) {
    nnx_softmax_bwd_impl<nnx_f32>(dy, y, dz, rows, cols);
}
extern "C" __global__ void nnx_softmax_bwd_f64(const double* dy, const double* y, double* dz,
                                               int rows, int cols) {
    nnx_softmax_bwd_impl<nnx_f64>(dy, y, dz, rows, cols);
}
extern "C" __global__ void nnx_softmax_bwd_f16(const nnx_half_t* dy, const nnx_half_t* y,
                                               nnx_half_t* dz, int rows, int cols) {
    nnx_softmax_bwd_impl<nnx_f16>(dy, y, dz, rows, cols);
}
extern "C" __global__ void nnx_softmax_bwd_bf16(const float* dy, const float* y, float* dz,
                                                int rows, int cols) {
    nnx_softmax_bwd_impl<nnx_bf16>(dy, y, dz, rows, cols);
}

// Inverted dropout from uniform numbers u in [0, 1): mask = (u >= rate) * scale in the storage
// type, y = x * mask (the reference's semantics; scale = 1 / (1 - rate) computed on the host).
template <class T>
__device__ __forceinline__ void nnx_dropout_impl(const typename T::S* x, const float* u,
                                                 typename T::S* y, typename T::S* mask,
                                                 long long n, float rate, double scale) {
    typedef typename T::A A;
    const A keep = T::load(T::store((A)scale));
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        A mk = u[i] >= rate ? keep : (A)0;
        mask[i] = T::store(mk);
        y[i] = T::store(T::load(x[i]) * mk);
    }
}

extern "C" __global__ void nnx_dropout_f32(const float* x, const float* u, float* y, float* mask,
                                           long long n, float rate, double scale) {
    nnx_dropout_impl<nnx_f32>(x, u, y, mask, n, rate, scale);
}
extern "C" __global__ void nnx_dropout_f64(const double* x, const float* u, double* y,
                                           double* mask, long long n, float rate, double scale) {
    nnx_dropout_impl<nnx_f64>(x, u, y, mask, n, rate, scale);
}
extern "C" __global__ void nnx_dropout_f16(const nnx_half_t* x, const float* u, nnx_half_t* y,
                                           nnx_half_t* mask, long long n, float rate,
                                           double scale) {
    nnx_dropout_impl<nnx_f16>(x, u, y, mask, n, rate, scale);
}
extern "C" __global__ void nnx_dropout_bf16(const float* x, const float* u, float* y,
                                            float* mask, long long n, float rate, double scale) {
    nnx_dropout_impl<nnx_bf16>(x, u, y, mask, n, rate, scale);
}

// y = x rounded to the nearest bfloat16 (kept in float32); y may alias x.
extern "C" __global__ void nnx_round_bf16_f32(const float* x, float* y, long long n) {
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) y[i] = nnx_to_bf16(x[i]);
}
