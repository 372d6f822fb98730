// nnx CUDA kernels: shared helpers (storage types, conversions, activations, block reductions).
//
// This header is inlined textually by nnx/kernels/cupy_gpu.py in place of the line
// `#include "nnx_common.cuh"` before the source goes to NVRTC (cupy.RawModule), so CuPy's
// kernel cache key covers it. It includes no header at all: half precision is stored as raw
// `unsigned short` bits and converted with PTX `cvt` (exactly what cuda_fp16.h does), because
// CuPy wheels ship cuda_fp16.h but not cuda_bf16.h, and NVRTC has no C++ standard library.
//
// Storage "variants" (the suffix of every extern "C" kernel name):
//   f32  : float storage, float math
//   f64  : double storage, double math
//   f16  : IEEE binary16 storage (nnx_half_t), float math
//   bf16 : float storage holding values rounded to bfloat16 (round-to-nearest-even on every
//          store), float math. CuPy has no stable bfloat16 dtype, so bf16 mode emulates the
//          numerics of bf16 activations with float32 containers (no memory saving).
//
// Every kernel uses grid-stride loops or one block per row, so any launch geometry is correct
// (row kernels need blockDim.x to be a power of two, at most NNX_MAX_ROW_THREADS).

#ifndef NNX_COMMON_CUH
#define NNX_COMMON_CUH

#define NNX_MAX_ROW_THREADS 256

typedef unsigned short nnx_half_t;

// activation codes, mirrored in cupy_gpu.py (_ACT_CODES)
#define NNX_ACT_IDENTITY 0
#define NNX_ACT_RELU 1
#define NNX_ACT_LEAKY_RELU 2
#define NNX_ACT_SIGMOID 3
#define NNX_ACT_TANH 4
#define NNX_ACT_GELU 5

#define NNX_LEAKY_SLOPE 0.01
#define NNX_GELU_K 0.7978845608028654  /* sqrt(2/pi) */
#define NNX_GELU_C 0.044715

// ---- bit casts (a union compiles to a register move with NVRTC and with host compilers) ----
__device__ __forceinline__ float nnx_u2f(unsigned int u) {
    union { unsigned int u; float f; } c;
    c.u = u;
    return c.f;
}
__device__ __forceinline__ unsigned int nnx_f2u(float f) {
    union { unsigned int u; float f; } c;
    c.f = f;
    return c.u;
}
__device__ __forceinline__ unsigned long long nnx_d2u(double d) {
    union { unsigned long long u; double d; } c;
    c.d = d;
    return c.u;
}

__device__ __forceinline__ float nnx_neg_inf() { return nnx_u2f(0xff800000u); }
__device__ __forceinline__ float nnx_nan() { return nnx_u2f(0x7fc00000u); }

__device__ __forceinline__ bool nnx_isfinite(float x) {
    return (nnx_f2u(x) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ bool nnx_isfinite(double x) {
    return (nnx_d2u(x) & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

// ---- binary16 <-> float ----
__device__ __forceinline__ float nnx_h2f(nnx_half_t h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
#else
    // portable path (host-side emulation only): exact widening
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int e = ((unsigned int)h >> 10) & 0x1fu;
    unsigned int m = (unsigned int)h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f;  // m * 2^-24, exact
        return sign ? -v : v;
    }
    if (e == 31) return nnx_u2f(sign | 0x7f800000u | (m << 13));
    return nnx_u2f(sign | ((e + 112u) << 23) | (m << 13));
#endif
}

__device__ __forceinline__ nnx_half_t nnx_f2h(float f) {
#if defined(__CUDA_ARCH__)
    nnx_half_t h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
#else
    // portable path (host-side emulation only): round to nearest even, like cvt.rn.f16.f32
    unsigned int x = nnx_f2u(f);
    unsigned int sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return (nnx_half_t)(sign | 0x7e00u);  // NaN
    int e = (int)(x >> 23);
    if (e > 142) return (nnx_half_t)(sign | 0x7c00u);  // overflow (and inf) -> inf
    if (e < 113) {  // half subnormal or zero
        if (e < 102) return (nnx_half_t)sign;
        unsigned int mant = (x & 0x7fffffu) | 0x800000u;
        unsigned int shift = (unsigned int)(126 - e);  // 14..24
        unsigned int mh = mant >> shift;
        unsigned int rem = mant & ((1u << shift) - 1u);
        unsigned int halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (mh & 1u))) mh++;
        return (nnx_half_t)(sign | mh);
    }
    unsigned int h = ((unsigned int)(e - 112) << 10) | ((x & 0x7fffffu) >> 13);
    unsigned int rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // carry may reach inf: correct
    return (nnx_half_t)(sign | h);
#endif
}

// float -> nearest bfloat16 (ties to even), returned widened to float
__device__ __forceinline__ float nnx_to_bf16(float f) {
    unsigned int u = nnx_f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f;  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return nnx_u2f(u & 0xffff0000u);
}

// ---- storage traits: S = storage type, A = math ("accumulate") type ----
struct nnx_f32 {
    typedef float S;
    typedef float A;
    static __device__ __forceinline__ A load(S x) { return x; }
    static __device__ __forceinline__ S store(A x) { return x; }
};
struct nnx_f64 {
    typedef double S;
    typedef double A;
    static __device__ __forceinline__ A load(S x) { return x; }
    static __device__ __forceinline__ S store(A x) { return x; }
};
struct nnx_f16 {
    typedef nnx_half_t S;
    typedef float A;
    static __device__ __forceinline__ A load(S x) { return nnx_h2f(x); }
    static __device__ __forceinline__ S store(A x) { return nnx_f2h(x); }
};
struct nnx_bf16 {
    typedef float S;
    typedef float A;
    static __device__ __forceinline__ A load(S x) { return x; }
    static __device__ __forceinline__ S store(A x) { return nnx_to_bf16(x); }
};

// ---- math overloads ----
__device__ __forceinline__ float nnx_exp(float x) { return expf(x); }
__device__ __forceinline__ double nnx_exp(double x) { return exp(x); }
__device__ __forceinline__ float nnx_log(float x) { return logf(x); }
__device__ __forceinline__ double nnx_log(double x) { return log(x); }
__device__ __forceinline__ float nnx_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double nnx_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float nnx_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double nnx_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float nnx_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double nnx_abs(double x) { return fabs(x); }

// max that propagates NaN (like numpy.max)
template <typename A>
__device__ __forceinline__ A nnx_max_nan(A a, A b) {
    if (a != a) return a;
    if (b != b) return b;
    return a > b ? a : b;
}

// ---- activations, same formulas (and operation order) as kernels/reference.py ----
template <typename A>
__device__ __forceinline__ A nnx_act_forward(A x, int act) {
    switch (act) {
        case NNX_ACT_RELU:
            return x < (A)0 ? (A)0 : x;  // NaN propagates, like numpy.maximum
        case NNX_ACT_LEAKY_RELU:
            return x > (A)0 ? x : x * (A)NNX_LEAKY_SLOPE;
        case NNX_ACT_SIGMOID: {
            A e = nnx_exp(-nnx_abs(x));
            return x >= (A)0 ? (A)1 / ((A)1 + e) : e / ((A)1 + e);
        }
        case NNX_ACT_TANH:
            return nnx_tanh(x);
        case NNX_ACT_GELU: {
            A t = nnx_tanh((A)NNX_GELU_K * (x + (A)NNX_GELU_C * x * x * x));
            return (A)0.5 * x * ((A)1 + t);
        }
        default:
            return x;
    }
}

// dz from dy and `saved` (the activation output; the pre-activation for gelu)
template <typename A>
__device__ __forceinline__ A nnx_act_backward(A dy, A s, int act) {
    switch (act) {
        case NNX_ACT_RELU:
            return dy * (s > (A)0 ? (A)1 : (A)0);  // inf/NaN in dy stay visible
        case NNX_ACT_LEAKY_RELU:
            return s > (A)0 ? dy : dy * (A)NNX_LEAKY_SLOPE;
        case NNX_ACT_SIGMOID:
            return dy * s * ((A)1 - s);
        case NNX_ACT_TANH:
            return dy * ((A)1 - s * s);
        case NNX_ACT_GELU: {
            // Finite up to the dtype's max: once tanh saturates (1 - t*t == 0, from |s| ~ 10
            // on) the sech^2 factor is exactly 0, while s*s (and s*s*s inside tanh) may have
            // overflowed to inf: 0 * inf would be NaN, the limit is 0 (the derivative tends to
            // 1 for s -> +inf and 0 for s -> -inf). NaN in s still propagates (NaN != 0).
            A t = nnx_tanh((A)NNX_GELU_K * (s + (A)NNX_GELU_C * s * s * s));
            A sech2 = (A)1 - t * t;
            A dt = sech2 == (A)0
                       ? (A)0
                       : sech2 * (A)NNX_GELU_K * ((A)1 + (A)(3.0 * NNX_GELU_C) * s * s);
            return dy * ((A)0.5 * ((A)1 + t) + (A)0.5 * s * dt);
        }
        default:
            return dy;
    }
}

// ---- block-wide reductions over shared memory (blockDim.x a power of two, <= 256) ----
// Every thread of the block must call these (they contain __syncthreads).
template <typename A>
__device__ __forceinline__ A nnx_block_sum(A v, A* buf) {
    unsigned int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    A r = buf[0];
    __syncthreads();  // buf is reused by the next reduction
    return r;
}

template <typename A>
__device__ __forceinline__ A nnx_block_max(A v, A* buf) {
    unsigned int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) buf[t] = nnx_max_nan(buf[t], buf[t + s]);
        __syncthreads();
    }
    A r = buf[0];
    __syncthreads();
    return r;
}

// The column of flat element i in rows of `cols` elements. `n` (the element count) below 2^31
// allows the cheaper 32-bit unsigned modulo; otherwise i and cols stay 64-bit.
__device__ __forceinline__ long long nnx_col(long long i, long long n, long long cols) {
    return n <= 0x7fffffffLL ? (long long)((unsigned int)i % (unsigned int)cols) : i % cols;
}

__device__ __forceinline__ long long nnx_global_tid() {
    return (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
}
__device__ __forceinline__ long long nnx_grid_stride() {
    return (long long)gridDim.x * (long long)blockDim.x;
}

#endif  // NNX_COMMON_CUH
