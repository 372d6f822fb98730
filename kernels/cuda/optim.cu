// nnx optimizer updates over the flat parameter buffer: one launch each, in place.
//
// Host scalars arrive as double (computed in float64 on the host, e.g. 1 - beta2 and
// lr / (1 - beta1**step)) and are rounded once to the parameter type, which is what the
// NumPy reference does with Python floats (NEP 50: a Python float takes the array's dtype).
//
// Step-dependent scalars (Adam's lr / (1 - beta1**step), sqrt(1 - beta2**step), 1 - lr*wd,
// Adagrad's lr / (1 + (step-1)*lr_decay), and the lr of SGD, RMSprop and Adadelta, which a
// schedule changes) come either as kernel arguments (use_hyper = 0: eager
// steps, no host-to-device copy) or from the device buffer `hyper` (use_hyper = 1): a CUDA
// graph freezes kernel arguments at capture, so a captured update reads them from `hyper`,
// which CapturedGraph.replay() rewrites before each launch (kernels/cupy_graphs.py).
//
// Mixed precision (loss scaling): `scale` points at the current loss scale and `found_inf` at
// the overflow flag, both on the device. The update multiplies each gradient by 1 / *scale
// (a power of two: exact) and does nothing at all when *found_inf is set; nnx_check_finite_*
// sets the flag beforehand and nnx_update_loss_scale adjusts the scale afterwards. Outside
// mixed precision the caller passes scale = 1 and a flag that stays 0.

#include "nnx_common.cuh"

// PyTorch's SGD: g = grad/scale (+ wd*p); v = mu*v + g; p -= lr*(nesterov ? g + mu*v : v)
template <typename P>
__device__ __forceinline__ void nnx_sgd_impl(P* params, const P* grads, P* velocity, long long n,
                                             double lr, double momentum, int nesterov,
                                             double weight_decay, const float* scale,
                                             const int* found_inf, const double* hyper,
                                             int use_hyper) {
    if (found_inf[0]) return;
    const P inv = (P)1 / (P)scale[0];
    const P lr_ = (P)(use_hyper ? hyper[0] : lr);
    const P mu = (P)momentum;
    const P wd = (P)weight_decay;
    const bool use_wd = weight_decay != 0.0;
    const bool use_mu = momentum != 0.0;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        P p = params[i];
        P g = grads[i] * inv;
        if (use_wd) g = g + wd * p;
        if (use_mu) {
            P v = velocity[i] * mu;
            v = v + g;
            velocity[i] = v;
            g = nesterov ? g + mu * v : v;
        }
        params[i] = p - lr_ * g;
    }
}

extern "C" __global__ void nnx_sgd_f32(float* params, const float* grads, float* velocity,
                                       long long n, double lr, double momentum, int nesterov,
                                       double weight_decay, const float* scale,
                                       const int* found_inf, const double* hyper,
                                       int use_hyper) {
    nnx_sgd_impl<float>(params, grads, velocity, n, lr, momentum, nesterov, weight_decay, scale,
                      found_inf, hyper, use_hyper);
}
extern "C" __global__ void nnx_sgd_f64(double* params, const double* grads, double* velocity,
                                       long long n, double lr, double momentum, int nesterov,
                                       double weight_decay, const float* scale,
                                       const int* found_inf, const double* hyper,
                                       int use_hyper) {
    nnx_sgd_impl<double>(params, grads, velocity, n, lr, momentum, nesterov, weight_decay, scale,
                      found_inf, hyper, use_hyper);
}

// Adam / AdamW with PyTorch's bias correction, in the reference's order of operations:
//   decoupled: p *= decay (= 1 - lr*wd)       else: g += wd*p
//   m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g*g
//   p -= lr_bc1 * m / (sqrt(v) / bc2_sqrt + eps)     (lr_bc1 = lr / (1 - beta1**step))
template <typename P>
__device__ __forceinline__ void nnx_adam_impl(P* params, const P* grads, P* m, P* v, long long n,
                                              double lr_bc1, double beta1, double one_m_beta1,
                                              double beta2, double one_m_beta2, double bc2_sqrt,
                                              double eps, double weight_decay, double decay,
                                              int decoupled, const float* scale,
                                              const int* found_inf, const double* hyper,
                                              int use_hyper) {
    if (found_inf[0]) return;
    if (use_hyper) {
        lr_bc1 = hyper[0];
        bc2_sqrt = hyper[1];
        decay = hyper[2];
    }
    const P inv = (P)1 / (P)scale[0];
    const P a = (P)lr_bc1, b1 = (P)beta1, c1 = (P)one_m_beta1, b2 = (P)beta2, c2 = (P)one_m_beta2;
    const P bc2 = (P)bc2_sqrt, ep = (P)eps, wd = (P)weight_decay, dec = (P)decay;
    const bool use_wd = weight_decay != 0.0;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        P p = params[i];
        P g = grads[i] * inv;
        if (use_wd) {
            if (decoupled) p = p * dec;
            else g = g + wd * p;
        }
        P mi = m[i] * b1;
        mi = mi + c1 * g;
        P vi = v[i] * b2;
        vi = vi + c2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        P denom = nnx_sqrt(vi) / bc2 + ep;
        params[i] = p - (a * mi) / denom;
    }
}

extern "C" __global__ void nnx_adam_f32(float* params, const float* grads, float* m, float* v,
                                        long long n, double lr_bc1, double beta1,
                                        double one_m_beta1, double beta2, double one_m_beta2,
                                        double bc2_sqrt, double eps, double weight_decay,
                                        double decay, int decoupled, const float* scale,
                                        const int* found_inf, const double* hyper,
                                        int use_hyper) {
    nnx_adam_impl<float>(params, grads, m, v, n, lr_bc1, beta1, one_m_beta1, beta2, one_m_beta2,
                         bc2_sqrt, eps, weight_decay, decay, decoupled, scale, found_inf,
                         hyper, use_hyper);
}
extern "C" __global__ void nnx_adam_f64(double* params, const double* grads, double* m,
                                        double* v, long long n, double lr_bc1, double beta1,
                                        double one_m_beta1, double beta2, double one_m_beta2,
                                        double bc2_sqrt, double eps, double weight_decay,
                                        double decay, int decoupled, const float* scale,
                                        const int* found_inf, const double* hyper,
                                        int use_hyper) {
    nnx_adam_impl<double>(params, grads, m, v, n, lr_bc1, beta1, one_m_beta1, beta2, one_m_beta2,
                          bc2_sqrt, eps, weight_decay, decay, decoupled, scale, found_inf,
                         hyper, use_hyper);
}

// PyTorch's RMSprop, in the reference's order of operations:
//   g = grad/scale (+ wd*p);  s = alpha*s + (1-alpha)*g*g
//   centered: a = alpha*a + (1-alpha)*g;  d = sqrt(max(s - a*a, 0)) + eps   else d = sqrt(s) + eps
//   momentum: b = mu*b + g/d;  p -= lr*b                                    else p -= lr*g/d
// grad_avg is touched only when centered, momentum_buffer only when momentum != 0.
template <typename P>
__device__ __forceinline__ void nnx_rmsprop_impl(P* params, const P* grads, P* square_avg,
                                                 P* grad_avg, P* momentum_buffer, long long n,
                                                 double lr, double alpha, double one_m_alpha,
                                                 double eps, double weight_decay,
                                                 double momentum, int centered,
                                                 const float* scale, const int* found_inf,
                                                 const double* hyper, int use_hyper) {
    if (found_inf[0]) return;
    const P inv = (P)1 / (P)scale[0];
    const P lr_ = (P)(use_hyper ? hyper[0] : lr);
    const P a = (P)alpha, c = (P)one_m_alpha, ep = (P)eps, wd = (P)weight_decay;
    const P mu = (P)momentum;
    const bool use_wd = weight_decay != 0.0;
    const bool use_mu = momentum != 0.0;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        P p = params[i];
        P g = grads[i] * inv;
        if (use_wd) g = g + wd * p;
        P s = square_avg[i] * a;
        s = s + c * (g * g);
        square_avg[i] = s;
        P d;
        if (centered) {
            P m = grad_avg[i] * a;
            m = m + c * g;
            grad_avg[i] = m;
            P var = s - m * m;
            if (var < (P)0) var = (P)0;
            d = nnx_sqrt(var) + ep;
        } else {
            d = nnx_sqrt(s) + ep;
        }
        if (use_mu) {
            P b = momentum_buffer[i] * mu;
            b = b + g / d;
            momentum_buffer[i] = b;
            params[i] = p - lr_ * b;
        } else {
            params[i] = p - lr_ * (g / d);
        }
    }
}

extern "C" __global__ void nnx_rmsprop_f32(float* params, const float* grads, float* square_avg,
                                           float* grad_avg, float* momentum_buffer, long long n,
                                           double lr, double alpha, double one_m_alpha,
                                           double eps, double weight_decay, double momentum,
                                           int centered, const float* scale,
                                           const int* found_inf, const double* hyper,
                                           int use_hyper) {
    nnx_rmsprop_impl<float>(params, grads, square_avg, grad_avg, momentum_buffer, n, lr, alpha,
                            one_m_alpha, eps, weight_decay, momentum, centered, scale,
                            found_inf, hyper, use_hyper);
}
extern "C" __global__ void nnx_rmsprop_f64(double* params, const double* grads,
                                           double* square_avg, double* grad_avg,
                                           double* momentum_buffer, long long n, double lr,
                                           double alpha, double one_m_alpha, double eps,
                                           double weight_decay, double momentum, int centered,
                                           const float* scale, const int* found_inf,
                                           const double* hyper, int use_hyper) {
    nnx_rmsprop_impl<double>(params, grads, square_avg, grad_avg, momentum_buffer, n, lr, alpha,
                             one_m_alpha, eps, weight_decay, momentum, centered, scale,
                             found_inf, hyper, use_hyper);
}

// PyTorch's Adagrad: g = grad/scale (+ wd*p);  sum += g*g;  p -= clr * g / (sqrt(sum) + eps)
// with clr = lr / (1 + (step-1)*lr_decay), formed in float64 on the host (hyper[0] in a graph).
template <typename P>
__device__ __forceinline__ void nnx_adagrad_impl(P* params, const P* grads, P* state_sum,
                                                 long long n, double clr, double eps,
                                                 double weight_decay, const float* scale,
                                                 const int* found_inf, const double* hyper,
                                                 int use_hyper) {
    if (found_inf[0]) return;
    const P inv = (P)1 / (P)scale[0];
    const P lr_ = (P)(use_hyper ? hyper[0] : clr);
    const P ep = (P)eps, wd = (P)weight_decay;
    const bool use_wd = weight_decay != 0.0;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        P p = params[i];
        P g = grads[i] * inv;
        if (use_wd) g = g + wd * p;
        P s = state_sum[i] + g * g;
        state_sum[i] = s;
        params[i] = p - lr_ * (g / (nnx_sqrt(s) + ep));
    }
}

extern "C" __global__ void nnx_adagrad_f32(float* params, const float* grads, float* state_sum,
                                           long long n, double clr, double eps,
                                           double weight_decay, const float* scale,
                                           const int* found_inf, const double* hyper,
                                           int use_hyper) {
    nnx_adagrad_impl<float>(params, grads, state_sum, n, clr, eps, weight_decay, scale,
                            found_inf, hyper, use_hyper);
}
extern "C" __global__ void nnx_adagrad_f64(double* params, const double* grads,
                                           double* state_sum, long long n, double clr,
                                           double eps, double weight_decay, const float* scale,
                                           const int* found_inf, const double* hyper,
                                           int use_hyper) {
    nnx_adagrad_impl<double>(params, grads, state_sum, n, clr, eps, weight_decay, scale,
                             found_inf, hyper, use_hyper);
}

// PyTorch's Adadelta: g = grad/scale (+ wd*p);  s = rho*s + (1-rho)*g*g;
//   d = sqrt(acc + eps) / sqrt(s + eps) * g;  acc = rho*acc + (1-rho)*d*d;  p -= lr*d
template <typename P>
__device__ __forceinline__ void nnx_adadelta_impl(P* params, const P* grads, P* square_avg,
                                                  P* acc_delta, long long n, double lr,
                                                  double rho, double one_m_rho, double eps,
                                                  double weight_decay, const float* scale,
                                                  const int* found_inf, const double* hyper,
                                                  int use_hyper) {
    if (found_inf[0]) return;
    const P inv = (P)1 / (P)scale[0];
    const P lr_ = (P)(use_hyper ? hyper[0] : lr);
    const P r = (P)rho, c = (P)one_m_rho, ep = (P)eps, wd = (P)weight_decay;
    const bool use_wd = weight_decay != 0.0;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n; i += stride) {
        P p = params[i];
        P g = grads[i] * inv;
        if (use_wd) g = g + wd * p;
        P s = square_avg[i] * r;
        s = s + c * (g * g);
        square_avg[i] = s;
        P acc = acc_delta[i];
        P d = nnx_sqrt(acc + ep) / nnx_sqrt(s + ep) * g;
        acc = acc * r;
        acc = acc + c * (d * d);
        acc_delta[i] = acc;
        params[i] = p - lr_ * d;
    }
}

extern "C" __global__ void nnx_adadelta_f32(float* params, const float* grads, float* square_avg,
                                            float* acc_delta, long long n, double lr, double rho,
                                            double one_m_rho, double eps, double weight_decay,
                                            const float* scale, const int* found_inf,
                                            const double* hyper, int use_hyper) {
    nnx_adadelta_impl<float>(params, grads, square_avg, acc_delta, n, lr, rho, one_m_rho, eps,
                             weight_decay, scale, found_inf, hyper, use_hyper);
}
extern "C" __global__ void nnx_adadelta_f64(double* params, const double* grads,
                                            double* square_avg, double* acc_delta, long long n,
                                            double lr, double rho, double one_m_rho, double eps,
                                            double weight_decay, const float* scale,
                                            const int* found_inf, const double* hyper,
                                            int use_hyper) {
    nnx_adadelta_impl<double>(params, grads, square_avg, acc_delta, n, lr, rho, one_m_rho, eps,
                              weight_decay, scale, found_inf, hyper, use_hyper);
}

// *found_inf |= any(!isfinite(x)); the caller zeroes the flag first.
template <typename P>
__device__ __forceinline__ void nnx_check_finite_impl(const P* x, long long n, int* found_inf) {
    bool bad = false;
    const long long stride = nnx_grid_stride();
    for (long long i = nnx_global_tid(); i < n && !bad; i += stride) bad = !nnx_isfinite(x[i]);
    if (bad) atomicOr(found_inf, 1);
}

extern "C" __global__ void nnx_check_finite_f32(const float* x, long long n, int* found_inf) {
    nnx_check_finite_impl<float>(x, n, found_inf);
}
extern "C" __global__ void nnx_check_finite_f64(const double* x, long long n, int* found_inf) {
    nnx_check_finite_impl<double>(x, n, found_inf);
}

// Dynamic loss scaling, one thread: on overflow scale *= backoff (not below min_scale) and the
// good-step count restarts; otherwise after growth_interval good steps in a row scale *= growth
// (not above max_scale).
extern "C" __global__ void nnx_update_loss_scale(float* scale, int* good_steps,
                                                 const int* found_inf, int* skipped_steps,
                                                 int growth_interval, float growth,
                                                 float backoff, float min_scale,
                                                 float max_scale) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    float s = scale[0];
    if (found_inf[0]) {
        s = s * backoff;
        if (s < min_scale) s = min_scale;
        good_steps[0] = 0;
        skipped_steps[0] += 1;
    } else {
        int g = good_steps[0] + 1;
        if (g >= growth_interval) {
            s = s * growth;
            if (!(s <= max_scale)) s = max_scale;
            g = 0;
        }
        good_steps[0] = g;
    }
    scale[0] = s;
}
