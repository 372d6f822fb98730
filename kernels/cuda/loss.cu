// nnx softmax cross-entropy, forward and backward in one pass: one block per row (grid-strided
// over rows), shared-memory max and sum. Writes the gradient of the MEAN loss, multiplied by
// the current loss scale (*scale, a device scalar: 1 outside mixed precision), and each row's
// loss already divided by the row count; the caller sums row_loss on the device (no host sync).
//
// Integer labels outside [0, cols) cannot raise on the device: that row's loss and gradient
// become NaN, so the problem surfaces at the next loss check instead of silently training.

#include "nnx_common.cuh"

template <class T, typename L>
__device__ __forceinline__ void nnx_ce_labels_impl(const typename T::S* logits, const L* labels,
                                                   typename T::S* dlogits,
                                                   typename T::A* row_loss, int rows, int cols,
                                                   const float* scale, typename T::A inv_n) {
    typedef typename T::A A;
    __shared__ A buf[NNX_MAX_ROW_THREADS];
    const A gscale = inv_n * (A)scale[0];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long off = row * (long long)cols;
        A m = (A)nnx_neg_inf();
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) m = nnx_max_nan(m, T::load(logits[off + c]));
        m = nnx_block_max<A>(m, buf);
        A s = (A)0;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) s += nnx_exp(T::load(logits[off + c]) - m);
        s = nnx_block_sum<A>(s, buf);
        const A lse = m + nnx_log(s);
        const L lab = labels[row];
        const bool valid = lab >= (L)0 && lab < (L)cols;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A p = nnx_exp(T::load(logits[off + c]) - lse);
            A g = (p - ((L)c == lab ? (A)1 : (A)0)) * gscale;
            dlogits[off + c] = T::store(valid ? g : (A)nnx_nan());
        }
        if (threadIdx.x == 0) {
            row_loss[row] = valid ? (lse - T::load(logits[off + (long long)lab])) * inv_n : (A)nnx_nan();
        }
    }
}

// targets: one-hot or probability rows (N, C) in the math type A
template <class T>
__device__ __forceinline__ void nnx_ce_dense_impl(const typename T::S* logits,
                                                  const typename T::A* targets,
                                                  typename T::S* dlogits,
                                                  typename T::A* row_loss, int rows, int cols,
                                                  const float* scale, typename T::A inv_n) {
    typedef typename T::A A;
    __shared__ A buf[NNX_MAX_ROW_THREADS];
    const A gscale = inv_n * (A)scale[0];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long off = row * (long long)cols;
        A m = (A)nnx_neg_inf();
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) m = nnx_max_nan(m, T::load(logits[off + c]));
        m = nnx_block_max<A>(m, buf);
        A s = (A)0;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) s += nnx_exp(T::load(logits[off + c]) - m);
        s = nnx_block_sum<A>(s, buf);
        const A lse = m + nnx_log(s);
        A l = (A)0;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A v = T::load(logits[off + c]);
            A t = targets[off + c];
            l += t * (lse - v);
            dlogits[off + c] = T::store((nnx_exp(v - lse) - t) * gscale);
        }
        l = nnx_block_sum<A>(l, buf);
        if (threadIdx.x == 0) row_loss[row] = l * inv_n;
    }
}

extern "C" __global__ void nnx_softmax_ce_i32_f32(const float* logits, const int* labels,
                                                  float* dlogits, float* row_loss, int rows,
                                                  int cols, const float* scale, float inv_n) {
    nnx_ce_labels_impl<nnx_f32, int>(logits, labels, dlogits, row_loss, rows, cols, scale, inv_n);
}
extern "C" __global__ void nnx_softmax_ce_i64_f32(const float* logits, const long long* labels,
                                                  float* dlogits, float* row_loss, int rows,
                                                  int cols, const float* scale, float inv_n) {
    nnx_ce_labels_impl<nnx_f32, long long>(logits, labels, dlogits, row_loss, rows, cols, scale,
                                           inv_n);
}
extern "C" __global__ void nnx_softmax_ce_dense_f32(const float* logits, const float* targets,
                                                    float* dlogits, float* row_loss, int rows,
                                                    int cols, const float* scale, float inv_n) {
    nnx_ce_dense_impl<nnx_f32>(logits, targets, dlogits, row_loss, rows, cols, scale, inv_n);
}

extern "C" __global__ void nnx_softmax_ce_i32_f64(const double* logits, const int* labels,
                                                  double* dlogits, double* row_loss, int rows,
                                                  int cols, const float* scale, double inv_n) {
    nnx_ce_labels_impl<nnx_f64, int>(logits, labels, dlogits, row_loss, rows, cols, scale, inv_n);
}
extern "C" __global__ void nnx_softmax_ce_i64_f64(const double* logits, const long long* labels,
                                                  double* dlogits, double* row_loss, int rows,
                                                  int cols, const float* scale, double inv_n) {
    nnx_ce_labels_impl<nnx_f64, long long>(logits, labels, dlogits, row_loss, rows, cols, scale,
                                           inv_n);
}
extern "C" __global__ void nnx_softmax_ce_dense_f64(const double* logits, const double* targets,
                                                    double* dlogits, double* row_loss, int rows,
                                                    int cols, const float* scale, double inv_n) {
    nnx_ce_dense_impl<nnx_f64>(logits, targets, dlogits, row_loss, rows, cols, scale, inv_n);
}

extern "C" __global__ void nnx_softmax_ce_i32_f16(const nnx_half_t* logits, const int* labels,
                                                  nnx_half_t* dlogits, float* row_loss, int rows,
                                                  int cols, const float* scale, float inv_n) {
    nnx_ce_labels_impl<nnx_f16, int>(logits, labels, dlogits, row_loss, rows, cols, scale, inv_n);
}
extern "C" __global__ void nnx_softmax_ce_i64_f16(const nnx_half_t* logits,
                                                  const long long* labels, nnx_half_t* dlogits,
                                                  float* row_loss, int rows, int cols,
                                                  const float* scale, float inv_n) {
    nnx_ce_labels_impl<nnx_f16, long long>(logits, labels, dlogits, row_loss, rows, cols, scale,
                                           inv_n);
}
extern "C" __global__ void nnx_softmax_ce_dense_f16(const nnx_half_t* logits,
                                                    const float* targets, nnx_half_t* dlogits,
                                                    float* row_loss, int rows, int cols,
                                                    const float* scale, float inv_n) {
    nnx_ce_dense_impl<nnx_f16>(logits, targets, dlogits, row_loss, rows, cols, scale, inv_n);
}

extern "C" __global__ void nnx_softmax_ce_i32_bf16(const float* logits, const int* labels,
                                                   float* dlogits, float* row_loss, int rows,
                                                   int cols, const float* scale, float inv_n) {
    nnx_ce_labels_impl<nnx_bf16, int>(logits, labels, dlogits, row_loss, rows, cols, scale,
                                      inv_n);
}
extern "C" __global__ void nnx_softmax_ce_i64_bf16(const float* logits, const long long* labels,
                                                   float* dlogits, float* row_loss, int rows,
                                                   int cols, const float* scale, float inv_n) {
    nnx_ce_labels_impl<nnx_bf16, long long>(logits, labels, dlogits, row_loss, rows, cols, scale,
                                            inv_n);
}
extern "C" __global__ void nnx_softmax_ce_dense_bf16(const float* logits, const float* targets,
                                                     float* dlogits, float* row_loss, int rows,
                                                     int cols, const float* scale, float inv_n) {
    nnx_ce_dense_impl<nnx_bf16>(logits, targets, dlogits, row_loss, rows, cols, scale, inv_n);
}
