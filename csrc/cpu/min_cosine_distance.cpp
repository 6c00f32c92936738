// min_cosine_distance on the CPU: for each query, 1 - max cosine similarity over the reference
// rows of its group (see fastasd/reference.py), without building the N x M similarity matrix.
//
//   out[i] = 1 - max_{j in group(i)} <q_i, r_j / max(|r_j|, eps)> / max(|q_i|, eps)
//
// NaN contract (fastasd/reference.py): a NaN in a query row gives NaN for that query, a NaN in a
// reference row NaN for every query of its group (the maxima below let NaN win).
//
// (a positive scale of q_i commutes with the max, so each query is normalized once, after the
// max). With a per-reference scale s_j and shift t_j,
//
//   out[i] = min_{j in group(i)} s_j * (1 - <q_i, r_j / max(|r_j|, eps)> / max(|q_i|, eps)) + t_j
//
// no longer commutes with the normalization: each register tile first computes its queries'
// inverse norms, and each lane turns its dot product into s_j * (1 - dot * inv) + t_j before the
// lane-wise minimum (the scaled path; s and t padded per group like the references). Both paths
// fold NaN-first (a NaN lane wins every comparison), so NaN in a query, a reference, a scale or a
// shift reaches the result. The references of each group are normalized once and stored transposed, [D, Rp], with
// Rp = R rounded up to 64 bytes and zero padding. A register tile of Q queries of one group
// broadcasts q[a][d] and FMAs it against reference row d, so each query's accumulators hold its
// dot products with a chunk of references in lanes: no per-pair horizontal sum, one lane max
// per query and chunk (padding lanes set to -inf first). Large groups loop over chunks of lanes.
// The queries are bucketed by group (counting sort) and cut into tiles of <= kTile; tiles run in
// parallel (at::parallel_for). The register tile shape follows the x86 ISA level (AVX-512,
// AVX2+FMA, SSE2), picked at load time by function multiversioning.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__NVCC__)
#define FASTASD_X86_MULTIVERSION 1
#define FASTASD_TARGET(isa) __attribute__((target(isa)))
#else
#define FASTASD_TARGET(isa)
#endif
#define FASTASD_ALWAYS_INLINE inline __attribute__((always_inline))

namespace fastasd {
namespace {

constexpr double kNormEps = 1e-12;  // as torch.nn.functional.normalize
constexpr int kTile = 48;           // queries per parallel task (a multiple of every Q below)
constexpr int kMaxQ = 12;           // the largest Q below
constexpr int kPadBytes = 64;       // Rp * sizeof(T) is a multiple of this (widest vector)

template <typename T, int VB>
struct Vec {  // VB bytes of T, and of same-size integers (GCC/Clang vector extension)
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T type __attribute__((vector_size(VB)));
  typedef I itype __attribute__((vector_size(VB)));
  static constexpr int kLanes = VB / sizeof(T);
};

// Dot products of the Q queries q[a] (rows of D) with NV vectors of reference lanes starting
// at rt (lane 0 of the chunk in a [D, Rp] block); lanes >= valid are padding. Plain path: folds
// the lane-wise maxima of the dot products into run[a]. Scaled path: folds the lane-wise minima
// of sc * (1 - dot * inv[a]) + sh (sc, sh: the chunk's scales and shifts) into run[a]. Unless pf
// is null, prefetches the rows pf[0..Q) meanwhile, one cache line per row and line of q (all at
// once would stall on the line fill buffers).
template <typename T, int VB, int Q, int NV, bool kScaled>
FASTASD_ALWAYS_INLINE void chunk_fold(const T* const* q, const T* const* pf, const T* rt,
                                      int64_t Rp, int64_t D, int64_t valid,
                                      typename Vec<T, VB>::type* run, const T* sc, const T* sh,
                                      const T* inv) {
  using V = typename Vec<T, VB>::type;
  using VI = typename Vec<T, VB>::itype;
  using I = typename Vec<T, VB>::I;
  constexpr int VL = Vec<T, VB>::kLanes;
  V acc[Q][NV];
  for (int a = 0; a < Q; ++a)
    for (int v = 0; v < NV; ++v) acc[a][v] = V{};
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t d0 = 0; d0 < D; d0 += kLine) {
    if (pf != nullptr)
      for (int a = 0; a < Q; ++a) __builtin_prefetch(pf[a] + d0, 0, 3);
    const int64_t d1 = std::min(D, d0 + kLine);
    for (int64_t d = d0; d < d1; ++d) {
      V rv[NV];
      for (int v = 0; v < NV; ++v) std::memcpy(&rv[v], rt + d * Rp + v * VL, sizeof(V));
      for (int a = 0; a < Q; ++a) {
        const T s = q[a][d];
        for (int v = 0; v < NV; ++v) acc[a][v] += s * rv[v];
      }
    }
  }
  if constexpr (kScaled) {
    for (int v = 0; v < NV; ++v) {
      V s, t;
      std::memcpy(&s, sc + v * VL, sizeof(V));
      std::memcpy(&t, sh + v * VL, sizeof(V));
      for (int a = 0; a < Q; ++a) acc[a][v] = s * (T(1) - acc[a][v] * inv[a]) + t;
    }
  }
  // Padding lanes hold 0 (or NaN for a non-finite query), never a valid extremum: -inf them
  // (+inf on the scaled path, which takes the minimum).
  const V pad = V{} + (kScaled ? 1 : -1) * std::numeric_limits<T>::infinity();
  VI lane;
  for (int l = 0; l < VL; ++l) lane[l] = l;
  for (int v = 0; v < NV; ++v) {
    if (valid - v * VL < VL) {
      const VI keep = lane < (VI{} + static_cast<I>(valid - v * VL));
      for (int a = 0; a < Q; ++a) acc[a][v] = keep ? acc[a][v] : pad;
    }
  }
  // NaN-first: a NaN lane replaces run, and a NaN in run is never replaced.
  for (int a = 0; a < Q; ++a)
    for (int v = 0; v < NV; ++v) {
      const V x = acc[a][v];
      const VI take = ((kScaled ? x < run[a] : x > run[a]) | (x != x));
      run[a] = take ? x : run[a];
    }
}

// NaN-first max / min of two scalars (as the vector fold above).
template <typename T>
FASTASD_ALWAYS_INLINE T nan_max(T m, T x) { return (x > m || x != x) ? x : m; }
template <typename T>
FASTASD_ALWAYS_INLINE T nan_min(T m, T x) { return (x < m || x != x) ? x : m; }

template <typename T, int VB>
FASTASD_ALWAYS_INLINE T squared_norm(const T* x, int64_t D) {
  using V = typename Vec<T, VB>::type;
  constexpr int VL = Vec<T, VB>::kLanes;
  V acc = V{};
  int64_t d = 0;
  for (; d + VL <= D; d += VL) {
    V xv;
    std::memcpy(&xv, x + d, sizeof(V));
    acc += xv * xv;
  }
  T s = T(0);
  for (int l = 0; l < VL; ++l) s += acc[l];
  for (; d < D; ++d) s += x[d] * x[d];
  return s;
}

// The work of one task: queries rows[0..n) (all of one group) against the group's transposed
// references rt ([D, Rp], R valid lanes). Plain path: writes each query's max dot product into
// best[] and its squared norm into sq[]. Scaled path (sp, tp: the group's scales and shifts,
// padded to Rp): writes each query's distance min_j sp[j] * (1 - cos) + tp[j] into best[].
// Q queries per register tile (a partial tile repeats its last query), NV vectors of reference
// lanes per chunk. rows[n..n+Q) must be readable pointers (the rows that follow, to prefetch).
template <typename T, int VB, int Q, int NV, bool kScaled>
FASTASD_ALWAYS_INLINE void tile_fold(const T* const* rows, int n, const T* rt, int64_t R,
                                     int64_t Rp, int64_t D, T* best, T* sq, const T* sp,
                                     const T* tp) {
  using V = typename Vec<T, VB>::type;
  constexpr int VL = Vec<T, VB>::kLanes;
  constexpr T kStart = (kScaled ? 1 : -1) * std::numeric_limits<T>::infinity();
  for (int a0 = 0; a0 < n; a0 += Q) {
    const T* q[Q];
    for (int a = 0; a < Q; ++a) q[a] = rows[std::min(a0 + a, n - 1)];
    T inv[Q];
    if constexpr (kScaled) {
      for (int a = 0; a < Q; ++a) {
        const double norm = std::sqrt(double(squared_norm<T, VB>(q[a], D)));
        inv[a] = static_cast<T>(1.0 / std::max(norm, kNormEps));  // NaN stays NaN
      }
    }
    V run[Q];
    for (int a = 0; a < Q; ++a) run[a] = V{} + kStart;
    const T* const* pf = rows + a0 + Q;  // the next register tile's rows, for the first chunk
    int64_t c = 0;
    for (; c + NV * VL <= Rp; c += NV * VL, pf = nullptr)
      chunk_fold<T, VB, Q, NV, kScaled>(q, pf, rt + c, Rp, D, R - c, run, kScaled ? sp + c : sp,
                                        kScaled ? tp + c : tp, inv);
    for (; c < Rp; c += VL, pf = nullptr)
      chunk_fold<T, VB, Q, 1, kScaled>(q, pf, rt + c, Rp, D, R - c, run, kScaled ? sp + c : sp,
                                       kScaled ? tp + c : tp, inv);
    for (int a = 0; a < Q && a0 + a < n; ++a) {
      T m = run[a][0];
      for (int l = 1; l < VL; ++l) m = kScaled ? nan_min(m, run[a][l]) : nan_max(m, run[a][l]);
      best[a0 + a] = m;
      if constexpr (!kScaled) sq[a0 + a] = squared_norm<T, VB>(q[a], D);
    }
  }
}

// The normalized references of one group, rg (R rows of D), transposed into dst ([D, Rp],
// padding lanes zero).
template <typename T, int VB>
FASTASD_ALWAYS_INLINE void transpose_refs(const T* rg, int64_t R, int64_t Rp, int64_t D, T* dst) {
  constexpr int kB = 16;  // rows per pass: kB read streams, kB contiguous lanes written per d
  for (int64_t j0 = 0; j0 < R; j0 += kB) {
    const int64_t nb = std::min<int64_t>(kB, R - j0);
    T inv[kB];
    for (int64_t j = 0; j < nb; ++j) {
      const double norm = std::sqrt(double(squared_norm<T, VB>(rg + (j0 + j) * D, D)));
      inv[j] = static_cast<T>(1.0 / std::max(norm, kNormEps));
    }
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = 0; j < nb; ++j) dst[d * Rp + j0 + j] = rg[(j0 + j) * D + d] * inv[j];
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = R; j < Rp; ++j) dst[d * Rp + j] = T(0);
}

// One copy per x86 ISA level, each with its own register tile: AVX-512 (32 zmm: 12 x 2
// accumulators), AVX2 (16 ymm: 6 x 2), SSE2 (16 xmm: 2 x 4).
#define FASTASD_ISA_VERSION(isa, T, VB, Q, NV)                                                   \
  FASTASD_TARGET(isa)                                                                           \
  void tile_fold_isa(const T* const* rows, int n, const T* rt, int64_t R, int64_t Rp,            \
                     int64_t D, T* best, T* sq, const T* sp, const T* tp) {                     \
    if (sp == nullptr) {                                                                        \
      tile_fold<T, VB, Q, NV, false>(rows, n, rt, R, Rp, D, best, sq, sp, tp);                  \
    } else {                                                                                    \
      tile_fold<T, VB, Q, NV, true>(rows, n, rt, R, Rp, D, best, sq, sp, tp);                   \
    }                                                                                           \
  }                                                                                             \
  FASTASD_TARGET(isa)                                                                           \
  void transpose_refs_isa(const T* rg, int64_t R, int64_t Rp, int64_t D, T* dst) {              \
    transpose_refs<T, VB>(rg, R, Rp, D, dst);                                                   \
  }
FASTASD_ISA_VERSION("default", float, 16, 2, 4)
FASTASD_ISA_VERSION("default", double, 16, 2, 4)
#ifdef FASTASD_X86_MULTIVERSION
FASTASD_ISA_VERSION("arch=x86-64-v3", float, 32, 6, 2)
FASTASD_ISA_VERSION("arch=x86-64-v3", double, 32, 6, 2)
FASTASD_ISA_VERSION("arch=x86-64-v4", float, 64, 12, 2)
FASTASD_ISA_VERSION("arch=x86-64-v4", double, 64, 12, 2)
#endif

// scale / shift: [M] or undefined (the plain path when both are undefined).
template <typename T>
void min_cosine_distance_typed(const at::Tensor& queries, const at::Tensor& refs,
                               const int64_t* group, const std::vector<int64_t>& offsets,
                               const at::Tensor& scale, const at::Tensor& shift, at::Tensor& out) {
  const int64_t N = queries.size(0), D = queries.size(1);
  const int64_t G = static_cast<int64_t>(offsets.size()) - 1;
  const T* q = queries.const_data_ptr<T>();
  const T* r = refs.const_data_ptr<T>();
  T* y = out.mutable_data_ptr<T>();

  // Queries bucketed by group (stable counting sort), then cut into tiles of <= kTile.
  std::vector<int64_t> start(G + 1, 0), order(N);
  for (int64_t i = 0; i < N; ++i) ++start[group[i] + 1];
  for (int64_t g = 0; g < G; ++g) start[g + 1] += start[g];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N; ++i) order[fill[group[i]]++] = i;
  }
  std::vector<int64_t> tiles;  // first position in `order` of each tile
  for (int64_t g = 0; g < G; ++g)
    for (int64_t p = start[g]; p < start[g + 1]; p += kTile) tiles.push_back(p);
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());

  // Normalized references, transposed per group: [D, Rp] blocks, padding lanes zero. Groups
  // without queries are skipped.
  constexpr int64_t kPad = kPadBytes / sizeof(T);
  std::vector<int64_t> rp(G), roff(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    rp[g] = (offsets[g + 1] - offsets[g] + kPad - 1) / kPad * kPad;
    roff[g + 1] = roff[g] + (start[g + 1] > start[g] ? D * rp[g] : 0);
  }
  // A tensor, for the allocator's 64-byte alignment of the vector loads.
  at::Tensor rt_buf = at::empty({roff[G]}, queries.options());
  T* rt = rt_buf.mutable_data_ptr<T>();
  at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      if (start[g + 1] > start[g])
        transpose_refs_isa(r + offsets[g] * D, offsets[g + 1] - offsets[g], rp[g], D, rt + roff[g]);
  });

  // Scaled path: each group's scales and shifts, padded to Rp lanes (scale 1 and shift 0 where
  // a tensor is missing), at soff[g] (scales) and soff[g] + rp[g] (shifts).
  const bool scaled = scale.defined() || shift.defined();
  std::vector<int64_t> soff(G + 1, 0);
  at::Tensor st_buf;
  T* st = nullptr;
  if (scaled) {
    for (int64_t g = 0; g < G; ++g) soff[g + 1] = soff[g] + (start[g + 1] > start[g] ? 2 * rp[g] : 0);
    st_buf = at::empty({soff[G]}, queries.options());
    st = st_buf.mutable_data_ptr<T>();
    const T* sc = scale.defined() ? scale.const_data_ptr<T>() : nullptr;
    const T* sh = shift.defined() ? shift.const_data_ptr<T>() : nullptr;
    for (int64_t g = 0; g < G; ++g) {
      if (start[g + 1] == start[g]) continue;
      T* sp = st + soff[g];
      T* tp = sp + rp[g];
      const int64_t R = offsets[g + 1] - offsets[g];
      for (int64_t j = 0; j < rp[g]; ++j) {
        sp[j] = j < R ? (sc ? sc[offsets[g] + j] : T(1)) : T(0);
        tp[j] = j < R ? (sh ? sh[offsets[g] + j] : T(0)) : T(0);
      }
    }
  }

  at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ti = begin; ti < end; ++ti) {
      const int64_t p0 = tiles[ti];
      const int64_t g = group[order[p0]];
      const int count = static_cast<int>(std::min<int64_t>(kTile, start[g + 1] - p0));
      // This tile's query rows, then (to prefetch) the first rows of the next tile of this task
      // (positions in `order` run on across tiles), or repeats of the last row.
      const T* rows[kTile + kMaxQ];
      const int64_t p_end = ti + 1 < end ? start[G] : p0 + count;
      for (int a = 0; a < count + kMaxQ; ++a)
        rows[a] = q + order[std::min<int64_t>(p0 + a, p_end - 1)] * D;
      T best[kTile], sq[kTile];
      const T* sp = scaled ? st + soff[g] : nullptr;
      tile_fold_isa(rows, count, rt + roff[g], offsets[g + 1] - offsets[g], rp[g], D, best, sq, sp,
                    scaled ? sp + rp[g] : nullptr);
      if (scaled) {
        for (int a = 0; a < count; ++a) y[order[p0 + a]] = best[a];
        continue;
      }
      for (int a = 0; a < count; ++a) {
        const double norm = std::max(std::sqrt(double(sq[a])), kNormEps);
        y[order[p0 + a]] = static_cast<T>(1.0 - double(best[a]) / norm);
      }
    }
  });
}

}  // namespace

at::Tensor min_cosine_distance_cpu(const at::Tensor& queries, const at::Tensor& refs,
                                   const at::Tensor& query_group, const at::Tensor& ref_offsets,
                                   const std::optional<at::Tensor>& ref_scale,
                                   const std::optional<at::Tensor>& ref_shift) {
  check_min_cosine_distance_args(queries, refs, query_group, ref_offsets);
  check_min_cosine_distance_per_ref(refs, ref_scale, "ref_scale");
  check_min_cosine_distance_per_ref(refs, ref_shift, "ref_shift");
  const at::Tensor scale = ref_scale.has_value() ? *ref_scale : at::Tensor();
  const at::Tensor shift = ref_shift.has_value() ? *ref_shift : at::Tensor();
  const int64_t N = queries.size(0), M = refs.size(0);
  const int64_t* off = ref_offsets.const_data_ptr<int64_t>();
  const int64_t G = ref_offsets.size(0) - 1;
  const int64_t* group = query_group.const_data_ptr<int64_t>();
  check_min_cosine_distance_values(off, G, M, group, N);
  std::vector<int64_t> offsets(off, off + G + 1);
  at::Tensor out = at::empty({N}, queries.options());
  if (N == 0) return out;
  if (queries.scalar_type() == at::kFloat) {
    min_cosine_distance_typed<float>(queries, refs, group, offsets, scale, shift, out);
  } else {
    min_cosine_distance_typed<double>(queries, refs, group, offsets, scale, shift, out);
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastasd, CPU, m) { m.impl("min_cosine_distance", &min_cosine_distance_cpu); }

}  // namespace fastasd
