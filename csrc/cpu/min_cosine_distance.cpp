// min_cosine_distance on the CPU: for each query, 1 - max cosine similarity over the reference
// rows of its group (see fastasd/reference.py), without building the N x M similarity matrix.
//
//   out[i] = 1 - max_{j in group(i)} <q_i, r_j / max(|r_j|, eps)> / max(|q_i|, eps)
//
// (a positive scale of q_i commutes with the max, so each query is normalized once, after the
// max). The references are normalized once; the queries are bucketed by group (counting sort)
// and processed in register tiles of kQB queries x kRB references of one group, so every loaded
// vector feeds several FMAs. Tiles run in parallel (at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "checks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__NVCC__)
// One copy of the hot loop per x86 ISA level, picked at load time (AVX-512, AVX2+FMA, SSE2).
#define FASTASD_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTASD_TARGET_CLONES
#endif
#define FASTASD_ALWAYS_INLINE inline __attribute__((always_inline))

namespace fastasd {
namespace {

constexpr double kNormEps = 1e-12;  // as torch.nn.functional.normalize
constexpr int kQB = 4;              // queries per register tile
constexpr int kRB = 4;              // references per register tile

template <typename T>
struct Vec64 {  // 64 bytes of T (GCC/Clang vector extension)
  typedef T type __attribute__((vector_size(64)));
  static constexpr int kLanes = 64 / sizeof(T);
};

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FASTASD_HAVE_SHUFFLEVECTOR 1
#endif
#endif

// Sum of the W lanes of v: a tree of halving adds where the compiler has lane shuffles.
template <int W, typename T, typename V>
FASTASD_ALWAYS_INLINE T hsum(V v) {
#ifdef FASTASD_HAVE_SHUFFLEVECTOR
  if constexpr (W == 1) {
    return v[0];
  } else {
    auto halves = [&]<size_t... I>(std::index_sequence<I...>) {
      return __builtin_shufflevector(v, v, I...) + __builtin_shufflevector(v, v, (W / 2 + I)...);
    };
    return hsum<W / 2, T>(halves(std::make_index_sequence<W / 2>{}));
  }
#else
  T s = T(0);
  for (int l = 0; l < W; ++l) s += v[l];
  return s;
#endif
}

// The work of one tile: queries q[0..kQB) (rows of D, all of one group; duplicates allowed)
// against refs[0..nref) (normalized rows of D). Writes the max dot product of each query into
// best[] and its squared norm into sq[].
template <typename T>
FASTASD_ALWAYS_INLINE void tile_max_dot(const T* const* q, const T* refs, int64_t nref, int64_t D,
                                        T* best, T* sq) {
  using V = typename Vec64<T>::type;
  constexpr int VL = Vec64<T>::kLanes;
  const int64_t Dv = D - D % VL;
  {  // squared norms of the queries
    V acc[kQB];
    for (int a = 0; a < kQB; ++a) acc[a] = V{};
    for (int64_t d = 0; d < Dv; d += VL) {
      for (int a = 0; a < kQB; ++a) {
        V qv;
        std::memcpy(&qv, q[a] + d, sizeof(V));
        acc[a] += qv * qv;
      }
    }
    for (int a = 0; a < kQB; ++a) {
      T s = hsum<VL, T>(acc[a]);
      for (int64_t d = Dv; d < D; ++d) s += q[a][d] * q[a][d];
      sq[a] = s;
      best[a] = -std::numeric_limits<T>::infinity();
    }
  }
  for (int64_t j0 = 0; j0 < nref; j0 += kRB) {
    const T* r[kRB];
    for (int b = 0; b < kRB; ++b) r[b] = refs + std::min<int64_t>(j0 + b, nref - 1) * D;
    V acc[kQB][kRB];
    for (int a = 0; a < kQB; ++a)
      for (int b = 0; b < kRB; ++b) acc[a][b] = V{};
    for (int64_t d = 0; d < Dv; d += VL) {
      V qv[kQB], rv[kRB];
      for (int a = 0; a < kQB; ++a) std::memcpy(&qv[a], q[a] + d, sizeof(V));
      for (int b = 0; b < kRB; ++b) std::memcpy(&rv[b], r[b] + d, sizeof(V));
      for (int a = 0; a < kQB; ++a)
        for (int b = 0; b < kRB; ++b) acc[a][b] += qv[a] * rv[b];
    }
    for (int a = 0; a < kQB; ++a) {
      for (int b = 0; b < kRB; ++b) {
        T dot = hsum<VL, T>(acc[a][b]);
        for (int64_t d = Dv; d < D; ++d) dot += q[a][d] * r[b][d];
        best[a] = std::max(best[a], dot);
      }
    }
  }
}

FASTASD_TARGET_CLONES
void tile_max_dot_f32(const float* const* q, const float* refs, int64_t nref, int64_t D, float* best,
                      float* sq) {
  tile_max_dot<float>(q, refs, nref, D, best, sq);
}
FASTASD_TARGET_CLONES
void tile_max_dot_f64(const double* const* q, const double* refs, int64_t nref, int64_t D,
                      double* best, double* sq) {
  tile_max_dot<double>(q, refs, nref, D, best, sq);
}
FASTASD_ALWAYS_INLINE void tile_max_dot_dispatch(const float* const* q, const float* refs,
                                                 int64_t nref, int64_t D, float* best,
                                                 float* sq) {
  tile_max_dot_f32(q, refs, nref, D, best, sq);
}
FASTASD_ALWAYS_INLINE void tile_max_dot_dispatch(const double* const* q, const double* refs,
                                                 int64_t nref, int64_t D, double* best,
                                                 double* sq) {
  tile_max_dot_f64(q, refs, nref, D, best, sq);
}

template <typename T>
double row_norm(const T* x, int64_t D) {
  double s = 0.0;
  for (int64_t d = 0; d < D; ++d) s += double(x[d]) * double(x[d]);
  return std::sqrt(s);
}

template <typename T>
void min_cosine_distance_typed(const at::Tensor& queries, const at::Tensor& refs,
                               const int64_t* group, const std::vector<int64_t>& offsets,
                               at::Tensor& out) {
  const int64_t N = queries.size(0), D = queries.size(1), M = refs.size(0);
  const int64_t G = static_cast<int64_t>(offsets.size()) - 1;
  const T* q = queries.const_data_ptr<T>();
  const T* r = refs.const_data_ptr<T>();
  T* y = out.mutable_data_ptr<T>();

  // Normalized references (M x D, small: the per-section reference sets).
  std::vector<T> rn(static_cast<size_t>(M * D));
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const double inv = 1.0 / std::max(row_norm(r + j * D, D), kNormEps);
      for (int64_t d = 0; d < D; ++d) rn[j * D + d] = static_cast<T>(r[j * D + d] * inv);
    }
  });

  // Queries bucketed by group (stable counting sort), then cut into tiles of <= kQB.
  std::vector<int64_t> start(G + 1, 0), order(N);
  for (int64_t i = 0; i < N; ++i) ++start[group[i] + 1];
  for (int64_t g = 0; g < G; ++g) start[g + 1] += start[g];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N; ++i) order[fill[group[i]]++] = i;
  }
  std::vector<int64_t> tiles;  // first position in `order` of each tile
  for (int64_t g = 0; g < G; ++g)
    for (int64_t p = start[g]; p < start[g + 1]; p += kQB) tiles.push_back(p);
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());

  at::parallel_for(0, n_tiles, 8, [&](int64_t begin, int64_t end) {
    for (int64_t ti = begin; ti < end; ++ti) {
      const int64_t p0 = tiles[ti];
      const int64_t g = group[order[p0]];
      const int64_t count = std::min<int64_t>(kQB, start[g + 1] - p0);
      const T* qp[kQB];
      for (int a = 0; a < kQB; ++a) qp[a] = q + order[p0 + std::min<int64_t>(a, count - 1)] * D;
      if (ti + 1 < end) {  // the next tile's query rows are scattered: prefetch them
        const int64_t pn = tiles[ti + 1], gn = group[order[pn]];
        const int64_t cn = std::min<int64_t>(kQB, start[gn + 1] - pn);
        for (int64_t a = 0; a < cn; ++a) {
          const char* row = reinterpret_cast<const char*>(q + order[pn + a] * D);
          for (int64_t byte = 0; byte < D * int64_t(sizeof(T)); byte += 64) __builtin_prefetch(row + byte);
        }
      }
      T best[kQB], sq[kQB];
      tile_max_dot_dispatch(qp, rn.data() + offsets[g] * D, offsets[g + 1] - offsets[g], D, best, sq);
      for (int a = 0; a < count; ++a) {
        const double norm = std::max(std::sqrt(double(sq[a])), kNormEps);
        y[order[p0 + a]] = static_cast<T>(1.0 - double(best[a]) / norm);
      }
    }
  });
}

}  // namespace

at::Tensor min_cosine_distance_cpu(const at::Tensor& queries, const at::Tensor& refs,
                                   const at::Tensor& query_group, const at::Tensor& ref_offsets) {
  check_min_cosine_distance_args(queries, refs, query_group, ref_offsets);
  const int64_t N = queries.size(0), M = refs.size(0);
  const int64_t* off = ref_offsets.const_data_ptr<int64_t>();
  const int64_t G = ref_offsets.size(0) - 1;
  const int64_t* group = query_group.const_data_ptr<int64_t>();
  check_min_cosine_distance_values(off, G, M, group, N);
  std::vector<int64_t> offsets(off, off + G + 1);
  at::Tensor out = at::empty({N}, queries.options());
  if (N == 0) return out;
  if (queries.scalar_type() == at::kFloat) {
    min_cosine_distance_typed<float>(queries, refs, group, offsets, out);
  } else {
    min_cosine_distance_typed<double>(queries, refs, group, offsets, out);
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastasd, CPU, m) { m.impl("min_cosine_distance", &min_cosine_distance_cpu); }

}  // namespace fastasd
