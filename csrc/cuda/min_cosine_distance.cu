// min_cosine_distance on CUDA: for each query, 1 - max cosine similarity over the reference rows
// of its group (math: fastasd/reference.py), without building the N x M similarity matrix.
//
// Queries arrive in any group order, and a group's references (a section: ~16-30 rows) must be
// reused by many queries from fast memory. So a block owns one group g and one slice s of the
// queries: it stages g's references in shared memory (normalized there, in chunks of up to kRC
// rows), scans the group ids of its slice, compacts the queries of group g into a shared list,
// and scores them. Each query is read from global memory exactly once, by one block. Four
// threads share a query (each takes every 4th 16-byte vector of the row, so a warp reads 8 rows
// x 64 contiguous bytes per load), keep one accumulator per staged reference in registers, and
// combine their partial dot products with two xor-shuffles; the max over references follows.
// With a per-reference scale s_j / shift t_j (either may be missing: 1 / 0), each dot product
// becomes s_j * (1 - dot / |q|) + t_j and the minimum (NaN-first) is taken instead.
//
// Value checks (ref_offsets bounds/monotonicity, query_group range) run inside the kernel: bad
// entries give NaN and set bits in a per-device error word. The host never waits for it: each
// call copies the word into pinned host memory after its kernel and records an event, and a
// later call on the device, once that event has completed, raises the same ValueError as the CPU
// op (saying it concerns an earlier call). FASTASD_CUDA_CHECK_VALUES=sync makes every call wait
// and raise at once with the exact message (for debugging); =0 turns the reporting off (the NaNs
// stay). During CUDA graph capture nothing is reported.
//
// NaN contract (fastasd/reference.py): a NaN in a query row gives NaN for that query, a NaN in a
// reference row NaN for every query of its group (nan_max, not max/fmax, which drop NaN).
//
// The device code (kernel + launch geometry) comes first; the host part (torch, CUDA runtime)
// is skipped when the SIMT emulator of the tests compiles this file (FASTASD_SIMT_CPU).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "device_common.h"

namespace fastasd {
namespace {

constexpr int kThreads = 256;
constexpr int kTPQ = 4;              // threads per query
constexpr int kRC = 32;              // references staged per chunk (register accumulators)
constexpr int kCap = 1024;           // group ids scanned per round (list capacity)
constexpr size_t kRefBudget = 32 * 1024;  // shared memory for a reference chunk

constexpr int kErrBounds = 1;  // ref_offsets does not start at 0 / end at M / leaves [0, M]
constexpr int kErrEmpty = 2;   // a group without references
constexpr int kErrGroup = 4;   // a query_group value outside [0, G)

template <typename T>
struct Vec16;  // 16 bytes of T
template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int kWidth = 4;
};
template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int kWidth = 2;
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float dot16(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}
__device__ __forceinline__ double dot16(double2 a, double2 b) { return a.x * b.x + a.y * b.y; }

struct MinCosParams {
  const void* queries;     // [N, D]
  const void* refs;        // [M, D]
  const int64_t* group;    // [N]
  const int64_t* offsets;  // [G+1]
  const void* scale;       // [M] or null (ones)
  const void* shift;       // [M] or null (zeros)
  void* out;               // [N]
  int* err;                // error flags
  int64_t N, M;
  int D, G, slices, rc;    // rc: references per staged chunk (<= kRC)
};

template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) min_cosine_distance_kernel(const MinCosParams p) {
  using V = typename Vec16<T>::type;
  constexpr int W = Vec16<T>::kWidth;
  FASTASD_DYNAMIC_SMEM(smem);
  T* refs_s = reinterpret_cast<T*>(smem);                        // [rc, D], normalized
  T* best_s = reinterpret_cast<T*>(smem + sizeof(T) * size_t(p.rc) * p.D);  // [kCap]
  T* sq_s = best_s + kCap;                                       // [kCap] squared query norms
  int* list_s = reinterpret_cast<int*>(sq_s + kCap);             // [kCap] query offsets in round
  __shared__ int count_s;

  const int D = p.D, G = p.G;
  const int g = blockIdx.x / p.slices, s = blockIdx.x % p.slices;
  const int64_t q_begin = p.N * s / p.slices, q_end = p.N * (s + 1) / p.slices;
  const T* Q = static_cast<const T*>(p.queries);
  T* out = static_cast<T*>(p.out);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T* SC = static_cast<const T*>(p.scale);
  const T* SH = static_cast<const T*>(p.shift);
  const bool scaled = SC != nullptr || SH != nullptr;

  const int64_t r0 = p.offsets[g], r1 = p.offsets[g + 1];
  int bad = 0;
  if (r0 < 0 || r1 > p.M || (g == 0 && r0 != 0) || (g == G - 1 && r1 != p.M)) bad |= kErrBounds;
  if (r0 >= r1) bad |= kErrEmpty;
  if (bad && s == 0 && threadIdx.x == 0) atomicOr(p.err, bad);
  const int64_t nref = bad ? 0 : r1 - r0;
  const int nchunks = static_cast<int>((nref + p.rc - 1) / p.rc);

  const int lane = threadIdx.x & 31, u = threadIdx.x % kTPQ, slot = threadIdx.x / kTPQ;
  const unsigned quad = 0xFu << (lane & ~(kTPQ - 1));  // the 4 lanes sharing a query
  constexpr int kSlots = kThreads / kTPQ;
  int loaded = -1;  // staged chunk

  for (int64_t base = q_begin; base < q_end; base += kCap) {
    // 1. Compact the queries of group g among ids [base, base + kCap) of the slice.
    if (threadIdx.x == 0) count_s = 0;
    __syncthreads();
    const int64_t lim = min64(q_end, base + kCap);
    for (int64_t i = base + threadIdx.x; i < lim; i += blockDim.x) {
      const int64_t gi = p.group[i];
      if (g == 0 && (gi < 0 || gi >= G)) {  // one block per slice checks the range
        out[i] = nan;
        atomicOr(p.err, kErrGroup);
      }
      if (gi == g) {
        if (bad) {
          out[i] = nan;
        } else {
          list_s[atomicAdd(&count_s, 1)] = static_cast<int>(i - base);
        }
      }
    }
    __syncthreads();
    const int count = count_s;
    if (count == 0) continue;

    // 2. Score them against each chunk of g's references.
    for (int ch = 0; ch < nchunks; ++ch) {
      const int rc = static_cast<int>(min64(p.rc, nref - int64_t(ch) * p.rc));
      if (loaded != ch) {
        __syncthreads();  // nobody still reads the previous chunk
        const T* R = static_cast<const T*>(p.refs) + (r0 + int64_t(ch) * p.rc) * D;
        for (int i = threadIdx.x; i < rc * D; i += blockDim.x) refs_s[i] = R[i];
        __syncthreads();
        for (int j = threadIdx.x / 32; j < rc; j += blockDim.x / 32) {  // a warp per row
          T ss = T(0);
          for (int d = lane; d < D; d += 32) ss += refs_s[j * D + d] * refs_s[j * D + d];
#pragma unroll
          for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
          const T inv = T(1) / nan_max(sqrt(ss), T(1e-12));
          for (int d = lane; d < D; d += 32) refs_s[j * D + d] *= inv;
        }
        __syncthreads();
        loaded = ch;
      }
      for (int e0 = 0; e0 < count; e0 += kSlots) {
        const int e = e0 + slot;
        if (e < count) {  // the 4 lanes of a slot agree on this branch
          const T* qrow = Q + (base + list_s[e]) * D;
          T acc[kRC];
#pragma unroll
          for (int j = 0; j < kRC; ++j) acc[j] = T(0);
          T sq = T(0);
          if constexpr (VEC) {
            const V* q4 = reinterpret_cast<const V*>(qrow);
            const V* r4 = reinterpret_cast<const V*>(refs_s);
            const int Dv = D / W;
            for (int dv = u; dv < Dv; dv += kTPQ) {
              const V qv = q4[dv];
              sq += dot16(qv, qv);
#pragma unroll
              for (int j = 0; j < kRC; ++j) {
                if (j < rc) acc[j] += dot16(qv, r4[j * Dv + dv]);
              }
            }
          } else {
            for (int d = u; d < D; d += kTPQ) {
              const T qv = qrow[d];
              sq += qv * qv;
#pragma unroll
              for (int j = 0; j < kRC; ++j) {
                if (j < rc) acc[j] += qv * refs_s[j * D + d];
              }
            }
          }
          sq += __shfl_xor_sync(quad, sq, 1);
          sq += __shfl_xor_sync(quad, sq, 2);
          // scaled: min_j s_j * (1 - dot / |q|) + t_j, NaN-first (a NaN wins every comparison)
          T inv = T(0);
          if (scaled) {
            inv = T(1) / nan_max(sqrt(sq), T(1e-12));
          }
          const int64_t jr = r0 + int64_t(ch) * p.rc;
          T m = (scaled ? 1 : -1) * std::numeric_limits<T>::infinity();
#pragma unroll
          for (int j = 0; j < kRC; ++j) {
            if (j < rc) {
              T a = acc[j];
              a += __shfl_xor_sync(quad, a, 1);
              a += __shfl_xor_sync(quad, a, 2);
              if (scaled) {
                const T v = (SC ? SC[jr + j] : T(1)) * (T(1) - a * inv) + (SH ? SH[jr + j] : T(0));
                m = nan_min(m, v);
              } else {
                m = nan_max(m, a);
              }
            }
          }
          if (u == 0) {
            if (ch == 0) {
              best_s[e] = m;
            } else {
              best_s[e] = scaled ? nan_min(best_s[e], m) : nan_max(best_s[e], m);
            }
            if (!scaled) sq_s[e] = sq;  // the scaled path folded the norm in above
          }
        }
      }
    }
    __syncthreads();
    // 3. Distances of this round's queries.
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      if (scaled) {
        out[base + list_s[e]] = best_s[e];
      } else {
        const T norm = nan_max(sqrt(sq_s[e]), T(1e-12));
        out[base + list_s[e]] = T(1) - best_s[e] / norm;
      }
    }
    __syncthreads();  // list_s/best_s are reused by the next round
  }
}

// Launch geometry (the launcher and the emulated tests both use it). sm_count: the device's
// multiprocessors; aligned16: the queries start on a 16-byte boundary.
struct MinCosGeometry {
  int slices;      // query slices per group (blocks per group)
  int rc;          // references per staged chunk (<= kRC)
  bool vec;        // 16-byte loads of the query rows
  int64_t blocks;  // G * slices
  size_t smem;     // dynamic shared memory bytes
};

__host__ inline MinCosGeometry min_cos_geometry(int64_t N, int64_t D, int64_t G, size_t elem, bool aligned16,
                                                int sm_count) {
  MinCosGeometry geo{};
  // Slices per group: enough blocks to fill the GPU twice, at least ~64 ids per slice.
  const int64_t want = (2 * int64_t(sm_count) + G - 1) / G;
  geo.slices = static_cast<int>(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, N / 64)));
  geo.rc = static_cast<int>(std::clamp<int64_t>(
      static_cast<int64_t>(kRefBudget / std::max<size_t>(1, size_t(D) * elem)), 1, kRC));
  geo.vec = D % int64_t(16 / elem) == 0 && aligned16;
  geo.blocks = G * geo.slices;
  geo.smem = elem * size_t(geo.rc) * size_t(D) + kCap * (2 * elem + sizeof(int));
  return geo;
}

}  // namespace
}  // namespace fastasd

#ifndef FASTASD_SIMT_CPU
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "checks.h"

namespace fastasd {
namespace {

enum class CheckMode { Off, Lazy, Sync };

CheckMode check_mode() {  // FASTASD_CUDA_CHECK_VALUES, read once
  static const CheckMode mode = [] {
    const char* v = std::getenv("FASTASD_CUDA_CHECK_VALUES");
    if (v == nullptr || *v == '\0' || std::strcmp(v, "lazy") == 0 || std::strcmp(v, "1") == 0) return CheckMode::Lazy;
    if (std::strcmp(v, "sync") == 0) return CheckMode::Sync;
    return CheckMode::Off;
  }();
  return mode;
}

// Per device: the error word the kernels OR into, its pinned host copy, the event of the last
// copy, and the device properties the launch needs. Created once, never freed.
struct DeviceState {
  std::mutex m;
  int* flags_dev = nullptr;
  int* flags_host = nullptr;
  cudaEvent_t copied = nullptr;
  bool pending = false;
  int sm_count = 0, smem_optin = 0;
  size_t smem_set[2][2] = {};  // the dynamic smem limit set per (dtype, vec) kernel
};

DeviceState& device_state(int device) {
  static std::mutex m;
  static std::vector<DeviceState*> states;
  std::lock_guard<std::mutex> lk(m);
  if (states.size() <= size_t(device)) states.resize(size_t(device) + 1, nullptr);
  if (states[device] == nullptr) {
    auto* st = new DeviceState();
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&st->sm_count, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&st->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaMalloc(&st->flags_dev, sizeof(int)));
    C10_CUDA_CHECK(cudaMemset(st->flags_dev, 0, sizeof(int)));
    C10_CUDA_CHECK(cudaHostAlloc(&st->flags_host, sizeof(int), cudaHostAllocDefault));
    *st->flags_host = 0;
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&st->copied, cudaEventDisableTiming));
    states[device] = st;
  }
  return *states[device];
}

// The ValueError for error bits found by the device-side checks (without the exact index).
[[noreturn]] void raise_flags(int flags, const char* when) {
  constexpr const char* op = "min_cosine_distance";
  FASTASD_CHECK(!(flags & (kErrBounds | kErrEmpty)), op, "ref_offsets",
                "must start at 0, end at M and be strictly increasing (every group needs at least one "
                "reference); a device-side check failed ", when);
  FASTASD_CHECK(false, op, "query_group", "values must lie in [0, G); a device-side check failed ", when);
  TORCH_CHECK(false, "unreachable");
}

template <typename T>
void launch(const MinCosParams& p, const MinCosGeometry& geo, cudaStream_t stream, DeviceState& st) {
  FASTASD_CHECK(geo.smem <= size_t(st.smem_optin), "min_cosine_distance", "queries",
                "has D=", p.D, " columns, too many for one reference row in shared memory");
  auto kernel = geo.vec ? min_cosine_distance_kernel<T, true> : min_cosine_distance_kernel<T, false>;
  size_t& set = st.smem_set[sizeof(T) == 8][geo.vec];  // (under st.m)
  if (geo.smem > set) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(geo.smem)));
    set = geo.smem;
  }
  kernel<<<static_cast<unsigned int>(geo.blocks), kThreads, geo.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor min_cosine_distance_cuda(const at::Tensor& queries, const at::Tensor& refs,
                                    const at::Tensor& query_group, const at::Tensor& ref_offsets,
                                    const std::optional<at::Tensor>& ref_scale,
                                    const std::optional<at::Tensor>& ref_shift) {
  check_min_cosine_distance_args(queries, refs, query_group, ref_offsets);
  check_min_cosine_distance_per_ref(refs, ref_scale, "ref_scale");
  check_min_cosine_distance_per_ref(refs, ref_shift, "ref_shift");
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t N = queries.size(0), D = queries.size(1), M = refs.size(0);
  const int64_t G = ref_offsets.size(0) - 1;
  FASTASD_CHECK(D < (int64_t{1} << 24), "min_cosine_distance", "queries", "has too many columns: ", D);
  FASTASD_CHECK(G < (int64_t{1} << 24), "min_cosine_distance", "ref_offsets", "has too many groups: ", G);
  FASTASD_CHECK(N < (int64_t{1} << 62), "min_cosine_distance", "queries", "has too many rows: ", N);
  at::Tensor out = at::empty({N}, queries.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int device = queries.device().index();
  DeviceState& st = device_state(device);
  std::lock_guard<std::mutex> lk(st.m);

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const CheckMode mode = capture == cudaStreamCaptureStatusNone ? check_mode() : CheckMode::Off;
  // An earlier call's device-side checks, if its copy has arrived (never waits).
  if (mode != CheckMode::Off && st.pending && cudaEventQuery(st.copied) == cudaSuccess) {
    st.pending = false;
    const int flags = *st.flags_host;
    if (flags != 0) {
      *st.flags_host = 0;
      C10_CUDA_CHECK(cudaMemsetAsync(st.flags_dev, 0, sizeof(int), stream));
      raise_flags(flags, "in an earlier call on this device (reported late to avoid a host sync; its "
                         "queries got NaN; FASTASD_CUDA_CHECK_VALUES=sync raises at the faulty call)");
    }
  }
  (void)cudaGetLastError();  // cudaEventQuery's cudaErrorNotReady is not an error

  MinCosParams p{};
  p.queries = queries.const_data_ptr();
  p.refs = refs.const_data_ptr();
  p.group = query_group.const_data_ptr<int64_t>();
  p.offsets = ref_offsets.const_data_ptr<int64_t>();
  p.scale = ref_scale.has_value() ? ref_scale->const_data_ptr() : nullptr;
  p.shift = ref_shift.has_value() ? ref_shift->const_data_ptr() : nullptr;
  p.out = out.mutable_data_ptr();
  p.err = st.flags_dev;
  p.N = N;
  p.M = M;
  p.D = static_cast<int>(D);
  p.G = static_cast<int>(G);
  const MinCosGeometry geo =
      min_cos_geometry(N, D, G, queries.element_size(),
                       reinterpret_cast<uintptr_t>(queries.const_data_ptr()) % 16 == 0, st.sm_count);
  FASTASD_CHECK(geo.blocks < (int64_t{1} << 31), "min_cosine_distance", "ref_offsets",
                "has too many groups for one launch: ", G);
  p.slices = geo.slices;
  p.rc = geo.rc;
  // Launched for an empty batch too: its blocks still check ref_offsets.
  if (queries.scalar_type() == at::kFloat) {
    launch<float>(p, geo, stream, st);
  } else {
    launch<double>(p, geo, stream, st);
  }
  if (mode == CheckMode::Off) return out;

  C10_CUDA_CHECK(cudaMemcpyAsync(st.flags_host, st.flags_dev, sizeof(int), cudaMemcpyDeviceToHost, stream));
  if (mode == CheckMode::Lazy) {
    C10_CUDA_CHECK(cudaEventRecord(st.copied, stream));
    st.pending = true;
    return out;
  }
  // Sync: wait, and on an error raise the exact message from host copies of the index tensors.
  C10_CUDA_CHECK(cudaStreamSynchronize(stream));
  const int flags = *st.flags_host;
  if (flags != 0) {
    *st.flags_host = 0;
    C10_CUDA_CHECK(cudaMemsetAsync(st.flags_dev, 0, sizeof(int), stream));
    std::vector<int64_t> off(G + 1), grp(N);
    C10_CUDA_CHECK(cudaMemcpyAsync(off.data(), ref_offsets.const_data_ptr<int64_t>(), sizeof(int64_t) * (G + 1),
                                   cudaMemcpyDeviceToHost, stream));
    if (N > 0) {
      C10_CUDA_CHECK(cudaMemcpyAsync(grp.data(), query_group.const_data_ptr<int64_t>(), sizeof(int64_t) * N,
                                     cudaMemcpyDeviceToHost, stream));
    }
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    check_min_cosine_distance_values(off.data(), G, M, grp.data(), N);
    raise_flags(flags, "in this call");
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastasd, CUDA, m) { m.impl("min_cosine_distance", &min_cosine_distance_cuda); }

}  // namespace fastasd
#endif  // FASTASD_SIMT_CPU
