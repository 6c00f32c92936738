// stft_magnitude on CUDA: periodic-Hann-windowed, uncentered, unpadded magnitude STFT with
// optional temporal mean normalization (math: fastasd/reference.py, csrc/cpu/stft_magnitude.cpp).
//
// One block handles a run of frames of one clip, FT frames at a time, entirely in shared memory:
//   load   : samples are read from global memory once per frame, the window is applied on load,
//            and the real frame of n = n_fft samples is packed as H = n/2 complex points
//            z[m] = x[2m] + i x[2m+1];
//   FFT    : Stockham autosort passes of radix 8/4/2 between two shared-memory buffers (each
//            thread does one radix-R butterfly per pass in registers; twiddles from a table);
//   split  : the H-point spectrum is split into the n/2+1 bins of the real DFT, |X| is taken and
//            written straight to the output.
// Non-power-of-two n_fft uses a direct DFT over a shared-memory twiddle table instead.
// So no framed, windowed or complex intermediate ever goes through global memory: the only
// global traffic is the waveform read, the [B, T, F] output write, three small tables
// (window and twiddles, computed once per call) and, for normalize, B*F per-bin sums.
//
// normalize needs each clip's per-bin mean over ALL its frames before any frame can be written:
//   - sm_90 (Hopper): a thread-block CLUSTER per clip. Its CS blocks keep their frames'
//     magnitudes in shared memory, reduce the per-bin sums across the cluster through
//     distributed shared memory, then subtract the mean and write once. Global traffic = the
//     memory floor (read waveforms once, write output once).
//   - otherwise (or when a clip's frames do not fit in the cluster's shared memory): two
//     passes. Pass 1 recomputes nothing but per-bin sums (atomicAdd into a float64 [B, F]
//     buffer, no output written); pass 2 recomputes the frames and writes |X| - mean. The
//     waveform is read twice, the output written once; still no framed/complex intermediate.
// FASTASD_STFT_CLUSTER=0 disables the cluster path (to test or compare the two-pass path).
// Narrow includes on purpose: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers, which a
// bare CUDA toolkit (as on the CI image) may not have.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "checks.h"

namespace fastasd {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kMaxNfft = 8192;  // shared-memory FFT limit of this implementation
constexpr int kMaxPasses = 16;
constexpr int kMaxClusterSize = 8;  // portable cluster size

enum class Mode : int { Plain = 0, Sums = 1, Apply = 2, Cluster = 3 };

template <typename T>
struct Vec2;
template <>
struct Vec2<float> {
  using type = float2;
};
template <>
struct Vec2<double> {
  using type = double2;
};

struct StftParams {
  const void* x;      // [B, N] waveforms
  void* out;          // [B, T, F]
  double* sums;       // [B, F] per-bin sums (Sums: accumulated, Apply: read); may be null
  const void* win;    // [n] periodic Hann window
  const void* tw;     // pow2: [H] exp(-2 pi i m / H); DFT: [n] (cos, sin)(2 pi m / n)
  const void* post;   // pow2: [H+1] (cos, sin)(2 pi k / n)
  int64_t N, T, hop;  // samples per clip, frames per clip, hop
  int n, H, F;        // n_fft, n_fft / 2, bins
  int ft;             // frames transformed together (per shared-memory buffer)
  int fc;             // frames per block
  int blocks_per_clip;
  int num_passes;
  int radix[kMaxPasses];
};

template <typename T2>
__device__ __forceinline__ T2 cmul(T2 a, T2 b) {
  T2 r;
  r.x = a.x * b.x - a.y * b.y;
  r.y = a.x * b.y + a.y * b.x;
  return r;
}
template <typename T2>
__device__ __forceinline__ T2 cadd(T2 a, T2 b) {
  a.x += b.x;
  a.y += b.y;
  return a;
}
template <typename T2>
__device__ __forceinline__ T2 csub(T2 a, T2 b) {
  a.x -= b.x;
  a.y -= b.y;
  return a;
}
template <typename T2>
__device__ __forceinline__ T2 mul_minus_i(T2 a) {  // -i * a
  T2 r;
  r.x = a.y;
  r.y = -a.x;
  return r;
}

// In-register forward DFTs of size 2, 4, 8 (natural order in and out).
template <typename T2>
__device__ __forceinline__ void dft2(T2& a, T2& b) {
  const T2 s = cadd(a, b), d = csub(a, b);
  a = s;
  b = d;
}
template <typename T2>
__device__ __forceinline__ void dft4(T2& a0, T2& a1, T2& a2, T2& a3) {
  const T2 s02 = cadd(a0, a2), d02 = csub(a0, a2), s13 = cadd(a1, a3), d13 = csub(a1, a3);
  const T2 md13 = mul_minus_i(d13);
  a0 = cadd(s02, s13);
  a1 = cadd(d02, md13);
  a2 = csub(s02, s13);
  a3 = csub(d02, md13);
}
template <int R, typename T2>
__device__ __forceinline__ void dft_small(T2* v) {
  if constexpr (R == 2) {
    dft2(v[0], v[1]);
  } else if constexpr (R == 4) {
    dft4(v[0], v[1], v[2], v[3]);
  } else {
    static_assert(R == 8, "radix 2, 4 or 8");
    using T = decltype(v[0].x);
    T2 e0 = v[0], e1 = v[2], e2 = v[4], e3 = v[6];
    T2 o0 = v[1], o1 = v[3], o2 = v[5], o3 = v[7];
    dft4(e0, e1, e2, e3);
    dft4(o0, o1, o2, o3);
    const T h = T(0.70710678118654752440);
    T2 w1, w3;
    w1.x = h;
    w1.y = -h;
    w3.x = -h;
    w3.y = -h;
    o1 = cmul(o1, w1);
    o2 = mul_minus_i(o2);
    o3 = cmul(o3, w3);
    v[0] = cadd(e0, o0);
    v[4] = csub(e0, o0);
    v[1] = cadd(e1, o1);
    v[5] = csub(e1, o1);
    v[2] = cadd(e2, o2);
    v[6] = csub(e2, o2);
    v[3] = cadd(e3, o3);
    v[7] = csub(e3, o3);
  }
}

// One Stockham radix-R pass for butterfly j of an H-point sequence: src -> dst. Ns is the
// length of the sub-transforms already done (1, R1, R1*R2, ...); tw[m] = exp(-2 pi i m / H).
template <int R, typename T2>
__device__ __forceinline__ void stockham_pass(const T2* __restrict__ src, T2* __restrict__ dst,
                                              int j, int Ns, int H, const T2* __restrict__ tw) {
  const int stride = H / R;
  const int k = j & (Ns - 1);
  const int tw_step = H / (Ns * R);
  T2 v[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    T2 a = src[j + r * stride];
    if (r > 0 && Ns > 1) a = cmul(a, tw[r * k * tw_step]);
    v[r] = a;
  }
  dft_small<R>(v);
  const int idx = (j - k) * R + k;
#pragma unroll
  for (int r = 0; r < R; ++r) dst[idx + r * Ns] = v[r];
}

__device__ __forceinline__ void sincospi_t(double x, double* s, double* c) { sincospi(x, s, c); }

// Window and twiddle tables (computed in float64, stored in T).
template <typename T>
__global__ void stft_tables_kernel(T* win, typename Vec2<T>::type* tw, typename Vec2<T>::type* post,
                                   int n, int H, bool pow2) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  double s, c;
  if (i < n) {
    sincospi_t(2.0 * double(i) / double(n), &s, &c);
    win[i] = T(0.5 - 0.5 * c);
  }
  if (pow2) {
    if (i < H) {
      sincospi_t(2.0 * double(i) / double(H), &s, &c);
      tw[i].x = T(c);
      tw[i].y = T(-s);
    }
    if (i <= H) {
      sincospi_t(2.0 * double(i) / double(n), &s, &c);
      post[i].x = T(c);
      post[i].y = T(s);
    }
  } else if (i < n) {
    sincospi_t(2.0 * double(i) / double(n), &s, &c);
    tw[i].x = T(c);
    tw[i].y = T(s);
  }
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__host__ __device__ inline size_t align16(size_t b) { return (b + 15) & ~size_t(15); }

// Shared-memory layout of the main kernel (host and device agree on it).
template <typename T>
struct SmemLayout {
  size_t win, tw, post, buf_a, buf_b, psum, mean, mags, total;
  __host__ __device__ SmemLayout(int n, int H, int F, int ft, int fc, bool pow2, Mode mode) {
    using T2 = typename Vec2<T>::type;
    size_t o = 0;
    win = o;
    o = align16(o + sizeof(T) * n);
    tw = o;
    o = align16(o + sizeof(T2) * (pow2 ? H : n));
    post = o;
    o = align16(o + (pow2 ? sizeof(T2) * (H + 1) : 0));
    buf_a = o;  // pow2: ft x H complex; DFT: ft x n real
    o = align16(o + (pow2 ? sizeof(T2) * ft * H : sizeof(T) * ft * n));
    buf_b = o;
    o = align16(o + (pow2 ? sizeof(T2) * ft * H : 0));
    psum = o;
    o = align16(o + sizeof(T) * F);
    mean = o;
    o = align16(o + sizeof(T) * F);
    mags = o;
    o = align16(o + (mode == Mode::Cluster ? sizeof(T) * size_t(fc) * F : 0));
    total = o;
  }
};

template <int R, typename T2>
__device__ __forceinline__ void run_pass(const T2* src, T2* dst, int Ns, int H, int ft,
                                         const T2* tw) {
  const int per_frame = H / R;
  for (int idx = threadIdx.x; idx < ft * per_frame; idx += blockDim.x) {
    const int f = idx / per_frame, j = idx - f * per_frame;
    stockham_pass<R>(src + f * H, dst + f * H, j, Ns, H, tw);
  }
}

template <typename T, Mode M, bool POW2>
__global__ void __launch_bounds__(kThreads)
    stft_magnitude_kernel(const StftParams p) {
  using T2 = typename Vec2<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  const SmemLayout<T> L(p.n, p.H, p.F, p.ft, p.fc, POW2, M);
  T* win_s = reinterpret_cast<T*>(smem + L.win);
  T2* tw_s = reinterpret_cast<T2*>(smem + L.tw);
  T2* post_s = reinterpret_cast<T2*>(smem + L.post);
  T* psum_s = reinterpret_cast<T*>(smem + L.psum);
  T* mean_s = reinterpret_cast<T*>(smem + L.mean);
  T* mags_s = reinterpret_cast<T*>(smem + L.mags);

  const int n = p.n, H = p.H, F = p.F, ft = p.ft;
  const int64_t T_ = p.T;
  const int64_t b = blockIdx.x / p.blocks_per_clip;
  const int64_t c = blockIdx.x % p.blocks_per_clip;
  const int64_t t_begin = min64(T_, c * p.fc);
  const int64_t t_end = min64(T_, t_begin + p.fc);
  const T* xb = static_cast<const T*>(p.x) + b * p.N;
  T* outb = static_cast<T*>(p.out) + b * T_ * F;

  // Tables into shared memory; the mean (Apply) or zeroed sums (Sums, Cluster).
  const T* win_g = static_cast<const T*>(p.win);
  const T2* tw_g = static_cast<const T2*>(p.tw);
  for (int i = threadIdx.x; i < n; i += blockDim.x) win_s[i] = win_g[i];
  for (int i = threadIdx.x; i < (POW2 ? H : n); i += blockDim.x) tw_s[i] = tw_g[i];
  if constexpr (POW2) {
    const T2* post_g = static_cast<const T2*>(p.post);
    for (int i = threadIdx.x; i <= H; i += blockDim.x) post_s[i] = post_g[i];
  }
  for (int k = threadIdx.x; k < F; k += blockDim.x) {
    if constexpr (M == Mode::Apply) mean_s[k] = T(p.sums[b * F + k] / double(T_));
    psum_s[k] = T(0);
  }
  __syncthreads();

  for (int64_t f0 = t_begin; f0 < t_end; f0 += ft) {
    const int nf = static_cast<int>(min64(ft, t_end - f0));
    const T2* spec = nullptr;  // pow2: the H-point spectra of the nf frames
    const T* frames = nullptr; // DFT: the windowed frames
    if constexpr (POW2) {
      T2* a = reinterpret_cast<T2*>(smem + L.buf_a);
      T2* bb = reinterpret_cast<T2*>(smem + L.buf_b);
      // Load with the window applied; frames past the end are zero.
      for (int idx = threadIdx.x; idx < ft * H; idx += blockDim.x) {
        const int f = idx / H, m = idx - f * H;
        T2 z;
        z.x = T(0);
        z.y = T(0);
        if (f < nf) {
          const T* xf = xb + (f0 + f) * p.hop;
          z.x = xf[2 * m] * win_s[2 * m];
          z.y = xf[2 * m + 1] * win_s[2 * m + 1];
        }
        a[idx] = z;
      }
      __syncthreads();
      int Ns = 1;
      for (int pass = 0; pass < p.num_passes; ++pass) {
        const int R = p.radix[pass];
        if (R == 8) {
          run_pass<8>(a, bb, Ns, H, ft, tw_s);
        } else if (R == 4) {
          run_pass<4>(a, bb, Ns, H, ft, tw_s);
        } else {
          run_pass<2>(a, bb, Ns, H, ft, tw_s);
        }
        __syncthreads();
        T2* t = a;
        a = bb;
        bb = t;
        Ns *= R;
      }
      spec = a;
    } else {
      T* fr = reinterpret_cast<T*>(smem + L.buf_a);
      for (int idx = threadIdx.x; idx < ft * n; idx += blockDim.x) {
        const int f = idx / n, j = idx - f * n;
        fr[idx] = (f < nf) ? xb[(f0 + f) * p.hop + j] * win_s[j] : T(0);
      }
      __syncthreads();
      frames = fr;
    }

    // Bins: thread k owns bins k, k + blockDim, ... for the whole block (so psum needs no
    // atomics); consecutive threads write consecutive bins of a frame (coalesced).
    for (int k = threadIdx.x; k < F; k += blockDim.x) {
      T acc = T(0);
      for (int f = 0; f < nf; ++f) {
        T xr, xi;
        if constexpr (POW2) {
          // X[k] = E + W^k O, E = (Z[k] + conj Z[H-k]) / 2, O = (Z[k] - conj Z[H-k]) / 2i.
          const T2* Z = spec + f * H;
          const T2 za = Z[(k == H) ? 0 : k], zb = Z[(k == 0) ? 0 : H - k];
          const T er = T(0.5) * (za.x + zb.x), ei = T(0.5) * (za.y - zb.y);
          const T orr = T(0.5) * (za.y + zb.y), oi = T(0.5) * (zb.x - za.x);
          const T2 w = post_s[k];
          xr = er + w.x * orr + w.y * oi;
          xi = ei + w.x * oi - w.y * orr;
        } else {
          const T* fr = frames + f * n;
          xr = T(0);
          xi = T(0);
          int idx = 0;  // (k * j) mod n
          for (int j = 0; j < n; ++j) {
            const T2 w = tw_s[idx];
            xr += fr[j] * w.x;
            xi -= fr[j] * w.y;
            idx += k;
            if (idx >= n) idx -= n;
          }
        }
        const T mag = sqrt(xr * xr + xi * xi);
        const int64_t t = f0 + f;
        if constexpr (M == Mode::Plain) {
          outb[t * F + k] = mag;
        } else if constexpr (M == Mode::Apply) {
          outb[t * F + k] = mag - mean_s[k];
        } else if constexpr (M == Mode::Sums) {
          acc += mag;
        } else {  // Cluster: keep the magnitudes on chip until the mean is known
          acc += mag;
          mags_s[(t - t_begin) * F + k] = mag;
        }
      }
      if constexpr (M == Mode::Sums || M == Mode::Cluster) psum_s[k] += acc;
    }
    __syncthreads();  // the buffers are reused by the next frames
  }

  if constexpr (M == Mode::Sums) {
    for (int k = threadIdx.x; k < F; k += blockDim.x) atomicAdd(&p.sums[b * F + k], double(psum_s[k]));
  } else if constexpr (M == Mode::Cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every block's psum_s is complete
    const unsigned int cs = cluster.num_blocks();
    for (int k = threadIdx.x; k < F; k += blockDim.x) {
      double total = 0.0;
      for (unsigned int r = 0; r < cs; ++r) total += double(cluster.map_shared_rank(psum_s, r)[k]);
      mean_s[k] = T(total / double(T_));
    }
    __syncthreads();
    const int64_t count = (t_end - t_begin) * F;  // this block's rows: one contiguous range
    T* dst = outb + t_begin * F;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) dst[i] = mags_s[i] - mean_s[i % F];
    cluster.sync();  // no block leaves while another may still read its psum_s
#else
    __trap();  // the host launches the cluster kernel only on sm_90+
#endif
  }
}

int env_flag(const char* name, int default_value) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return default_value;
  return std::atoi(v);
}

#if defined(CUDART_VERSION) && CUDART_VERSION >= 12000
// Launch configuration of `blocks` blocks in clusters of `cluster` (attr must outlive it).
cudaLaunchConfig_t cluster_config(int64_t blocks, size_t smem, cudaStream_t stream, int cluster,
                                  cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned int>(blocks));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = cluster;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}
#endif

template <typename T, Mode M, bool POW2>
void launch(const StftParams& p, int64_t blocks, size_t smem, cudaStream_t stream, int cluster) {
  auto kernel = stft_magnitude_kernel<T, M, POW2>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  if constexpr (M == Mode::Cluster) {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12000
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = cluster_config(blocks, smem, stream, cluster, &attr);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p));
#endif
  } else {
    kernel<<<static_cast<unsigned int>(blocks), kThreads, smem, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Whether a cluster of `cluster` blocks with `smem` bytes each can run on this device.
template <typename T, bool POW2>
bool cluster_fits(int cluster, size_t smem, cudaStream_t stream) {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12000
  auto kernel = stft_magnitude_kernel<T, Mode::Cluster, POW2>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(cluster, smem, stream, cluster, &attr);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return clusters > 0;
#else
  return false;
#endif
}

template <typename T, bool POW2>
void stft_magnitude_cuda_typed(const at::Tensor& waveforms, int64_t n_fft, int64_t hop,
                               bool normalize, at::Tensor& out) {
  using T2 = typename Vec2<T>::type;
  const int64_t B = out.size(0), T_ = out.size(1), F = out.size(2);
  const int n = static_cast<int>(n_fft), H = n / 2;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int device = waveforms.device().index();
  int smem_optin = 0, cc_major = 0, sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  const size_t smem_limit = static_cast<size_t>(smem_optin);

  // Tables: window, twiddles (one small launch).
  at::Tensor win = at::empty({n}, waveforms.options());
  at::Tensor tw = at::empty({POW2 ? H : n, 2}, waveforms.options());
  at::Tensor post = at::empty({H + 1, 2}, waveforms.options());
  {
    const int count = n + 1;
    stft_tables_kernel<T><<<(count + 255) / 256, 256, 0, stream>>>(
        win.mutable_data_ptr<T>(), reinterpret_cast<T2*>(tw.mutable_data_ptr<T>()),
        reinterpret_cast<T2*>(post.mutable_data_ptr<T>()), n, H, POW2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  StftParams p{};
  p.x = waveforms.const_data_ptr<T>();
  p.out = out.mutable_data_ptr<T>();
  p.sums = nullptr;
  p.win = win.const_data_ptr<T>();
  p.tw = tw.const_data_ptr<T>();
  p.post = post.const_data_ptr<T>();
  p.N = waveforms.size(1);
  p.T = T_;
  p.hop = hop;
  p.n = n;
  p.H = H;
  p.F = static_cast<int>(F);
  p.num_passes = 0;
  if (POW2) {
    for (int rem = H; rem > 1;) {
      const int R = (rem % 8 == 0) ? 8 : (rem % 4 == 0) ? 4 : 2;
      p.radix[p.num_passes++] = R;
      rem /= R;
    }
  }

  // Frames per shared-memory buffer: ~4096 complex points per block, within the smem limit.
  const size_t budget = std::min<size_t>(smem_limit, 100 * 1024);
  int ft = std::max(1, std::min(16, (POW2 ? 4096 / std::max(H, 1) : 2048 / n)));
  while (ft > 1 && SmemLayout<T>(n, H, p.F, ft, 0, POW2, Mode::Plain).total > budget) ft /= 2;
  FASTASD_CHECK(SmemLayout<T>(n, H, p.F, 1, 0, POW2, Mode::Plain).total <= smem_limit,
                "stft_magnitude", "n_fft", "=", n_fft, " needs more shared memory than this GPU has");
  p.ft = ft;

  // normalize on sm_90+: one cluster per clip, frames split over its blocks.
  if (normalize && cc_major >= 9 && env_flag("FASTASD_STFT_CLUSTER", 1) != 0) {
    const int cs = static_cast<int>(std::min<int64_t>(kMaxClusterSize, T_));
    const int fc = static_cast<int>((T_ + cs - 1) / cs);
    int ftc = ft;
    while (ftc > 1 && SmemLayout<T>(n, H, p.F, ftc, fc, POW2, Mode::Cluster).total > smem_limit) ftc /= 2;
    const size_t smem = SmemLayout<T>(n, H, p.F, ftc, fc, POW2, Mode::Cluster).total;
    if (smem <= smem_limit && cluster_fits<T, POW2>(cs, smem, stream)) {
      StftParams pc = p;
      pc.ft = ftc;
      pc.fc = fc;
      pc.blocks_per_clip = cs;
      launch<T, Mode::Cluster, POW2>(pc, B * cs, smem, stream, cs);
      return;
    }
  }

  // Frames per block: a few buffers' worth, fewer when the grid would not fill the GPU.
  int64_t fc = int64_t(ft) * 4;
  if (B * ((T_ + fc - 1) / fc) < 2 * int64_t(sm_count)) fc = ft;
  p.fc = static_cast<int>(fc);
  p.blocks_per_clip = static_cast<int>((T_ + fc - 1) / fc);
  const int64_t blocks = B * p.blocks_per_clip;
  FASTASD_CHECK(blocks < (int64_t{1} << 31), "stft_magnitude", "waveforms",
                "is too large for one launch (", B, " clips of ", T_, " frames)");
  if (!normalize) {
    const size_t smem = SmemLayout<T>(n, H, p.F, ft, 0, POW2, Mode::Plain).total;
    launch<T, Mode::Plain, POW2>(p, blocks, smem, stream, 1);
    return;
  }
  at::Tensor sums = at::empty({B, F}, waveforms.options().dtype(at::kDouble));
  C10_CUDA_CHECK(cudaMemsetAsync(sums.mutable_data_ptr<double>(), 0, sizeof(double) * B * F, stream));
  p.sums = sums.mutable_data_ptr<double>();
  const size_t smem = SmemLayout<T>(n, H, p.F, ft, 0, POW2, Mode::Sums).total;
  launch<T, Mode::Sums, POW2>(p, blocks, smem, stream, 1);
  launch<T, Mode::Apply, POW2>(p, blocks, smem, stream, 1);
}

}  // namespace

at::Tensor stft_magnitude_cuda(const at::Tensor& waveforms, int64_t n_fft, int64_t hop,
                               bool normalize) {
  const int64_t T = check_stft_magnitude_args(waveforms, n_fft, hop);
  FASTASD_CHECK(n_fft <= kMaxNfft, "stft_magnitude", "n_fft",
                "must be <= ", kMaxNfft, " on CUDA, got ", n_fft);
  const c10::cuda::CUDAGuard guard(waveforms.device());
  const int64_t B = waveforms.size(0), F = n_fft / 2 + 1;
  at::Tensor out = at::empty({B, T, F}, waveforms.options());
  if (B == 0) return out;
  const bool pow2 = (n_fft & (n_fft - 1)) == 0;
  if (waveforms.scalar_type() == at::kFloat) {
    pow2 ? stft_magnitude_cuda_typed<float, true>(waveforms, n_fft, hop, normalize, out)
         : stft_magnitude_cuda_typed<float, false>(waveforms, n_fft, hop, normalize, out);
  } else {
    pow2 ? stft_magnitude_cuda_typed<double, true>(waveforms, n_fft, hop, normalize, out)
         : stft_magnitude_cuda_typed<double, false>(waveforms, n_fft, hop, normalize, out);
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastasd, CUDA, m) { m.impl("stft_magnitude", &stft_magnitude_cuda); }

}  // namespace fastasd
