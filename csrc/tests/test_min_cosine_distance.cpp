// C++ unit tests (ctest) of the min_cosine_distance CPU kernel: against a direct float64 loop
// written here (plain, and with a per-reference scale and shift), through the dispatcher, and
// for bad input (names op and argument).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace fastasd {
at::Tensor min_cosine_distance_cpu(const at::Tensor& queries, const at::Tensor& refs,
                                   const at::Tensor& query_group, const at::Tensor& ref_offsets,
                                   const std::optional<at::Tensor>& ref_scale,
                                   const std::optional<at::Tensor>& ref_shift);
}

static double norm(const double* x, int64_t D) {
  double s = 0;
  for (int64_t d = 0; d < D; ++d) s += x[d] * x[d];
  return std::max(std::sqrt(s), 1e-12);
}

// scaled: a random positive scale and a random shift per reference (else the plain op).
static void compare(int64_t N, int64_t D, const std::vector<int64_t>& sizes, at::ScalarType dtype,
                    bool scaled = false) {
  const int64_t G = sizes.size();
  std::vector<int64_t> off(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) off[g + 1] = off[g] + sizes[g];
  const int64_t M = off[G];
  at::Tensor q = at::randn({N, D}, at::kDouble), r = at::randn({M, D}, at::kDouble);
  at::Tensor grp = at::randint(G, {N}, at::kLong);
  at::Tensor offs = at::tensor(off, at::kLong);
  at::Tensor sc = at::rand({M}, at::kDouble) * 4 + 0.25, sh = at::randn({M}, at::kDouble);
  std::optional<at::Tensor> osc, osh;
  if (scaled) {
    osc = sc.to(dtype);
    osh = sh.to(dtype);
  }
  at::Tensor y =
      fastasd::min_cosine_distance_cpu(q.to(dtype), r.to(dtype), grp, offs, osc, osh).to(at::kDouble);
  EXPECT(y.dim() == 1 && y.size(0) == N, "shape");
  const double* qp = q.const_data_ptr<double>();
  const double* rp = r.const_data_ptr<double>();
  const double* scp = sc.const_data_ptr<double>();
  const double* shp = sh.const_data_ptr<double>();
  const int64_t* gp = grp.const_data_ptr<int64_t>();
  double max_err = 0;
  for (int64_t i = 0; i < N; ++i) {
    double best = 1e300;
    for (int64_t j = off[gp[i]]; j < off[gp[i] + 1]; ++j) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += qp[i * D + d] * rp[j * D + d];
      const double dist = 1 - dot / (norm(qp + i * D, D) * norm(rp + j * D, D));
      best = std::min(best, scaled ? scp[j] * dist + shp[j] : dist);
    }
    max_err = std::max(max_err, std::abs(best - y[i].item<double>()));
  }
  // distances lie in [0, 2]; the scaled ones are up to 4.25 x larger
  const double tol = (dtype == at::kDouble ? 1e-12 : 1e-5) * (scaled ? 5 : 1);
  EXPECT(max_err <= tol, "N=%ld D=%ld G=%ld dtype=%s scaled=%d: max err %.3g > %.3g", long(N),
         long(D), long(G), c10::toString(dtype), int(scaled), max_err, tol);
}

int main() {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    compare(7, 5, {1, 3, 2}, dtype);         // tiny, D not a multiple of the vector width
    compare(300, 256, {16, 10, 26, 1}, dtype);  // the paper's sizes (16 means + ~10 targets)
    compare(41, 17, {5}, dtype);             // one group
    compare(50, 1, {3, 4}, dtype);
    compare(0, 8, {2, 2}, dtype);            // empty batch
    compare(100, 64, {70, 3}, dtype);        // a group larger than one tile
    // with a per-reference scale and shift
    compare(7, 5, {1, 3, 2}, dtype, true);
    compare(300, 256, {16, 10, 26, 1}, dtype, true);
    compare(100, 64, {70, 3}, dtype, true);
    compare(0, 8, {2, 2}, dtype, true);
  }

  using Opt = std::optional<at::Tensor>;
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("fastasd::min_cosine_distance", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, const Opt&, const Opt&)>();
  at::Tensor q = at::randn({10, 8}), r = at::randn({5, 8});
  at::Tensor g = at::randint(2, {10}, at::kLong), off = at::tensor(std::vector<int64_t>{0, 2, 5}, at::kLong);
  const Opt none;
  EXPECT(at::allclose(op.call(q, r, g, off, none, none),
                      fastasd::min_cosine_distance_cpu(q, r, g, off, none, none)), "dispatcher");

  const std::string p = "fastasd::min_cosine_distance: ";
  auto call = [&](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
    op.call(a, b, c, d, none, none);
  };
  expect_error([&] { call(q.to(at::kHalf), r.to(at::kHalf), g, off); }, p + "queries");
  expect_error([&] { call(q, r.to(at::kDouble), g, off); }, p + "refs");
  expect_error([&] { call(q, at::randn({5, 7}), g, off); }, p + "refs");
  expect_error([&] { call(q, r, g.to(at::kInt), off); }, p + "query_group");
  expect_error([&] { call(q, r, g.slice(0, 0, 9), off); }, p + "query_group");
  expect_error([&] { call(q, r, g + 5, off); }, p + "query_group");
  expect_error([&] { call(q, r, g, at::tensor(std::vector<int64_t>{0, 2, 2, 5}, at::kLong)); }, p + "ref_offsets");
  expect_error([&] { call(q, r, g, at::tensor(std::vector<int64_t>{0, 2, 4}, at::kLong)); }, p + "ref_offsets");
  expect_error([&] { call(q, r, g, at::tensor(std::vector<int64_t>{0}, at::kLong)); }, p + "ref_offsets");
  expect_error([&] { call(at::randn({8, 10}).t(), r, g, off); }, p + "queries");
  expect_error([&] { op.call(q, r, g, off, Opt(at::ones({4})), none); }, p + "ref_scale");
  expect_error([&] { op.call(q, r, g, off, Opt(at::ones({5}, at::kDouble)), none); }, p + "ref_scale");
  expect_error([&] { op.call(q, r, g, off, none, Opt(at::zeros({5, 1}))); }, p + "ref_shift");
  expect_error([&] { op.call(q, r, g, off, none, Opt(at::zeros({10}).slice(0, 0, 10, 2))); }, p + "ref_shift");

  std::printf("%s: %d failure(s)\n", __FILE__, failures);
  return failures == 0 ? 0 : 1;
}
