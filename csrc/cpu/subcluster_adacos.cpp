// Fused sub-cluster AdaCos loss: CPU implementation of fastasd::subcluster_adacos and
// fastasd::subcluster_adacos_backward (schemas in csrc/ops.cpp, contract in
// fastasd/reference.py::subcluster_adacos). The argument checks shared with the CUDA
// implementation live here too (check_subcluster_adacos_args / ..._backward_args).
//
// Notation: x = embeddings [B, D], W = centers [D, CK] (CK = C*K, column j belongs to class
// c(j) = j / K), t = targets [B, C], s = scale, eps = 1e-12 (as F.normalize).
//
// Forward
//   rx_b = 1 / max(|x_b|, eps),  rw_j = 1 / max(|W_j|, eps),  xn_b = x_b rx_b,  Wn_j = W_j rw_j
//   cos[b, j] = xn_b . Wn_j = (xn W)[b, j] * rw_j                      (one GEMM, xn = x * rx)
//   update_scale (s_old = scale; the new s is what the loss uses and what is returned):
//     M + ln B_avg = logsumexp_{b, j}(s_old cos[b, j]) - ln B
//                  = logsumexp_b(lse_old_b) - ln B,  lse_old_b = logsumexp_j(s_old cos[b, j])
//     theta_b = n_b * sum_{c: t_bc != 0} t_bc sum_{j in c} acos(clamp(cos[b, j], -1+e32, 1-e32))
//               (n_b = #{c : t_bc != 0}, e32 = float32 epsilon; classes with t = 0 add nothing,
//               so only their K columns need an acos)
//     theta_med = lower median_b theta_b (torch.median)
//     s = (M + ln B_avg) / cos(min(pi/4, theta_med))
//   lse_class[b, c] = logsumexp_{j in c}(s cos[b, j]),  lse_total[b] = logsumexp_j(s cos[b, j])
//   loss = -(1/B) sum_b sum_c t_bc (lse_class[b, c] - lse_total[b])
//
// Backward (g = grad_loss; the scale gets no gradient, as in the reference)
//   dL/dcos[b, j] = g (s/B) (T_b softmax_j - t_{b,c(j)} exp(s cos[b, j] - lse_class[b, c(j)])),
//     T_b = sum_c t_bc, softmax_j = exp(s cos[b, j] - lse_total[b])
//   G[b, j] = dL/dcos[b, j] * rw_j                               (so that raw W can be used below)
//   dL/dxn = G W^T,                dL/dx_b = rx_b (dxn_b - xn_b (xn_b . dxn_b))  if |x_b| > eps
//                                            rx_b dxn_b                            otherwise
//   dL/dWn_j rw_j = (xn^T G)_j,    dL/dW_j = (xn^T G)_j - W_j rw_j^2 (W_j . (xn^T G)_j) if |W_j| > eps
//                                            (xn^T G)_j                               otherwise
//   The forward returns cos [B, CK] and rw [CK] with lse_total [B], lse_class [B, C] and the
//   scale, and the backward reuses them: no GEMM to recompute cos and no pass over W for its
//   column norms (cos is the [B, CK] buffer the forward computes anyway; no exponentials are kept).
//
// Fusion: cos rows come from one BLAS GEMM (allowed on CPU); the column scaling by rw, the
// exponentials, the per-class and per-row log-sum-exps, the scale-update statistics and the logit
// gradient are computed row by row in our own loops (at::parallel_for over rows), so no [B, CK]
// tensor of exponentials exists (the [B, CK] cosines are returned for the backward). exp's
// arguments are shifted by |s| (>= every logit since |cos| <= 1), which needs no pass for a
// maximum; |s| > 40 (float32) falls back to the row maximum. float32 uses explicitly vectorized
// exp / log (GCC vector extensions: 8 lanes baseline or AVX2+FMA, 16 lanes AVX-512, chosen at run
// time, FASTASD_CPU_ISA=avx2|base caps it); float64 (gradcheck) uses std::exp / std::log.
//
// Cost at B=64, D=256, CK=5472 (float32): the two GEMMs (forward, dL/dxn) and the exponentials
// of the forward's and the backward's row passes (see benchmarks/NOTES.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"

// The vector helpers are always inlined, so GCC's note about their calling convention is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastasd {

namespace {
constexpr const char* kOp = "subcluster_adacos";
constexpr const char* kOpBackward = "subcluster_adacos_backward";
}  // namespace

namespace {
// embeddings / centers / targets / n_subclusters, for the forward and the backward (op names the
// operator in the messages). Returns C.
int64_t check_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& centers,
                     const at::Tensor& targets, int64_t n_subclusters) {
  FASTASD_CHECK_DIM(embeddings, 2, op, "embeddings", "[B, D]");
  FASTASD_CHECK_DIM(centers, 2, op, "centers", "[D, C*K]");
  FASTASD_CHECK_DIM(targets, 2, op, "targets", "[B, C]");
  FASTASD_CHECK_FLOATING(embeddings, op, "embeddings");
  FASTASD_CHECK_SAME_DTYPE(centers, embeddings, op, "centers", "embeddings");
  FASTASD_CHECK_SAME_DTYPE(targets, embeddings, op, "targets", "embeddings");
  FASTASD_CHECK_SAME_DEVICE(centers, embeddings, op, "centers", "embeddings");
  FASTASD_CHECK_SAME_DEVICE(targets, embeddings, op, "targets", "embeddings");
  FASTASD_CHECK_CONTIGUOUS(embeddings, op, "embeddings");
  FASTASD_CHECK_CONTIGUOUS(centers, op, "centers");
  FASTASD_CHECK_CONTIGUOUS(targets, op, "targets");
  FASTASD_CHECK(n_subclusters >= 1, op, "n_subclusters", "must be >= 1, got ", n_subclusters);
  const int64_t B = embeddings.size(0), D = embeddings.size(1), CK = centers.size(1);
  FASTASD_CHECK(D >= 1, op, "embeddings", "must have at least one column (D >= 1), got shape ", embeddings.sizes());
  FASTASD_CHECK(centers.size(0) == D, op, "centers", "must have D=", D,
                " rows like embeddings has columns, got ", centers.size(0));
  FASTASD_CHECK(CK >= 1, op, "centers", "must have at least one column, got shape ", centers.sizes());
  FASTASD_CHECK(CK % n_subclusters == 0, op, "centers", "has ", CK,
                " columns, not a multiple of n_subclusters=", n_subclusters);
  const int64_t C = CK / n_subclusters;
  FASTASD_CHECK(targets.size(0) == B && targets.size(1) == C, op, "targets", "must be [", B, ", ", C,
                "] (B from embeddings, C = centers columns / n_subclusters), got ", targets.sizes());
  return C;
}
}  // namespace

// Checks of subcluster_adacos's arguments (shared with csrc/cuda/subcluster_adacos.cu).
// Returns C (the number of classes).
int64_t check_subcluster_adacos_args(const at::Tensor& embeddings, const at::Tensor& centers,
                                     const at::Tensor& targets, int64_t n_subclusters) {
  return check_inputs(kOp, embeddings, centers, targets, n_subclusters);
}

// The col_inv_norms output for an empty batch (no kernel runs then; shared with the CUDA
// implementation): 1 / max(|centers[:, j]|, eps).
at::Tensor empty_batch_col_inv_norms(const at::Tensor& centers) {
  return at::linalg_vector_norm(centers, 2, at::IntArrayRef{0}).clamp_min(1e-12).reciprocal();
}

// Checks of subcluster_adacos_backward's arguments (shared with the CUDA implementation).
// Returns C.
int64_t check_subcluster_adacos_backward_args(const at::Tensor& grad_loss, const at::Tensor& embeddings,
                                              const at::Tensor& centers, const at::Tensor& targets,
                                              const at::Tensor& scale, const at::Tensor& lse_total,
                                              const at::Tensor& lse_class, const at::Tensor& cos,
                                              const at::Tensor& col_inv_norms, int64_t n_subclusters) {
  const char* op = kOpBackward;
  const int64_t C = check_inputs(op, embeddings, centers, targets, n_subclusters);
  const int64_t B = embeddings.size(0);
  FASTASD_CHECK(grad_loss.dim() == 0, op, "grad_loss", "must be 0-dim, got shape ", grad_loss.sizes());
  FASTASD_CHECK(scale.dim() == 0, op, "scale", "must be 0-dim, got shape ", scale.sizes());
  FASTASD_CHECK_DIM(lse_total, 1, op, "lse_total", "[B]");
  FASTASD_CHECK_DIM(lse_class, 2, op, "lse_class", "[B, C]");
  FASTASD_CHECK(lse_total.size(0) == B, op, "lse_total", "must be [", B, "], got ", lse_total.sizes());
  FASTASD_CHECK(lse_class.size(0) == B && lse_class.size(1) == C, op, "lse_class", "must be [", B,
                ", ", C, "], got ", lse_class.sizes());
  const int64_t CK = centers.size(1);
  FASTASD_CHECK_DIM(cos, 2, op, "cos", "[B, C*K]");
  FASTASD_CHECK_DIM(col_inv_norms, 1, op, "col_inv_norms", "[C*K]");
  FASTASD_CHECK(cos.size(0) == B && cos.size(1) == CK, op, "cos", "must be [", B, ", ", CK, "], got ",
                cos.sizes());
  FASTASD_CHECK(col_inv_norms.size(0) == CK, op, "col_inv_norms", "must be [", CK, "], got ",
                col_inv_norms.sizes());
  struct Arg { const at::Tensor* t; const char* name; };
  for (const Arg& a : {Arg{&grad_loss, "grad_loss"}, Arg{&scale, "scale"}, Arg{&lse_total, "lse_total"},
                       Arg{&lse_class, "lse_class"}, Arg{&cos, "cos"}, Arg{&col_inv_norms, "col_inv_norms"}}) {
    FASTASD_CHECK_SAME_DTYPE(*a.t, embeddings, op, a.name, "embeddings");
    FASTASD_CHECK_SAME_DEVICE(*a.t, embeddings, op, a.name, "embeddings");
  }
  FASTASD_CHECK_CONTIGUOUS(lse_total, op, "lse_total");
  FASTASD_CHECK_CONTIGUOUS(lse_class, op, "lse_class");
  FASTASD_CHECK_CONTIGUOUS(cos, op, "cos");
  FASTASD_CHECK_CONTIGUOUS(col_inv_norms, op, "col_inv_norms");
  return C;
}

namespace {

constexpr double kNormEps = 1e-12;                      // F.normalize's eps
constexpr double kAngleEps = 1.1920928955078125e-07;    // float32 epsilon (the reference's clip)
constexpr double kQuarterPi = 0.78539816339744830962;

// ---------------------------------------------------------------------------------------------
// Row primitives. float32: GCC/Clang vector extensions, written once for a vector type V and
// compiled three times: 8 lanes for the baseline ISA (always present), 8 lanes with AVX2+FMA and
// 16 lanes with AVX-512, the best one picked once at run time (the extension itself is built for
// the baseline x86-64 ISA). float64 (gradcheck, tests): plain loops with std::exp / std::log.
// ---------------------------------------------------------------------------------------------
#define FA_INLINE static inline __attribute__((always_inline))

template <int N> struct VecT {
  typedef float V __attribute__((vector_size(4 * N)));
  typedef int32_t I __attribute__((vector_size(4 * N)));
};
template <class V> struct Lanes { static constexpr int n = int(sizeof(V) / sizeof(float)); };
template <class V> using IntOf = typename VecT<Lanes<V>::n>::I;

template <class V> FA_INLINE V vsplat(float v) { return V{} + v; }
template <class V> FA_INLINE V vload(const float* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
template <class V> FA_INLINE void vstore(float* p, V v) { std::memcpy(p, &v, sizeof v); }
// The first n lanes of p, the others `fill` (tails).
template <class V> FA_INLINE V vload_tail(const float* p, int64_t n, float fill) {
  V v = vsplat<V>(fill);
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
// Bitwise select (a vector ?: is scalarized on plain SSE2).
template <class V> FA_INLINE V vselect(IntOf<V> mask, V a, V b) {
  return (V)((mask & (IntOf<V>)a) | (~mask & (IntOf<V>)b));
}
template <class V> FA_INLINE V vmax(V a, V b) { return vselect<V>(a > b, a, b); }
template <class V> FA_INLINE V vmin(V a, V b) { return vselect<V>(a < b, a, b); }
// Horizontal sum as a tree (halves added until one lane is left): log2(lanes) dependent adds
// instead of a chain through every lane, which would dominate a per-class reduction.
template <class V> FA_INLINE float vhsum(V v) {
  constexpr int L = Lanes<V>::n;
  if constexpr (L == 1) {
    return v[0];
  } else {
    typedef typename VecT<L / 2>::V H;
    H lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return vhsum<H>(lo + hi);
  }
}

// exp(x), max relative error ~1.4 ulp on [-87, 88.3] (Cephes expf polynomial, Cody-Waite range
// reduction); NaN gives NaN. Inputs below -87 give exp(-87) ~ 1.6e-38 instead of less: every sum
// formed here is shifted so that its largest term is far above that (see kTiny).
template <class V> FA_INLINE V vexp(V x) {
  x = vselect<V>(x < vsplat<V>(-87.0f), vsplat<V>(-87.0f), x);  // NaN passes through both clamps
  x = vselect<V>(x > vsplat<V>(88.3f), vsplat<V>(88.3f), x);
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  V r = n * -0.693359375f + x;
  r = n * 2.12194440e-4f + r;
  V p = vsplat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r * r + r) + 1.0f;
  const IntOf<V> bits = (__builtin_convertvector(n, IntOf<V>) + 127) << 23;
  return p * (V)bits;
}

// log(x) for positive normal x (Cephes logf polynomial), ~1 ulp; log_inplace fixes other values.
template <class V> FA_INLINE V vlog(V x) {
  const IntOf<V> bits = (IntOf<V>)x;
  V e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, V);
  V m = (V)((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const IntOf<V> small = m < vsplat<V>(0.707106781186547524f);
  e = vselect<V>(small, e - 1.0f, e);
  m = vselect<V>(small, m + m, m) - 1.0f;
  const V z = m * m;
  V y = vsplat<V>(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (m + y) + e * 0.693359375f;
}

// Min and max of x; with f, first x_i *= f_i (in place).
template <class V> FA_INLINE void minmax_impl(float* x, const float* f, int64_t n, float* mn, float* mx) {
  constexpr int L = Lanes<V>::n;
  V vmn = vsplat<V>(std::numeric_limits<float>::infinity()), vmx = -vmn;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    V v = vload<V>(x + i);
    if (f) {
      v *= vload<V>(f + i);
      vstore(x + i, v);
    }
    vmn = vmin(vmn, v);
    vmx = vmax(vmx, v);
  }
  float a = vmn[0], b = vmx[0];
  for (int l = 1; l < L; ++l) { a = std::min(a, vmn[l]); b = std::max(b, vmx[l]); }
  for (; i < n; ++i) {
    if (f) x[i] *= f[i];
    a = std::min(a, x[i]);
    b = std::max(b, x[i]);
  }
  *mn = a;
  *mx = b;
}

// sum_i exp(a x_i - m); with f, first x_i *= f_i (in place).
template <class V> FA_INLINE float exp_sum_impl(float* x, const float* f, float a, float m, int64_t n) {
  constexpr int L = Lanes<V>::n;
  const V va = vsplat<V>(a), vm = vsplat<V>(m);
  V acc = vsplat<V>(0.0f);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    V v = vload<V>(x + i);
    if (f) {
      v *= vload<V>(f + i);
      vstore(x + i, v);
    }
    acc += vexp(va * v - vm);
  }
  float s = vhsum(acc);
  if (i < n) {
    V v = vload_tail<V>(x + i, n - i, 0.0f);
    if (f) {
      v *= vload_tail<V>(f + i, n - i, 0.0f);
      for (int64_t l = 0; l < n - i; ++l) x[i + l] = v[l];
    }
    const V e = vexp(va * v - vm);
    for (int64_t l = 0; l < n - i; ++l) s += e[l];
  }
  return s;
}

// sums[c] = sum_{j in class c} exp(a x_j - m) over C classes of K columns; x is not written.
// scratch: C*K floats (used when K is not a multiple of the lane count).
template <class V>
FA_INLINE void class_sums_impl(const float* x, float a, float m, int64_t C, int64_t K, float* sums, float* scratch) {
  constexpr int L = Lanes<V>::n;
  const V va = vsplat<V>(a), vm = vsplat<V>(m);
  if (K % L == 0) {  // one vector accumulator per class
    for (int64_t c = 0; c < C; ++c) {
      V acc = vsplat<V>(0.0f);
      for (int64_t j = c * K; j < (c + 1) * K; j += L) {
        acc += vexp(va * vload<V>(x + j) - vm);
      }
      sums[c] = vhsum(acc);
    }
    return;
  }
  const int64_t n = C * K;
  int64_t i = 0;
  for (; i + L <= n; i += L) vstore(scratch + i, vexp(va * vload<V>(x + i) - vm));
  if (i < n) {
    const V e = vexp(va * vload_tail<V>(x + i, n - i, 0.0f) - vm);
    for (int64_t l = 0; l < n - i; ++l) scratch[i + l] = e[l];
  }
  for (int64_t c = 0; c < C; ++c) {
    const float* e = scratch + c * K;
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) { a0 += e[k]; a1 += e[k + 1]; a2 += e[k + 2]; a3 += e[k + 3]; }
    for (; k < K; ++k) a0 += e[k];
    sums[c] = (a0 + a1) + (a2 + a3);
  }
}

// v_i = log(v_i) in place.
template <class V> FA_INLINE void log_inplace_impl(float* v, int64_t n) {
  constexpr int L = Lanes<V>::n;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V x = vload<V>(v + i);
    vstore(v + i, vlog(x));
    for (int l = 0; l < L; ++l)  // zero, subnormal, inf, NaN: the exact scalar log
      if (!(x[l] >= std::numeric_limits<float>::min() && x[l] <= std::numeric_limits<float>::max()))
        v[i + l] = std::log(x[l]);
  }
  for (; i < n; ++i) v[i] = std::log(v[i]);
}

// out_i = coef * f_i * exp(s x_i - m)
template <class V>
FA_INLINE void softmax_grad_impl(const float* x, const float* f, float s, float m, float coef, float* out, int64_t n) {
  constexpr int L = Lanes<V>::n;
  const V vs = vsplat<V>(s), vm = vsplat<V>(m), vc = vsplat<V>(coef);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V w = vload<V>(f + i);
    vstore(out + i, vc * w * vexp(vs * vload<V>(x + i) - vm));
  }
  if (i < n) {
    const V w = vload_tail<V>(f + i, n - i, 0.0f);
    const V o = vc * w * vexp(vs * vload_tail<V>(x + i, n - i, 0.0f) - vm);
    for (int64_t l = 0; l < n - i; ++l) out[i + l] = o[l];
  }
}

// acc_i += x_i^2 (column norms, one row of the centers at a time)
template <class V> FA_INLINE void add_squares_impl(float* acc, const float* x, int64_t n) {
  constexpr int L = Lanes<V>::n;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V v = vload<V>(x + i);
    vstore(acc + i, vload<V>(acc + i) + v * v);
  }
  for (; i < n; ++i) acc[i] += x[i] * x[i];
}

#define FA_PRIMITIVES(SUFFIX, ATTR, V)                                                                           \
  ATTR void minmax_##SUFFIX(float* x, const float* f, int64_t n, float* mn, float* mx) {                        \
    minmax_impl<V>(x, f, n, mn, mx);                                                                            \
  }                                                                                                             \
  ATTR float exp_sum_##SUFFIX(float* x, const float* f, float a, float m, int64_t n) {                          \
    return exp_sum_impl<V>(x, f, a, m, n);                                                                      \
  }                                                                                                             \
  ATTR void class_sums_##SUFFIX(const float* x, float a, float m, int64_t C, int64_t K, float* sums,           \
                                float* scratch) {                                                               \
    class_sums_impl<V>(x, a, m, C, K, sums, scratch);                                                           \
  }                                                                                                             \
  ATTR void log_inplace_##SUFFIX(float* v, int64_t n) { log_inplace_impl<V>(v, n); }                           \
  ATTR void softmax_grad_##SUFFIX(const float* x, const float* f, float s, float m, float c, float* o,          \
                                  int64_t n) {                                                                  \
    softmax_grad_impl<V>(x, f, s, m, c, o, n);                                                                  \
  }                                                                                                             \
  ATTR void add_squares_##SUFFIX(float* acc, const float* x, int64_t n) { add_squares_impl<V>(acc, x, n); }

FA_PRIMITIVES(base, , VecT<8>::V)
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
FA_PRIMITIVES(avx2, __attribute__((target("avx2,fma"))), VecT<8>::V)
FA_PRIMITIVES(avx512, __attribute__((target("avx512f,avx2,fma"))), VecT<16>::V)
// 2: AVX-512, 1: AVX2+FMA, 0: baseline: the best the CPU has, capped by FASTASD_CPU_ISA=avx2|base
// (read at every operator call, so that benchmarks and tests can run every path on one machine).
int hardware_level() {
  static const int level = [] {
    int lv = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) lv = 1;
    if (lv == 1 && __builtin_cpu_supports("avx512f")) lv = 2;
    return lv;
  }();
  return level;
}
std::atomic<int> g_level{-1};
void select_cpu_level() {
  int lv = hardware_level();
  if (const char* cap = std::getenv("FASTASD_CPU_ISA")) {
    const std::string c(cap);
    if (c == "base") lv = 0;
    else if (c == "avx2") lv = std::min(lv, 1);
  }
  g_level.store(lv, std::memory_order_relaxed);
}
int cpu_level() {
  const int lv = g_level.load(std::memory_order_relaxed);
  return lv >= 0 ? lv : hardware_level();
}
#define FA_DISPATCH(name, ...)                                   \
  (cpu_level() == 2   ? name##_avx512(__VA_ARGS__)              \
   : cpu_level() == 1 ? name##_avx2(__VA_ARGS__)                \
                      : name##_base(__VA_ARGS__))
#else
#define FA_DISPATCH(name, ...) name##_base(__VA_ARGS__)
void select_cpu_level() {}
#endif

// Row primitives by dtype. A null factor pointer f means "no scaling".
template <typename T> struct Row;

template <> struct Row<float> {
  static void minmax(float* x, const float* f, int64_t n, float* mn, float* mx) { FA_DISPATCH(minmax, x, f, n, mn, mx); }
  static float exp_sum(float* x, const float* f, float a, float m, int64_t n) {
    return FA_DISPATCH(exp_sum, x, f, a, m, n);
  }
  static void class_sums(const float* x, float a, float m, int64_t C, int64_t K, float* sums, float* scratch) {
    FA_DISPATCH(class_sums, x, a, m, C, K, sums, scratch);
  }
  static void log_inplace(float* v, int64_t n) { FA_DISPATCH(log_inplace, v, n); }
  static void softmax_grad(const float* x, const float* f, float s, float m, float c, float* o, int64_t n) {
    FA_DISPATCH(softmax_grad, x, f, s, m, c, o, n);
  }
  static void add_squares(float* acc, const float* x, int64_t n) { FA_DISPATCH(add_squares, acc, x, n); }
  // Shifting every logit s*cos by |s| (>= any logit, as |cos| <= 1) keeps exp's arguments in
  // [-2|s|, 0]: no underflow while |s| <= kMaxFixedShift, and no pass for a maximum. Larger
  // scales shift by the row maximum.
  static constexpr float kMaxFixedShift = 40.0f;
  // Class sums below this are recomputed with the class's own maximum (exp's arguments are
  // clamped at -87, where float leaves the normal range).
  static constexpr float kTiny = 1e-30f;
};

template <> struct Row<double> {
  static void minmax(double* x, const double* f, int64_t n, double* mn, double* mx) {
    double a = std::numeric_limits<double>::infinity(), b = -a;
    for (int64_t i = 0; i < n; ++i) {
      if (f) x[i] *= f[i];
      a = std::min(a, x[i]);
      b = std::max(b, x[i]);
    }
    *mn = a;
    *mx = b;
  }
  static double exp_sum(double* x, const double* f, double a, double m, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      if (f) x[i] *= f[i];
      s += std::exp(a * x[i] - m);
    }
    return s;
  }
  static void class_sums(const double* x, double a, double m, int64_t C, int64_t K, double* sums, double*) {
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0.0;
      for (int64_t j = c * K; j < (c + 1) * K; ++j) acc += std::exp(a * x[j] - m);
      sums[c] = acc;
    }
  }
  static void log_inplace(double* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) v[i] = std::log(v[i]);
  }
  static void softmax_grad(const double* x, const double* f, double s, double m, double c, double* o, int64_t n) {
    for (int64_t i = 0; i < n; ++i) o[i] = c * f[i] * std::exp(s * x[i] - m);
  }
  static void add_squares(double* acc, const double* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) acc[i] += x[i] * x[i];
  }
  static constexpr double kMaxFixedShift = 300.0;
  static constexpr double kTiny = 1e-280;
};

template <typename T> inline T scaled_max(T a, T mn, T mx) { return a >= T(0) ? a * mx : a * mn; }

// logsumexp_i(a x_i) of one row segment, exactly (own maximum).
template <typename T> inline double segment_lse(const T* x, T a, int64_t n) {
  std::vector<T> v(x, x + n);
  T mn, mx;
  Row<T>::minmax(v.data(), nullptr, n, &mn, &mx);
  const T m = scaled_max(a, mn, mx);
  return double(m) + std::log(double(Row<T>::exp_sum(v.data(), nullptr, a, m, n)));
}

// 1 / max(|row_b|, eps) for the B rows of a [B, D] matrix.
template <typename T> void row_inv_norms(const T* x, int64_t B, int64_t D, T* inv) {
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double ss = 0.0;
      for (int64_t d = 0; d < D; ++d) ss += double(x[b * D + d]) * double(x[b * D + d]);
      inv[b] = T(1.0 / std::max(std::sqrt(ss), kNormEps));
    }
  });
}

// 1 / max(|column_j|, eps) for the N columns of a [D, N] row-major matrix (row-wise sweeps so
// that the inner loop runs over contiguous memory).
template <typename T> void col_inv_norms(const T* w, int64_t D, int64_t N, T* inv) {
  constexpr int64_t kChunk = 512;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    T acc[kChunk];
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kChunk, n = std::min(kChunk, N - j0);
      std::fill(acc, acc + n, T(0));
      for (int64_t d = 0; d < D; ++d) Row<T>::add_squares(acc, w + d * N + j0, n);
      for (int64_t j = 0; j < n; ++j) inv[j0 + j] = T(1.0 / std::max(std::sqrt(double(acc[j])), kNormEps));
    }
  });
}

// xn = x * rx with rx = 1 / max(|x_b|, eps) (written to rx, [B]): the forward's and the backward's
// row normalization.
template <typename T> at::Tensor normalized_rows(const at::Tensor& x, at::Tensor& rx) {
  rx = at::empty({x.size(0)}, x.options());
  row_inv_norms<T>(x.data_ptr<T>(), x.size(0), x.size(1), rx.data_ptr<T>());
  return x * rx.unsqueeze(1);
}

// Lower median (torch.median) of v; v is reordered.
double lower_median(std::vector<double>& v) {
  const size_t k = (v.size() - 1) / 2;
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

// The shift m >= max_j (s cos_j) for exp(s cos_j - m): |s| when that is safe (no pass needed),
// else the row maximum. raw: with f, the raw products, turned into cosines here (raw *= f).
template <typename T> inline T logit_shift(T* raw, const T* f, T s, int64_t n, bool* scaled) {
  if (std::abs(s) <= Row<T>::kMaxFixedShift) {
    *scaled = false;
    return std::abs(s);
  }
  T mn, mx;
  Row<T>::minmax(raw, f, n, &mn, &mx);
  *scaled = f != nullptr;
  return scaled_max(s, mn, mx);
}

// One row of the scale update's statistics (raw: raw products, turned into cosines here):
// lse_old = logsumexp_j(s_old cos_j), theta = n_mixed * sum_{c: t_c != 0} t_c sum_{j in c} acos(clamp(cos_j)).
template <typename T>
void scale_stats_row(T* raw, const T* rw, const T* trow, T s_old, int64_t C, int64_t K, double* lse_old,
                     double* theta) {
  bool scaled;
  const T m = logit_shift(raw, rw, s_old, C * K, &scaled);
  *lse_old = double(m) + std::log(double(Row<T>::exp_sum(raw, scaled ? nullptr : rw, s_old, m, C * K)));
  const T* row = raw;  // cosines from here on
  const T lo = T(-1.0 + kAngleEps), hi = T(1.0 - kAngleEps);
  double acc = 0.0;
  int64_t n_mixed = 0;
  for (int64_t c = 0; c < C; ++c) {
    const T tv = trow[c];
    if (tv == T(0)) continue;  // classes without label mass add nothing: no acos needed
    ++n_mixed;
    double angles = 0.0;
    for (int64_t k = 0; k < K; ++k) angles += double(std::acos(std::min(std::max(row[c * K + k], lo), hi)));
    acc += double(tv) * angles;
  }
  *theta = acc * double(n_mixed);
}

// lse_class and lse_total of one row of cosines with scale s; returns sum_c t_c (lse_class_c -
// lse_total). sums: C scratch values, scratch: C*K scratch values.
template <typename T>
double class_lse_row(T* row, const T* trow, T s, int64_t C, int64_t K, T* lse_class, T* lse_total, T* sums,
                     T* scratch) {
  bool scaled;
  const T m = logit_shift(row, static_cast<const T*>(nullptr), s, C * K, &scaled);
  Row<T>::class_sums(row, s, m, C, K, sums, scratch);
  double total = 0.0;
  for (int64_t c = 0; c < C; ++c) total += double(sums[c]);
  const double lt = double(m) + std::log(total);
  *lse_total = T(lt);
  for (int64_t c = 0; c < C; ++c) lse_class[c] = sums[c];
  Row<T>::log_inplace(lse_class, C);
  double acc = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    // A class far below the shift: recompute with its own maximum.
    lse_class[c] = sums[c] > Row<T>::kTiny ? lse_class[c] + m : T(segment_lse(row + c * K, s, K));
    if (trow[c] != T(0)) acc += double(trow[c]) * (double(lse_class[c]) - lt);
  }
  return acc;
}

using ForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename T>
ForwardOut forward_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& targets, double scale, int64_t K,
                        bool update_scale, int64_t C) {
  const int64_t B = x.size(0), D = x.size(1), CK = w.size(1);
  at::Tensor rx;
  at::Tensor rw = at::empty({CK}, x.options());
  col_inv_norms<T>(w.data_ptr<T>(), D, CK, rw.data_ptr<T>());
  // Raw products (xn W)[b, j]; the row passes scale them by rw_j into the cosines.
  at::Tensor cos = at::mm(normalized_rows<T>(x, rx), w);
  T* cosp = cos.data_ptr<T>();
  const T* rwp = rw.data_ptr<T>();
  const T* tp = targets.data_ptr<T>();
  at::Tensor lse_total = at::empty({B}, x.options());
  at::Tensor lse_class = at::empty({B, C}, x.options());
  T* ltp = lse_total.data_ptr<T>();
  T* lcp = lse_class.data_ptr<T>();
  std::vector<double> row_loss(B);
  T s = T(scale);

  if (update_scale) {
    // Pass 1: cosines and the statistics of the scale update (with the old scale).
    std::vector<double> lse_old(B), theta(B);
    const T s_old = s;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        scale_stats_row(cosp + b * CK, rwp, tp + b * C, s_old, C, K, &lse_old[b], &theta[b]);
    });
    // M + ln B_avg = logsumexp_b(lse_old_b) - ln B; s = that / cos(min(pi/4, lower median theta)).
    double mx = -std::numeric_limits<double>::infinity();
    for (double v : lse_old) mx = std::max(mx, v);
    double sum = 0.0;
    for (double v : lse_old) sum += std::exp(v - mx);
    const double theta_med = lower_median(theta);
    s = T((mx + std::log(sum) - std::log(double(B))) / std::cos(std::min(kQuarterPi, theta_med)));
  }
  // The log-sum-exps with the final scale (without update_scale, the rows become cosines first:
  // they are returned for the backward).
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> sums(C), scratch(CK);  // scratch: only when K is not a multiple of the lanes
    for (int64_t b = b0; b < b1; ++b) {
      T* row = cosp + b * CK;
      if (!update_scale)
        for (int64_t j = 0; j < CK; ++j) row[j] *= rwp[j];
      row_loss[b] = class_lse_row(row, tp + b * C, s, C, K, lcp + b * C, ltp + b, sums.data(), scratch.data());
    }
  });
  double total_loss = 0.0;
  for (double v : row_loss) total_loss += v;
  at::Tensor loss = at::full({}, -total_loss / double(B), x.options());
  at::Tensor scale_out = at::full({}, double(s), x.options());
  return {loss, scale_out, lse_total, lse_class, cos, rw};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> backward_impl(double grad_loss, const at::Tensor& x, const at::Tensor& w,
                                                 const at::Tensor& targets, double scale, const at::Tensor& lse_total,
                                                 const at::Tensor& lse_class, const at::Tensor& cos,
                                                 const at::Tensor& rw, int64_t K, bool centers_grad, int64_t C) {
  const int64_t B = x.size(0), D = x.size(1), CK = w.size(1);
  at::Tensor rx;
  at::Tensor xn = normalized_rows<T>(x, rx);
  at::Tensor G = at::empty({B, CK}, x.options());
  const T* cosp = cos.data_ptr<T>();
  T* Gp = G.data_ptr<T>();
  const T* rwp = rw.data_ptr<T>();
  const T* tp = targets.data_ptr<T>();
  const T* ltp = lse_total.data_ptr<T>();
  const T* lcp = lse_class.data_ptr<T>();
  const T s = T(scale);
  const T g = T(grad_loss * scale / double(B));

  // G[b, j] = dL/dcos[b, j] * rw_j, one row at a time.
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* trow = tp + b * C;
      T tsum = 0;
      for (int64_t c = 0; c < C; ++c) tsum += trow[c];
      const T* row = cosp + b * CK;
      T* grow = Gp + b * CK;
      Row<T>::softmax_grad(row, rwp, s, ltp[b], g * tsum, grow, CK);
      for (int64_t c = 0; c < C; ++c) {
        const T tv = trow[c];
        if (tv == T(0)) continue;
        const T coef = g * tv, lc = lcp[b * C + c];
        for (int64_t j = c * K; j < (c + 1) * K; ++j)
          grow[j] -= coef * rwp[j] * T(std::exp(s * row[j] - lc));
      }
    }
  });

  // dL/dx through the row normalization. (dL/dxn)^T = W G^T: MKL is faster in this orientation
  // than G W^T.
  at::Tensor dxn_t = at::mm(w, G.t());  // [D, B]
  at::Tensor grad_x = at::empty_like(x);
  {
    const T* xp = xn.data_ptr<T>();
    const T* rxp = rx.data_ptr<T>();
    const T* dp = dxn_t.data_ptr<T>();
    T* gp = grad_x.data_ptr<T>();
    const T inv_eps = T(1.0 / kNormEps);
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* xr = xp + b * D;
        T* gr = gp + b * D;
        const T r = rxp[b];
        // rx == 1/eps exactly when |x_b| <= eps (the clamp): no projection there.
        double dot = 0.0;
        if (r < inv_eps)
          for (int64_t d = 0; d < D; ++d) dot += double(xr[d]) * double(dp[d * B + b]);
        const T dt = T(dot);
        for (int64_t d = 0; d < D; ++d) gr[d] = r * (dp[d * B + b] - xr[d] * dt);
      }
    });
  }

  at::Tensor grad_w;
  if (centers_grad) {
    grad_w = at::mm(xn.t(), G);  // [D, CK] = dL/dWn_j * rw_j
    T* gw = grad_w.data_ptr<T>();
    const T* wp = w.data_ptr<T>();
    const T inv_eps = T(1.0 / kNormEps);
    constexpr int64_t kChunk = 512;
    const int64_t chunks = (CK + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      T dot[kChunk];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t j0 = c * kChunk, n = std::min(kChunk, CK - j0);
        std::fill(dot, dot + n, T(0));
        for (int64_t d = 0; d < D; ++d) {
          const T* wr = wp + d * CK + j0;
          const T* gr = gw + d * CK + j0;
          for (int64_t j = 0; j < n; ++j) dot[j] += wr[j] * gr[j];
        }
        for (int64_t j = 0; j < n; ++j) {
          const T r = rwp[j0 + j];
          dot[j] = r < inv_eps ? dot[j] * r * r : T(0);
        }
        for (int64_t d = 0; d < D; ++d) {
          const T* wr = wp + d * CK + j0;
          T* gr = gw + d * CK + j0;
          for (int64_t j = 0; j < n; ++j) gr[j] -= wr[j] * dot[j];
        }
      }
    });
  } else {
    grad_w = at::empty({0}, x.options());
  }
  return {grad_x, grad_w};
}

ForwardOut subcluster_adacos_cpu(const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& targets,
                                 double scale, int64_t n_subclusters, bool update_scale) {
  const int64_t C = check_subcluster_adacos_args(embeddings, centers, targets, n_subclusters);
  FASTASD_CHECK(embeddings.device().is_cpu(), kOp, "embeddings", "must be a CPU tensor here, got ",
                embeddings.device());
  const int64_t B = embeddings.size(0);
  const auto opts = embeddings.options();
  if (B == 0) {  // the reference's convention: loss 0, scale unchanged
    return {at::zeros({}, opts), at::full({}, scale, opts), at::empty({0}, opts), at::empty({0, C}, opts),
            at::empty({0, centers.size(1)}, opts), empty_batch_col_inv_norms(centers)};
  }
  select_cpu_level();
  return AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "subcluster_adacos_cpu", [&] {
    return forward_impl<scalar_t>(embeddings, centers, targets, scale, n_subclusters, update_scale, C);
  });
}

std::tuple<at::Tensor, at::Tensor> subcluster_adacos_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& targets,
    const at::Tensor& scale, const at::Tensor& lse_total, const at::Tensor& lse_class, const at::Tensor& cos,
    const at::Tensor& col_inv_norms, int64_t n_subclusters, bool centers_grad) {
  const int64_t C = check_subcluster_adacos_backward_args(grad_loss, embeddings, centers, targets, scale, lse_total,
                                                          lse_class, cos, col_inv_norms, n_subclusters);
  FASTASD_CHECK(embeddings.device().is_cpu(), kOpBackward, "embeddings", "must be a CPU tensor here, got ",
                embeddings.device());
  const auto opts = embeddings.options();
  if (embeddings.size(0) == 0) {
    return {at::zeros_like(embeddings), centers_grad ? at::zeros_like(centers) : at::empty({0}, opts)};
  }
  const double g = grad_loss.item<double>(), s = scale.item<double>();
  select_cpu_level();
  return AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "subcluster_adacos_backward_cpu", [&] {
    return backward_impl<scalar_t>(g, embeddings, centers, targets, s, lse_total, lse_class, cos, col_inv_norms,
                                   n_subclusters, centers_grad, C);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastasd, CPU, m) {
  m.impl("subcluster_adacos", &subcluster_adacos_cpu);
  m.impl("subcluster_adacos_backward", &subcluster_adacos_backward_cpu);
}

}  // namespace fastasd
