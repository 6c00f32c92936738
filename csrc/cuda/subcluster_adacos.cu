// Fused sub-cluster AdaCos loss: CUDA implementation of fastasd::subcluster_adacos and
// fastasd::subcluster_adacos_backward (schemas in csrc/ops.cpp, contract in
// fastasd/reference.py::subcluster_adacos; the math, forward and backward, is written out at the
// top of csrc/cpu/subcluster_adacos.cpp and is the same here).
//
// Kernels (all on the current stream, under a device guard; no cuBLAS, no ATen compute):
//   forward
//     1. gemm_tile_kernel<.., EpiCos>: cos[b, j] = (x W)[b, j] rx_b rw_j. The row and column
//        norms are accumulated from the tiles the block streams through shared memory anyway.
//        cos [B, CK] and rw [CK] are outputs: the backward reuses them.
//     2. (update_scale) row_pass_kernel<STATS=true>: per row, lse_old_b = logsumexp_j(s_old cos)
//        and theta_b; the last block to finish computes s (log-sum-exp over rows, lower median by
//        radix select) and writes it to the scale output.
//     3. row_pass_kernel<STATS=false>: per row and class, lse_class (one group of lanes per
//        class), lse_total and the row's loss term; the last block reduces the loss.
//   backward
//     1. row_prep_kernel: rx_b and g T_b (g = grad_loss s / B, T_b = sum_c t_bc).
//     2. logit_grad_kernel: G = dL/dcos * rw, elementwise from the forward's cos and rw (no
//        exponentials are stored by the forward).
//     3. gemm_tile_kernel<.., EpiStore>, split over CK: partial dL/dxn = G W^T.
//     4. dx_kernel: sums the partials and projects through the row normalization.
//     5. (centers_grad) gemm_tile_kernel: xn^T G, then col_project_kernel: the projection
//        through the column normalization.
//
// Accuracy: the extension is compiled with --use_fast_math, so exp is computed as
// 2^n * exp2(r) with a Cody-Waite reduction (~2 ulp) instead of __expf (whose error grows with
// |x|); norms and the scale update are finished in double.
//
// NaN contract (fastasd/reference.py): a NaN in an embedding row or a center gives a NaN loss and
// NaN wherever it flows in the backward; norms, row maxima and clamps use nan_max/nan_min (CUDA's
// max/fmax and fmin drop NaN).
//
// The device code (kernels + launch geometry) comes first; the host part (torch, CUDA runtime)
// is skipped when the SIMT emulator of the tests compiles this file (FASTASD_SIMT_CPU).
#include <algorithm>
#include <cstdint>

#include "device_common.h"

namespace fastasd {

namespace {

constexpr double kNormEps = 1e-12;                    // F.normalize's eps
constexpr double kAngleEps = 1.1920928955078125e-07;  // float32 epsilon (the reference's clip)
constexpr double kQuarterPi = 0.78539816339744830962;

// ---------------------------------------------------------------------------------------------
// Scalar helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float dexp(float x) {
  if (x < -87.0f) return 0.0f;
  x = x > 88.0f ? 88.0f : x;  // (not fminf: NaN must stay NaN)
  const float n = rintf(x * 1.4426950408889634f);
  float r = fmaf(n, -0.693145751953125f, x);  // ln 2 split in two (Cody-Waite)
  r = fmaf(n, -1.428606765330187e-06f, r);
  // |r| <= 0.35: exp2's approximation error stays ~2 ulp; n in [-126, 127] is a normal power of 2.
  return exp2f(r * 1.4426950408889634f) * __int_as_float((static_cast<int>(n) + 127) << 23);
}
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
__device__ __forceinline__ float dacos(float x) { return acosf(x); }
__device__ __forceinline__ double dacos(double x) { return acos(x); }

template <typename T> __device__ __forceinline__ T neg_inf() { return -INFINITY; }

// Merge two (max, sum of exp(v - max)) pairs. A NaN max wins (so a NaN row stays NaN, even
// when merged into an empty (-inf, 0) pair).
template <typename T> __device__ __forceinline__ void lse_merge(T& m, T& s, T m2, T s2) {
  if (m2 > m || m2 != m2) {
    const T t = m; m = m2; m2 = t;
    const T u = s; s = s2; s2 = u;
  }
  if (m2 != neg_inf<T>()) s += s2 * dexp(m2 - m);
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block-wide sum (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <typename T> __device__ T block_sum(T v, T* red /* >= 32 */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : T(0);
  return warp_sum(v);
}

// Block-wide log-sum-exp merge of (m, s) pairs; every thread gets the result.
template <typename T> __device__ void block_lse(T& m, T& s, T* red_m, T* red_s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, off), s2 = __shfl_xor_sync(0xffffffffu, s, off);
    lse_merge(m, s, m2, s2);
  }
  __syncthreads();
  if (lane == 0) { red_m[warp] = m; red_s[warp] = s; }
  __syncthreads();
  m = lane < nw ? red_m[lane] : neg_inf<T>();
  s = lane < nw ? red_s[lane] : T(0);
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, off), s2 = __shfl_xor_sync(0xffffffffu, s, off);
    lse_merge(m, s, m2, s2);
  }
}

// Order-preserving unsigned keys (ascending key <=> ascending value) for the radix select.
__device__ __forceinline__ unsigned long long order_key(float v) {
  const unsigned u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ unsigned long long order_key(double v) {
  const unsigned long long u = static_cast<unsigned long long>(__double_as_longlong(v));
  return (u >> 63) ? ~u : (u | (1ull << 63));
}
__device__ __forceinline__ float from_key(unsigned long long k, float) {
  const unsigned u = static_cast<unsigned>(k);
  return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}
__device__ __forceinline__ double from_key(unsigned long long k, double) {
  return __longlong_as_double(static_cast<long long>((k >> 63) ? (k & ~(1ull << 63)) : ~k));
}

// The k-th smallest (0-based) of vals[0..n) by one block, 8 bits per pass (MSB first). vals
// were written by other blocks of this grid: read them around L1 (__ldcg).
template <typename T> __device__ T block_select(const T* vals, int64_t n, int64_t k) {
  __shared__ unsigned hist[256];
  __shared__ unsigned long long s_prefix, s_mask;
  __shared__ long long s_k;
  if (threadIdx.x == 0) { s_prefix = 0; s_mask = 0; s_k = k; }
  for (int shift = int(sizeof(T)) * 8 - 8; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const unsigned long long prefix = s_prefix, mask = s_mask;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const unsigned long long key = order_key(__ldcg(vals + i));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long rem = s_k, cum = 0;
      int digit = 255;
      for (int d = 0; d < 256; ++d) {
        if (cum + hist[d] > rem) { digit = d; break; }
        cum += hist[d];
      }
      s_k = rem - cum;
      s_prefix = prefix | (static_cast<unsigned long long>(digit) << shift);
      s_mask = mask | (255ull << shift);
    }
    __syncthreads();
  }
  return from_key(s_prefix, T(0));
}

// ---------------------------------------------------------------------------------------------
// Tiled GEMM: out(m, n) = sum_k A(m, k) B(k, n) with A(m, k) = A[m*a_m + k*a_k] and
// B(k, n) = Bm[k*b_k + n*b_n]; 64x32 tile per block, 128 threads with 4x4 outputs each, k in
// steps of 32 with the next step prefetched into registers. A_FAST_M / B_FAST_N say which
// index is contiguous in memory (for coalesced loads). ROWNORM / COLNORM accumulate the squared
// norms of A's rows / B's columns from the shared tiles (every block sees its rows and columns
// over the whole k range when there is no split). The epilogue gets (m, n, split, acc, row
// factor, column factor).
// ---------------------------------------------------------------------------------------------
constexpr int kBM = 64, kBN = 32, kBK = 32, kTM = 4, kTN = 4, kPad = 4;
constexpr int kThreads = (kBM / kTM) * (kBN / kTN);  // 128
constexpr int kLoadA = kBM * kBK / kThreads;         // 16
constexpr int kLoadB = kBK * kBN / kThreads;         // 8

template <typename T> struct Lds4;
template <> struct Lds4<float> {
  __device__ __forceinline__ static void load(const float* p, float (&o)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
  }
};
template <> struct Lds4<double> {
  __device__ __forceinline__ static void load(const double* p, double (&o)[4]) {
    const double2 a = *reinterpret_cast<const double2*>(p), b = *reinterpret_cast<const double2*>(p + 2);
    o[0] = a.x; o[1] = a.y; o[2] = b.x; o[3] = b.y;
  }
};

template <typename T> __device__ __forceinline__ T inv_norm(T sumsq) {
  return T(1.0 / nan_max(sqrt(double(sumsq)), kNormEps));
}

template <typename T, bool A_FAST_M, bool B_FAST_N, bool ROWNORM, bool COLNORM, class Epi>
__global__ void __launch_bounds__(kThreads)
gemm_tile_kernel(const T* __restrict__ A, int64_t a_m, int64_t a_k, const T* __restrict__ Bm, int64_t b_k,
                 int64_t b_n, int64_t M, int64_t N, int64_t K, int64_t k_split,
                 T* __restrict__ col_scale_out,    // COLNORM: written by blocks with y = z = 0 (or nullptr)
                 int* __restrict__ zero_counters,  // block (0,0,0) zeroes two ints (or nullptr)
                 Epi epi) {
  __shared__ __align__(16) T As[kBK][kBM + kPad];
  __shared__ __align__(16) T Bs[kBK][kBN + kPad];
  __shared__ T red_row[kThreads / kBM][kBM];
  __shared__ T red_col[kThreads / kBN][kBN];
  __shared__ T row_fac[kBM], col_fac[kBN];

  const int tid = threadIdx.x, tx = tid % (kBN / kTN), ty = tid / (kBN / kTN);
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int64_t k_begin = int64_t(blockIdx.z) * k_split, k_end = min(K, k_begin + k_split);
  if (zero_counters != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && tid < 2)
    zero_counters[tid] = 0;

  T ra[kLoadA], rb[kLoadB];
  auto load_regs = [&](int64_t k0) {
#pragma unroll
    for (int r = 0; r < kLoadA; ++r) {
      const int idx = tid + r * kThreads;
      const int m = A_FAST_M ? idx % kBM : idx / kBK, k = A_FAST_M ? idx / kBM : idx % kBK;
      const int64_t gm = m0 + m, gk = k0 + k;
      ra[r] = (gm < M && gk < k_end) ? A[gm * a_m + gk * a_k] : T(0);
    }
#pragma unroll
    for (int r = 0; r < kLoadB; ++r) {
      const int idx = tid + r * kThreads;
      const int n = B_FAST_N ? idx % kBN : idx / kBK, k = B_FAST_N ? idx / kBN : idx % kBK;
      const int64_t gn = n0 + n, gk = k0 + k;
      rb[r] = (gn < N && gk < k_end) ? Bm[gk * b_k + gn * b_n] : T(0);
    }
  };
  auto store_smem = [&]() {
#pragma unroll
    for (int r = 0; r < kLoadA; ++r) {
      const int idx = tid + r * kThreads;
      const int m = A_FAST_M ? idx % kBM : idx / kBK, k = A_FAST_M ? idx / kBM : idx % kBK;
      As[k][m] = ra[r];
    }
#pragma unroll
    for (int r = 0; r < kLoadB; ++r) {
      const int idx = tid + r * kThreads;
      const int n = B_FAST_N ? idx % kBN : idx / kBK, k = B_FAST_N ? idx / kBN : idx % kBK;
      Bs[k][n] = rb[r];
    }
  };

  T acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = T(0);
  T row_sq = T(0), col_sq = T(0);

  if (k_begin < k_end) {
    load_regs(k_begin);
    store_smem();
  }
  __syncthreads();
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
    const bool more = k0 + kBK < k_end;
    if (more) load_regs(k0 + kBK);  // in flight while this step computes
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      T a[kTM], b[kTN];
      Lds4<T>::load(&As[k][ty * kTM], a);
      Lds4<T>::load(&Bs[k][tx * kTN], b);
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    if (ROWNORM) {
      const int m = tid % kBM;
      for (int k = tid / kBM; k < kBK; k += kThreads / kBM) row_sq = fma(As[k][m], As[k][m], row_sq);
    }
    if (COLNORM) {
      const int n = tid % kBN;
      for (int k = tid / kBN; k < kBK; k += kThreads / kBN) col_sq = fma(Bs[k][n], Bs[k][n], col_sq);
    }
    __syncthreads();
    if (more) {
      store_smem();
      __syncthreads();
    }
  }

  if (ROWNORM) red_row[tid / kBM][tid % kBM] = row_sq;
  if (COLNORM) red_col[tid / kBN][tid % kBN] = col_sq;
  __syncthreads();
  if (tid < kBM) {
    T f = T(1);
    if (ROWNORM) {
      T ss = T(0);
      for (int p = 0; p < kThreads / kBM; ++p) ss += red_row[p][tid];
      f = inv_norm(ss);
    }
    row_fac[tid] = f;
  }
  if (tid < kBN) {
    T f = T(1);
    if (COLNORM) {
      T ss = T(0);
      for (int p = 0; p < kThreads / kBN; ++p) ss += red_col[p][tid];
      f = inv_norm(ss);
      if (col_scale_out != nullptr && blockIdx.y == 0 && blockIdx.z == 0 && n0 + tid < N) col_scale_out[n0 + tid] = f;
    }
    col_fac[tid] = f;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int mi = ty * kTM + i;
    const int64_t m = m0 + mi;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int nj = tx * kTN + j;
      const int64_t n = n0 + nj;
      if (n < N) epi(m, n, int64_t(blockIdx.z), acc[i][j], row_fac[mi], col_fac[nj]);
    }
  }
}

// cos[b, j] = acc * rx_b * rw_j
template <typename T> struct EpiCos {
  T* out;
  int64_t N;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, int64_t, T acc, T rf, T cf) const {
    out[m * N + n] = acc * rf * cf;
  }
};

// out[z, m, n] = acc (split-K partials, or a plain product when there is one split)
template <typename T> struct EpiStore {
  T* out;
  int64_t M, N;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, int64_t z, T acc, T, T) const {
    out[(z * M + m) * N + n] = acc;
  }
};

// G[b, j] = dL/dcos[b, j] * rw_j from the forward's cos and rw (see the math in the CPU file);
// grid-stride over the B x N elements.
template <typename T>
__global__ void logit_grad_kernel(const T* __restrict__ cosines, const T* __restrict__ rw,
                                  const T* __restrict__ targets, const T* __restrict__ lse_total,
                                  const T* __restrict__ lse_class, const T* __restrict__ gT /* g * T_b */,
                                  const T* grad_loss, const T* scale, int64_t B, int64_t N, int64_t C, int64_t K,
                                  T* __restrict__ G) {
  const T s = *scale, gs = (*grad_loss) * s / T(B);
  const int64_t total = B * N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / N, n = i - m * N, c = n / K;
    const T v = s * cosines[i];
    T d = gT[m] * dexp(v - lse_total[m]);
    const T t = targets[m * C + c];
    if (t != T(0)) d -= gs * t * dexp(v - lse_class[m * C + c]);
    G[i] = d * rw[n];
  }
}

// ---------------------------------------------------------------------------------------------
// Row passes over cos (one block of kRowThreads per row b; one group of `group` lanes per class)
// ---------------------------------------------------------------------------------------------
constexpr int kRowThreads = 256;

// STATS: lse_old_b with s = s_host and theta_b; the last block computes the new scale -> s_out.
// !STATS: lse_class, lse_total and the row loss with s = (s_dev ? *s_dev : s_host); the last block
// writes the loss (and s_out = s_host when s_dev is null).
template <typename T, bool STATS>
__global__ void __launch_bounds__(kRowThreads)
row_pass_kernel(const T* __restrict__ cosines, const T* __restrict__ targets, int64_t B, int64_t C, int64_t K,
                int group, T s_host, const T* s_dev, T* __restrict__ lse_class, T* __restrict__ lse_total,
                T* __restrict__ row_val0 /* STATS: lse_old, else: row loss */,
                T* __restrict__ row_val1 /* STATS: theta */, T* __restrict__ out /* STATS: scale, else: loss */,
                T* __restrict__ s_out, int* __restrict__ counter) {
  __shared__ T red_a[32], red_b[32];
  __shared__ double red_d[32];
  __shared__ bool is_last;
  const int64_t b = blockIdx.x;
  const T* row = cosines + b * C * K;
  const T* trow = targets + b * C;
  const T s = (!STATS && s_dev != nullptr) ? *s_dev : s_host;
  const int lane_g = threadIdx.x % group, gid = threadIdx.x / group, ngroups = blockDim.x / group;
  const T lo = T(-1.0 + kAngleEps), hi = T(1.0 - kAngleEps);

  T run_m = neg_inf<T>(), run_s = T(0);  // log-sum-exp over this thread's classes (group leaders)
  double acc0 = 0.0, acc1 = 0.0;         // STATS: sum t*angles, #mixed; else: sum t*lse_c, sum t
  for (int64_t base = 0; base < C; base += ngroups) {  // uniform trip count: shuffles stay converged
    const int64_t c = base + gid;
    const bool valid = c < C;
    const T* seg = row + c * K;
    T m = neg_inf<T>();
    if (valid)
      for (int64_t k = lane_g; k < K; k += group) m = nan_max(m, s * seg[k]);
    for (int off = group >> 1; off > 0; off >>= 1) m = nan_max(m, __shfl_xor_sync(0xffffffffu, m, off));
    T sum = T(0);
    if (valid)
      for (int64_t k = lane_g; k < K; k += group) sum += dexp(s * seg[k] - m);
    for (int off = group >> 1; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const T t = valid ? trow[c] : T(0);
    T ang = T(0);
    if (STATS && valid && t != T(0))
      for (int64_t k = lane_g; k < K; k += group) ang += dacos(nan_min(nan_max(seg[k], lo), hi));
    if (STATS)
      for (int off = group >> 1; off > 0; off >>= 1) ang += __shfl_xor_sync(0xffffffffu, ang, off);
    if (valid && lane_g == 0) {
      const T lse_c = m + dlog(sum);
      lse_merge(run_m, run_s, lse_c, T(1));
      if (STATS) {
        acc0 += double(t) * double(ang);
        acc1 += t != T(0) ? 1.0 : 0.0;
      } else {
        lse_class[b * C + c] = lse_c;
        acc0 += double(t) * double(lse_c);
        acc1 += double(t);
      }
    }
  }
  block_lse(run_m, run_s, red_a, red_b);
  const T lt = run_m + dlog(run_s);
  acc0 = block_sum(acc0, red_d);
  acc1 = block_sum(acc1, red_d);
  if (threadIdx.x == 0) {
    if (STATS) {
      row_val0[b] = lt;
      row_val1[b] = T(acc0 * acc1);
    } else {
      lse_total[b] = lt;
      row_val0[b] = T(acc0 - acc1 * double(lt));
    }
    __threadfence();  // publish this row before taking a ticket
    is_last = atomicAdd(counter, 1) == int(gridDim.x) - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();

  // The last block: reductions over the rows.
  if (STATS) {
    T m = neg_inf<T>(), sm = T(0);
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) lse_merge(m, sm, __ldcg(row_val0 + i), T(1));
    block_lse(m, sm, red_a, red_b);
    const T med = block_select(row_val1, B, (B - 1) / 2);
    if (threadIdx.x == 0) {
      const double m_plus_log_bavg = double(m) + log(double(sm)) - log(double(B));
      out[0] = T(m_plus_log_bavg / cos(nan_min(kQuarterPi, double(med))));
    }
  } else {
    double total = 0.0;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) total += double(__ldcg(row_val0 + i));
    total = block_sum(total, red_d);
    if (threadIdx.x == 0) {
      out[0] = T(-total / double(B));
      if (s_dev == nullptr) s_out[0] = s_host;
    }
  }
}

// Backward prologue, one warp per row: rx_b = 1/max(|x_b|, eps), gT_b = g * sum_c t_bc.
template <typename T>
__global__ void row_prep_kernel(const T* __restrict__ x, const T* __restrict__ targets, int64_t B, int64_t D,
                                int64_t C, const T* grad_loss, const T* scale, T* __restrict__ rx,
                                T* __restrict__ gT) {
  const int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (b >= B) return;  // whole warps leave together
  T ss = T(0), ts = T(0);
  for (int64_t d = lane; d < D; d += 32) ss = fma(x[b * D + d], x[b * D + d], ss);
  for (int64_t c = lane; c < C; c += 32) ts += targets[b * C + c];
  ss = warp_sum(ss);
  ts = warp_sum(ts);
  if (lane == 0) {
    rx[b] = inv_norm(ss);
    gT[b] = (*grad_loss) * (*scale) / T(B) * ts;
  }
}

// dL/dx_b from the split partials of dL/dxn_b (one block per row); also writes xn when asked.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
dx_kernel(const T* __restrict__ partial, int64_t splits, const T* __restrict__ x, const T* __restrict__ rx,
          int64_t B, int64_t D, T* __restrict__ grad_x, T* __restrict__ xn_out) {
  __shared__ T red[32];
  const int64_t b = blockIdx.x;
  const T r = rx[b];
  T dot = T(0);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    T v = T(0);
    for (int64_t z = 0; z < splits; ++z) v += partial[(z * B + b) * D + d];
    const T xn = x[b * D + d] * r;
    dot = fma(xn, v, dot);
    if (xn_out != nullptr) xn_out[b * D + d] = xn;
  }
  dot = block_sum(dot, red);
  // r == 1/eps exactly when |x_b| <= eps (the clamp of F.normalize): no projection there.
  if (!(r < T(1.0 / kNormEps))) dot = T(0);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    T v = T(0);
    for (int64_t z = 0; z < splits; ++z) v += partial[(z * B + b) * D + d];
    grad_x[b * D + d] = r * (v - x[b * D + d] * r * dot);
  }
}

// dL/dW_j = P_j - W_j rw_j^2 (W_j . P_j) with P = xn^T G (in place), for |W_j| > eps.
template <typename T>
__global__ void col_project_kernel(T* __restrict__ gw, const T* __restrict__ w, const T* __restrict__ rw,
                                   int64_t D, int64_t N) {
  __shared__ T red[8][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  T dot = T(0);
  if (j < N)
    for (int64_t d = threadIdx.y; d < D; d += 8) dot = fma(w[d * N + j], gw[d * N + j], dot);
  red[threadIdx.y][threadIdx.x] = dot;
  __syncthreads();
  if (j >= N) return;
  dot = T(0);
  for (int p = 0; p < 8; ++p) dot += red[p][threadIdx.x];
  const T r = rw[j];
  const T coef = r < T(1.0 / kNormEps) ? r * r * dot : T(0);
  for (int64_t d = threadIdx.y; d < D; d += 8) gw[d * N + j] -= w[d * N + j] * coef;
}

// ---------------------------------------------------------------------------------------------
// Launch geometry (the launchers and the emulated tests both use it)
// ---------------------------------------------------------------------------------------------
// Lanes per class in the row passes: the largest power of two <= min(K, 32).
__host__ inline int group_size(int64_t K) {
  int g = 1;
  while (g * 2 <= 32 && g * 2 <= K) g *= 2;
  return g;
}

__host__ inline dim3 gemm_grid(int64_t M, int64_t N, int64_t splits) {
  return dim3(unsigned((N + kBN - 1) / kBN), unsigned((M + kBM - 1) / kBM), unsigned(splits));
}

// row_prep_kernel: one warp per row in blocks of 256 threads.
constexpr int kPrepThreads = 256;
__host__ inline unsigned row_prep_blocks(int64_t B) { return unsigned((B * 32 + kPrepThreads - 1) / kPrepThreads); }

// logit_grad_kernel: grid-stride, at most 8 blocks of 256 threads per multiprocessor.
constexpr int kLogitThreads = 256;
__host__ inline unsigned logit_grad_blocks(int64_t B, int64_t CK, int sms) {
  return unsigned(std::min<int64_t>((B * CK + kLogitThreads - 1) / kLogitThreads, int64_t(sms) * 8));
}

// dL/dxn = G W^T split over the CK reduction so that enough blocks run: (splits, k per split).
struct SplitK {
  int64_t splits, k_split;
};
__host__ inline SplitK dxn_split(int64_t B, int64_t D, int64_t CK, int sms) {
  const int64_t tiles = ((B + kBM - 1) / kBM) * ((D + kBN - 1) / kBN);
  const int64_t ksteps = (CK + kBK - 1) / kBK;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(ksteps, (2 * sms + tiles - 1) / tiles));
  const int64_t k_split = ((ksteps + splits - 1) / splits) * kBK;
  splits = (CK + k_split - 1) / k_split;
  return {splits, k_split};
}

// col_project_kernel: 32 columns x 8 row strides per block.
__host__ inline unsigned col_project_blocks(int64_t CK) { return unsigned((CK + 31) / 32); }
__host__ inline dim3 col_project_block() { return dim3(32, 8); }

}  // namespace
}  // namespace fastasd

#ifndef FASTASD_SIMT_CPU
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"

namespace fastasd {


// Defined in csrc/cpu/subcluster_adacos.cpp (the same checks on every device).
int64_t check_subcluster_adacos_args(const at::Tensor& embeddings, const at::Tensor& centers,
                                     const at::Tensor& targets, int64_t n_subclusters);
int64_t check_subcluster_adacos_backward_args(const at::Tensor& grad_loss, const at::Tensor& embeddings,
                                              const at::Tensor& centers, const at::Tensor& targets,
                                              const at::Tensor& scale, const at::Tensor& lse_total,
                                              const at::Tensor& lse_class, const at::Tensor& cos,
                                              const at::Tensor& col_inv_norms, int64_t n_subclusters);
at::Tensor empty_batch_col_inv_norms(const at::Tensor& centers);

namespace {

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
template <typename T>
void forward_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& targets, double scale, int64_t K,
                  bool update_scale, int64_t C, at::Tensor& loss, at::Tensor& scale_out, at::Tensor& lse_total,
                  at::Tensor& lse_class, at::Tensor& cosines, at::Tensor& rw) {
  const int64_t B = x.size(0), D = x.size(1), CK = w.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor rows = at::empty({3, B}, x.options());  // row loss, lse_old, theta
  at::Tensor counters = at::empty({2}, x.options().dtype(at::kInt));
  T* rowp = rows.data_ptr<T>();
  int* cnt = counters.data_ptr<int>();

  gemm_tile_kernel<T, false, true, true, true, EpiCos<T>><<<gemm_grid(B, CK, 1), kThreads, 0, stream>>>(
      x.data_ptr<T>(), D, 1, w.data_ptr<T>(), CK, 1, B, CK, D, D, rw.data_ptr<T>(), cnt,
      EpiCos<T>{cosines.data_ptr<T>(), CK});
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int group = group_size(K);
  T* s_ptr = scale_out.data_ptr<T>();
  if (update_scale) {
    row_pass_kernel<T, true><<<unsigned(B), kRowThreads, 0, stream>>>(
        cosines.data_ptr<T>(), targets.data_ptr<T>(), B, C, K, group, T(scale), nullptr, nullptr, nullptr, rowp + B,
        rowp + 2 * B, s_ptr, nullptr, cnt);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  row_pass_kernel<T, false><<<unsigned(B), kRowThreads, 0, stream>>>(
      cosines.data_ptr<T>(), targets.data_ptr<T>(), B, C, K, group, T(scale), update_scale ? s_ptr : nullptr,
      lse_class.data_ptr<T>(), lse_total.data_ptr<T>(), rowp, nullptr, loss.data_ptr<T>(), s_ptr, cnt + 1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void backward_cuda(const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& w, const at::Tensor& targets,
                   const at::Tensor& scale, const at::Tensor& lse_total, const at::Tensor& lse_class,
                   const at::Tensor& cosines, const at::Tensor& rw, int64_t K, bool centers_grad, int64_t C,
                   at::Tensor& grad_x, at::Tensor& grad_w) {
  const int64_t B = x.size(0), D = x.size(1), CK = w.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor rows = at::empty({2, B}, x.options());  // rx, g*T
  at::Tensor G = at::empty({B, CK}, x.options());
  T* rx = rows.data_ptr<T>();
  T* gT = rx + B;

  {
    row_prep_kernel<T><<<row_prep_blocks(B), kPrepThreads, 0, stream>>>(x.data_ptr<T>(), targets.data_ptr<T>(), B, D, C,
                                                                  grad_loss.data_ptr<T>(), scale.data_ptr<T>(),
                                                                  rx, gT);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  {
    logit_grad_kernel<T><<<logit_grad_blocks(B, CK, sms), kLogitThreads, 0, stream>>>(
        cosines.data_ptr<T>(), rw.data_ptr<T>(), targets.data_ptr<T>(), lse_total.data_ptr<T>(),
        lse_class.data_ptr<T>(), gT, grad_loss.data_ptr<T>(), scale.data_ptr<T>(), B, CK, C, K, G.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // dL/dxn = G W^T, split over the CK reduction so that enough blocks run.
  const SplitK sk = dxn_split(B, D, CK, sms);
  const int64_t splits = sk.splits, k_split = sk.k_split;
  at::Tensor partial = at::empty({splits, B, D}, x.options());
  gemm_tile_kernel<T, false, false, false, false, EpiStore<T>><<<gemm_grid(B, D, splits), kThreads, 0, stream>>>(
      G.data_ptr<T>(), CK, 1, w.data_ptr<T>(), 1, CK, B, D, CK, k_split, nullptr, nullptr,
      EpiStore<T>{partial.data_ptr<T>(), B, D});
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor xn;
  if (centers_grad) xn = at::empty({B, D}, x.options());
  dx_kernel<T><<<unsigned(B), kRowThreads, 0, stream>>>(partial.data_ptr<T>(), splits, x.data_ptr<T>(), rx, B, D,
                                                         grad_x.data_ptr<T>(),
                                                         centers_grad ? xn.data_ptr<T>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  if (centers_grad) {
    // P = xn^T G: A(m = d, k = b) = xn[b, d], B(k = b, n = j) = G[b, j].
    gemm_tile_kernel<T, true, true, false, false, EpiStore<T>><<<gemm_grid(D, CK, 1), kThreads, 0, stream>>>(
        xn.data_ptr<T>(), 1, D, G.data_ptr<T>(), CK, 1, D, CK, B, B, nullptr, nullptr,
        EpiStore<T>{grad_w.data_ptr<T>(), D, CK});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    col_project_kernel<T><<<col_project_blocks(CK), col_project_block(), 0, stream>>>(grad_w.data_ptr<T>(),
                                                                                 w.data_ptr<T>(),
                                                                                 rw.data_ptr<T>(), D, CK);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

constexpr const char* kOp = "subcluster_adacos";
constexpr const char* kOpBackward = "subcluster_adacos_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> subcluster_adacos_cuda(
    const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& targets, double scale,
    int64_t n_subclusters, bool update_scale) {
  const int64_t C = check_subcluster_adacos_args(embeddings, centers, targets, n_subclusters);
  FASTASD_CHECK(embeddings.is_cuda(), kOp, "embeddings", "must be a CUDA tensor here, got ", embeddings.device());
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const int64_t B = embeddings.size(0);
  const auto opts = embeddings.options();
  if (B == 0) {  // the reference's convention: loss 0, scale unchanged
    return {at::zeros({}, opts), at::full({}, scale, opts), at::empty({0}, opts), at::empty({0, C}, opts),
            at::empty({0, centers.size(1)}, opts), empty_batch_col_inv_norms(centers)};
  }
  FASTASD_CHECK(B <= INT32_MAX, kOp, "embeddings", "has too many rows (", B, ")");
  at::Tensor loss = at::empty({}, opts), scale_out = at::empty({}, opts);
  at::Tensor lse_total = at::empty({B}, opts), lse_class = at::empty({B, C}, opts);
  at::Tensor cosines = at::empty({B, centers.size(1)}, opts), rw = at::empty({centers.size(1)}, opts);
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "subcluster_adacos_cuda", [&] {
    forward_cuda<scalar_t>(embeddings, centers, targets, scale, n_subclusters, update_scale, C, loss, scale_out,
                           lse_total, lse_class, cosines, rw);
  });
  return {loss, scale_out, lse_total, lse_class, cosines, rw};
}

std::tuple<at::Tensor, at::Tensor> subcluster_adacos_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& targets,
    const at::Tensor& scale, const at::Tensor& lse_total, const at::Tensor& lse_class, const at::Tensor& cos,
    const at::Tensor& col_inv_norms, int64_t n_subclusters, bool centers_grad) {
  const int64_t C = check_subcluster_adacos_backward_args(grad_loss, embeddings, centers, targets, scale, lse_total,
                                                          lse_class, cos, col_inv_norms, n_subclusters);
  FASTASD_CHECK(embeddings.is_cuda(), kOpBackward, "embeddings", "must be a CUDA tensor here, got ",
                embeddings.device());
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const auto opts = embeddings.options();
  if (embeddings.size(0) == 0) {
    return {at::zeros_like(embeddings), centers_grad ? at::zeros_like(centers) : at::empty({0}, opts)};
  }
  at::Tensor grad_x = at::empty_like(embeddings);
  at::Tensor grad_w = centers_grad ? at::empty_like(centers) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "subcluster_adacos_backward_cuda", [&] {
    backward_cuda<scalar_t>(grad_loss, embeddings, centers, targets, scale, lse_total, lse_class, cos,
                            col_inv_norms, n_subclusters, centers_grad, C, grad_x, grad_w);
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastasd, CUDA, m) {
  m.impl("subcluster_adacos", &subcluster_adacos_cuda);
  m.impl("subcluster_adacos_backward", &subcluster_adacos_backward_cuda);
}

}  // namespace fastasd
#endif  // FASTASD_SIMT_CPU
