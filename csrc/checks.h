// Input checks shared by every fastasd operator (CPU and CUDA implementations alike).
//
// Every message starts with "fastasd::<op>: <argument> ..." so that a user sees which operator
// and which argument were wrong. Violations raise c10::ValueError (Python: ValueError), the same
// exception type as fastasd/reference.py raises for bad input.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

// FASTASD_CHECK(cond, op, arg, message parts...): op and arg are C strings, e.g.
//   FASTASD_CHECK(x.dim() == 2, "stft_magnitude", "waveforms", "must be [B, N], got ", x.sizes());
// -> "fastasd::stft_magnitude: waveforms must be [B, N], got [3]".
#define FASTASD_CHECK(cond, op, arg, ...) \
  TORCH_CHECK_VALUE((cond), "fastasd::", op, ": ", arg, " ", __VA_ARGS__)

// Tensor checks: the argument name is passed explicitly (the schema's name, which the user sees).
#define FASTASD_CHECK_DIM(t, n, op, arg, shape)                                               \
  FASTASD_CHECK((t).dim() == (n), op, arg, "must be ", shape, " (", (n), "-D), got shape ", \
                (t).sizes())

#define FASTASD_CHECK_CONTIGUOUS(t, op, arg) \
  FASTASD_CHECK((t).is_contiguous(), op, arg, "must be contiguous (call .contiguous() first)")

#define FASTASD_CHECK_FLOATING(t, op, arg)                                                     \
  FASTASD_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble, op, arg, \
                "must be float32 or float64, got ", (t).scalar_type())

#define FASTASD_CHECK_DTYPE(t, dtype, op, arg) \
  FASTASD_CHECK((t).scalar_type() == (dtype), op, arg, "must be ", (dtype), ", got ", (t).scalar_type())

#define FASTASD_CHECK_SAME_DTYPE(t, ref, op, arg, ref_arg)                                  \
  FASTASD_CHECK((t).scalar_type() == (ref).scalar_type(), op, arg, "must have the dtype of ", \
                ref_arg, " (", (ref).scalar_type(), "), got ", (t).scalar_type())

#define FASTASD_CHECK_SAME_DEVICE(t, ref, op, arg, ref_arg)                                \
  FASTASD_CHECK((t).device() == (ref).device(), op, arg, "must be on the device of ", ref_arg, \
                " (", (ref).device(), "), got ", (t).device())

namespace fastasd {

// Shape, dtype, layout and device checks of stft_magnitude (identical on every device).
// Returns the number of frames T.
inline int64_t check_stft_magnitude_args(const at::Tensor& waveforms, int64_t n_fft, int64_t hop) {
  constexpr const char* op = "stft_magnitude";
  FASTASD_CHECK_DIM(waveforms, 2, op, "waveforms", "[B, N]");
  FASTASD_CHECK_FLOATING(waveforms, op, "waveforms");
  FASTASD_CHECK_CONTIGUOUS(waveforms, op, "waveforms");
  FASTASD_CHECK(n_fft >= 2, op, "n_fft", "must be >= 2, got ", n_fft);
  FASTASD_CHECK(n_fft <= (int64_t{1} << 20), op, "n_fft", "must be <= 2^20, got ", n_fft);
  FASTASD_CHECK(hop >= 1, op, "hop", "must be >= 1, got ", hop);
  const int64_t N = waveforms.size(1);
  FASTASD_CHECK(N >= n_fft, op, "waveforms", "has ", N, " samples per clip, fewer than n_fft=", n_fft);
  return 1 + (N - n_fft) / hop;
}

// Shape, dtype, layout and device checks of min_cosine_distance. The VALUES of query_group and
// ref_offsets are checked by each implementation (on CUDA they live on the GPU).
inline void check_min_cosine_distance_args(const at::Tensor& queries, const at::Tensor& refs,
                                           const at::Tensor& query_group,
                                           const at::Tensor& ref_offsets) {
  constexpr const char* op = "min_cosine_distance";
  FASTASD_CHECK_DIM(queries, 2, op, "queries", "[N, D]");
  FASTASD_CHECK_DIM(refs, 2, op, "refs", "[M, D]");
  FASTASD_CHECK_DIM(query_group, 1, op, "query_group", "[N]");
  FASTASD_CHECK_DIM(ref_offsets, 1, op, "ref_offsets", "[G+1]");
  FASTASD_CHECK_FLOATING(queries, op, "queries");
  FASTASD_CHECK_SAME_DTYPE(refs, queries, op, "refs", "queries");
  FASTASD_CHECK_DTYPE(query_group, at::kLong, op, "query_group");
  FASTASD_CHECK_DTYPE(ref_offsets, at::kLong, op, "ref_offsets");
  FASTASD_CHECK_SAME_DEVICE(refs, queries, op, "refs", "queries");
  FASTASD_CHECK_SAME_DEVICE(query_group, queries, op, "query_group", "queries");
  FASTASD_CHECK_SAME_DEVICE(ref_offsets, queries, op, "ref_offsets", "queries");
  FASTASD_CHECK_CONTIGUOUS(queries, op, "queries");
  FASTASD_CHECK_CONTIGUOUS(refs, op, "refs");
  FASTASD_CHECK_CONTIGUOUS(query_group, op, "query_group");
  FASTASD_CHECK_CONTIGUOUS(ref_offsets, op, "ref_offsets");
  FASTASD_CHECK(refs.size(1) == queries.size(1), op, "refs", "must have D=", queries.size(1),
                " columns like queries, got ", refs.size(1));
  FASTASD_CHECK(query_group.size(0) == queries.size(0), op, "query_group", "must have N=",
                queries.size(0), " entries (one per query), got ", query_group.size(0));
  FASTASD_CHECK(ref_offsets.size(0) >= 2, op, "ref_offsets",
                "must have G+1 >= 2 entries (at least one group), got ", ref_offsets.size(0));
}

// Checks of an optional per-reference argument of min_cosine_distance (ref_scale, ref_shift):
// [M], the dtype and device of refs, contiguous.
inline void check_min_cosine_distance_per_ref(const at::Tensor& refs,
                                              const std::optional<at::Tensor>& t, const char* arg) {
  constexpr const char* op = "min_cosine_distance";
  if (!t.has_value()) return;
  FASTASD_CHECK_DIM(*t, 1, op, arg, "[M]");
  FASTASD_CHECK(t->size(0) == refs.size(0), op, arg, "must have M=", refs.size(0),
                " entries (one per reference row), got ", t->size(0));
  FASTASD_CHECK_SAME_DTYPE(*t, refs, op, arg, "refs");
  FASTASD_CHECK_SAME_DEVICE(*t, refs, op, arg, "refs");
  FASTASD_CHECK_CONTIGUOUS(*t, op, arg);
}

// Value checks of min_cosine_distance on host copies of ref_offsets[G+1] and query_group[N]
// (the CPU implementation, and the CUDA implementation's error path, share them).
inline void check_min_cosine_distance_values(const int64_t* offsets, int64_t G, int64_t M,
                                             const int64_t* group, int64_t N) {
  constexpr const char* op = "min_cosine_distance";
  FASTASD_CHECK(offsets[0] == 0 && offsets[G] == M, op, "ref_offsets",
                "must start at 0 and end at M=", M, ", got ", offsets[0], "..", offsets[G]);
  for (int64_t g = 0; g < G; ++g) {
    FASTASD_CHECK(offsets[g] < offsets[g + 1], op, "ref_offsets",
                  "must be strictly increasing (every group needs at least one reference): group ",
                  g, " has rows ", offsets[g], "..", offsets[g + 1]);
  }
  for (int64_t i = 0; i < N; ++i) {
    FASTASD_CHECK(group[i] >= 0 && group[i] < G, op, "query_group", "values must lie in [0, ", G,
                  "), got ", group[i], " at index ", i);
  }
}

}  // namespace fastasd
