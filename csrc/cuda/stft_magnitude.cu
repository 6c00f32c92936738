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
// FASTASD_STFT_CLUSTER=0 disables the cluster path (to compare the two-pass path; read once per
// process). The device properties, the kernels' shared-memory attributes, the cluster occupancy
// answers and the tables are cached per device (tables per (device, n_fft, dtype)), so a call
// queries nothing and launches only the STFT kernels.
//
// NaN contract (fastasd/reference.py): a NaN sample gives NaN in every bin of the frames that
// contain it and, with normalize, in every normalized bin of its clip (the mean is NaN).
//
// The device code (kernels + launch geometry) comes first; the host part (torch, CUDA runtime)
// is skipped when the SIMT emulator of the tests compiles this file (FASTASD_SIMT_CPU).
#include <algorithm>
#include <cstdint>

#include "device_common.h"

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
  FASTASD_DYNAMIC_SMEM(smem);
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

// Launch geometry (the launcher and the emulated tests both use it).

// The Stockham radix schedule of an H-point FFT (8s first, then a 4 or a 2); returns the passes.
__host__ inline int stft_radix_plan(int H, int* radix) {
  int passes = 0;
  for (int rem = H; rem > 1;) {
    const int R = (rem % 8 == 0) ? 8 : (rem % 4 == 0) ? 4 : 2;
    radix[passes++] = R;
    rem /= R;
  }
  return passes;
}

// Frames per shared-memory buffer: ~4096 complex points per block within the smem budget;
// 0 when not even one frame fits into smem_limit.
template <typename T>
__host__ inline int stft_frames_per_buffer(int n, int F, bool pow2, size_t smem_limit) {
  const int H = n / 2;
  const size_t budget = std::min<size_t>(smem_limit, 100 * 1024);
  int ft = std::max(1, std::min(16, (pow2 ? 4096 / std::max(H, 1) : 2048 / n)));
  while (ft > 1 && SmemLayout<T>(n, H, F, ft, 0, pow2, Mode::Plain).total > budget) ft /= 2;
  return SmemLayout<T>(n, H, F, 1, 0, pow2, Mode::Plain).total <= smem_limit ? ft : 0;
}

struct StftLaunch {
  int ft = 0, fc = 0, blocks_per_clip = 0, cluster = 1;
  int64_t blocks = 0;
  size_t smem = 0;
};

// normalize on sm_90+: one cluster of up to kMaxClusterSize blocks per clip, its frames split
// over the blocks and kept in shared memory. smem > smem_limit: does not fit.
template <typename T>
__host__ inline StftLaunch stft_cluster_launch(int64_t B, int64_t T_, int n, int F, bool pow2, int ft,
                                               size_t smem_limit) {
  StftLaunch l;
  const int H = n / 2;
  l.cluster = static_cast<int>(std::min<int64_t>(kMaxClusterSize, T_));
  l.fc = static_cast<int>((T_ + l.cluster - 1) / l.cluster);
  l.ft = ft;
  while (l.ft > 1 && SmemLayout<T>(n, H, F, l.ft, l.fc, pow2, Mode::Cluster).total > smem_limit) l.ft /= 2;
  l.smem = SmemLayout<T>(n, H, F, l.ft, l.fc, pow2, Mode::Cluster).total;
  l.blocks_per_clip = l.cluster;
  l.blocks = B * l.cluster;
  return l;
}

// Plain, or the two passes (Sums, Apply) of normalize: a few buffers' worth of frames per
// block, fewer when the grid would not fill the GPU twice.
template <typename T>
__host__ inline StftLaunch stft_grid_launch(int64_t B, int64_t T_, int n, int F, bool pow2, int ft, int sm_count,
                                            bool normalize) {
  StftLaunch l;
  l.ft = ft;
  int64_t fc = int64_t(ft) * 4;
  if (B * ((T_ + fc - 1) / fc) < 2 * int64_t(sm_count)) fc = ft;
  l.fc = static_cast<int>(fc);
  l.blocks_per_clip = static_cast<int>((T_ + fc - 1) / fc);
  l.blocks = B * l.blocks_per_clip;
  l.smem = SmemLayout<T>(n, n / 2, F, ft, 0, pow2, normalize ? Mode::Sums : Mode::Plain).total;
  return l;
}

// The tables kernel: one thread per entry.
__host__ inline int stft_tables_blocks(int n) { return (n + 1 + 255) / 256; }

}  // namespace
}  // namespace fastasd

#ifndef FASTASD_SIMT_CPU
// Narrow includes on purpose: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers, which a
// bare CUDA toolkit (as on the CI image) may not have.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "checks.h"

namespace fastasd {
namespace {

bool cluster_enabled() {  // FASTASD_STFT_CLUSTER, read once
  static const bool enabled = [] {
    const char* v = std::getenv("FASTASD_STFT_CLUSTER");
    return v == nullptr || *v == '\0' || std::atoi(v) != 0;
  }();
  return enabled;
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

// What a device needs looked up once: its properties, the dynamic shared memory limit set per
// kernel, the cluster occupancy answers and the tables per (n_fft, dtype). Never freed (the
// tables are device tensors that must not be destroyed after the CUDA runtime at exit).
struct Tables {
  at::Tensor win, tw, post;
};
struct DeviceCache {
  int smem_optin = 0, cc_major = 0, sm_count = 0;
  std::map<const void*, size_t> smem_set;                       // kernel -> limit set
  std::map<std::tuple<const void*, int, size_t>, bool> fits;    // (kernel, cluster, smem) -> fits
  std::map<std::pair<int, int>, Tables> tables;                 // (n_fft, dtype) -> tables
};

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}

DeviceCache& device_cache(int device) {  // (under cache_mutex)
  static std::vector<DeviceCache*> caches;
  if (caches.size() <= size_t(device)) caches.resize(size_t(device) + 1, nullptr);
  if (caches[device] == nullptr) {
    auto* c = new DeviceCache();
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&c->cc_major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device));
    caches[device] = c;
  }
  return *caches[device];
}

// Raises the kernel's dynamic shared memory limit to smem once (cudaSuccess or the error).
template <typename K>
cudaError_t allow_smem(DeviceCache& dc, K kernel, size_t smem) {
  size_t& set = dc.smem_set[reinterpret_cast<const void*>(kernel)];
  if (smem <= set) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem));
  if (e == cudaSuccess) set = smem;
  return e;
}

template <typename T, Mode M, bool POW2>
void launch(DeviceCache& dc, const StftParams& p, const StftLaunch& l, cudaStream_t stream) {
  auto kernel = stft_magnitude_kernel<T, M, POW2>;
  C10_CUDA_CHECK(allow_smem(dc, kernel, l.smem));
  if constexpr (M == Mode::Cluster) {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12000
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = cluster_config(l.blocks, l.smem, stream, l.cluster, &attr);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p));
#endif
  } else {
    kernel<<<static_cast<unsigned int>(l.blocks), kThreads, l.smem, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Whether a cluster of `cluster` blocks with `smem` bytes each can run on this device (cached).
template <typename T, bool POW2>
bool cluster_fits(DeviceCache& dc, int cluster, size_t smem, cudaStream_t stream) {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12000
  auto kernel = stft_magnitude_kernel<T, Mode::Cluster, POW2>;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), cluster, smem);
  auto it = dc.fits.find(key);
  if (it != dc.fits.end()) return it->second;
  bool fits = false;
  if (allow_smem(dc, kernel, smem) == cudaSuccess) {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = cluster_config(cluster, smem, stream, cluster, &attr);
    int clusters = 0;
    fits = cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0;
  }
  (void)cudaGetLastError();
  dc.fits.emplace(key, fits);
  return fits;
#else
  return false;
#endif
}

// Window and twiddle tables of (n_fft, T) on this device: built once by a small kernel, waited
// for once (so any stream may read them). During graph capture they are built per call.
template <typename T, bool POW2>
Tables get_tables(DeviceCache& dc, const at::Tensor& like, int n, cudaStream_t stream) {
  using T2 = typename Vec2<T>::type;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const auto key = std::make_pair(n, static_cast<int>(like.scalar_type()));
  if (capture == cudaStreamCaptureStatusNone) {
    auto it = dc.tables.find(key);
    if (it != dc.tables.end()) return it->second;
  }
  const int H = n / 2;
  Tables t{at::empty({n}, like.options()), at::empty({POW2 ? H : n, 2}, like.options()),
           at::empty({H + 1, 2}, like.options())};
  stft_tables_kernel<T><<<stft_tables_blocks(n), 256, 0, stream>>>(
      t.win.mutable_data_ptr<T>(), reinterpret_cast<T2*>(t.tw.mutable_data_ptr<T>()),
      reinterpret_cast<T2*>(t.post.mutable_data_ptr<T>()), n, H, POW2);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (capture == cudaStreamCaptureStatusNone) {
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));  // once per (device, n_fft, dtype)
    dc.tables.emplace(key, t);
  }
  return t;
}

template <typename T, bool POW2>
void stft_magnitude_cuda_typed(const at::Tensor& waveforms, int64_t n_fft, int64_t hop,
                               bool normalize, at::Tensor& out) {
  const int64_t B = out.size(0), T_ = out.size(1), F = out.size(2);
  const int n = static_cast<int>(n_fft), H = n / 2;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int device = waveforms.device().index();
  std::lock_guard<std::mutex> lk(cache_mutex());
  DeviceCache& dc = device_cache(device);
  const size_t smem_limit = static_cast<size_t>(dc.smem_optin);
  const Tables tables = get_tables<T, POW2>(dc, waveforms, n, stream);

  StftParams p{};
  p.x = waveforms.const_data_ptr<T>();
  p.out = out.mutable_data_ptr<T>();
  p.sums = nullptr;
  p.win = tables.win.const_data_ptr<T>();
  p.tw = tables.tw.const_data_ptr<T>();
  p.post = tables.post.const_data_ptr<T>();
  p.N = waveforms.size(1);
  p.T = T_;
  p.hop = hop;
  p.n = n;
  p.H = H;
  p.F = static_cast<int>(F);
  p.num_passes = POW2 ? stft_radix_plan(H, p.radix) : 0;

  const int ft = stft_frames_per_buffer<T>(n, p.F, POW2, smem_limit);
  FASTASD_CHECK(ft > 0, "stft_magnitude", "n_fft", "=", n_fft, " needs more shared memory than this GPU has");

  if (normalize && dc.cc_major >= 9 && cluster_enabled()) {
    const StftLaunch l = stft_cluster_launch<T>(B, T_, n, p.F, POW2, ft, smem_limit);
    if (l.smem <= smem_limit && cluster_fits<T, POW2>(dc, l.cluster, l.smem, stream)) {
      StftParams pc = p;
      pc.ft = l.ft;
      pc.fc = l.fc;
      pc.blocks_per_clip = l.blocks_per_clip;
      launch<T, Mode::Cluster, POW2>(dc, pc, l, stream);
      return;
    }
  }

  const StftLaunch l = stft_grid_launch<T>(B, T_, n, p.F, POW2, ft, dc.sm_count, normalize);
  p.ft = l.ft;
  p.fc = l.fc;
  p.blocks_per_clip = l.blocks_per_clip;
  FASTASD_CHECK(l.blocks < (int64_t{1} << 31), "stft_magnitude", "waveforms",
                "is too large for one launch (", B, " clips of ", T_, " frames)");
  if (!normalize) {
    launch<T, Mode::Plain, POW2>(dc, p, l, stream);
    return;
  }
  at::Tensor sums = at::empty({B, F}, waveforms.options().dtype(at::kDouble));
  C10_CUDA_CHECK(cudaMemsetAsync(sums.mutable_data_ptr<double>(), 0, sizeof(double) * B * F, stream));
  p.sums = sums.mutable_data_ptr<double>();
  launch<T, Mode::Sums, POW2>(dc, p, l, stream);
  launch<T, Mode::Apply, POW2>(dc, p, l, stream);
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
#endif  // FASTASD_SIMT_CPU
