// C++ unit tests (ctest) of the subcluster_adacos CPU kernels, through the dispatcher:
//   - the forward (loss, scale, lse_total, lse_class) against direct float64 loops written here
//     (the scale update included);
//   - the backward against central finite differences of the float64 forward;
//   - bad input: the message names the op and the argument.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "tests/test_util.h"

namespace fastasd {  // csrc/cpu/subcluster_adacos.cpp (also links the library into this test)
int64_t check_subcluster_adacos_args(const at::Tensor& embeddings, const at::Tensor& centers,
                                     const at::Tensor& targets, int64_t n_subclusters);
}

// loss, scale, lse_total, lse_class, cos, col_inv_norms
using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, bool);
using Bwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                               bool);

static c10::TypedOperatorHandle<Fwd> fwd_op() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("fastasd::subcluster_adacos", "").typed<Fwd>();
}
static c10::TypedOperatorHandle<Bwd> bwd_op() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("fastasd::subcluster_adacos_backward", "").typed<Bwd>();
}

struct Expected {
  double loss, scale;
  std::vector<double> lse_total, lse_class;
};

// The contract (fastasd/reference.py) in plain float64 loops.
static Expected direct(const at::Tensor& x64, const at::Tensor& w64, const at::Tensor& t64, double s, int64_t K,
                       bool update) {
  const int64_t B = x64.size(0), D = x64.size(1), CK = w64.size(1), C = CK / K;
  const double* x = x64.const_data_ptr<double>();
  const double* w = w64.const_data_ptr<double>();
  const double* t = t64.const_data_ptr<double>();
  std::vector<double> cosv(B * CK), xn(D), wn(CK);
  for (int64_t j = 0; j < CK; ++j) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += w[d * CK + j] * w[d * CK + j];
    wn[j] = std::max(std::sqrt(ss), 1e-12);
  }
  for (int64_t b = 0; b < B; ++b) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[b * D + d] * x[b * D + d];
    const double n = std::max(std::sqrt(ss), 1e-12);
    for (int64_t j = 0; j < CK; ++j) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += x[b * D + d] * w[d * CK + j];
      cosv[b * CK + j] = dot / (n * wn[j]);
    }
  }
  if (update) {
    double M = -INFINITY;
    for (double c : cosv) M = std::max(M, s * c);
    double bavg = 0;
    for (double c : cosv) bavg += std::exp(s * c - M);
    bavg /= double(B);
    std::vector<double> theta(B);
    const double eps = 1.1920928955078125e-07;
    for (int64_t b = 0; b < B; ++b) {
      double acc = 0, nmix = 0;
      for (int64_t c = 0; c < C; ++c) {
        nmix += t[b * C + c] != 0 ? 1 : 0;
        for (int64_t k = 0; k < K; ++k)
          acc += t[b * C + c] * std::acos(std::min(std::max(cosv[b * CK + c * K + k], -1 + eps), 1 - eps));
      }
      theta[b] = acc * nmix;
    }
    std::sort(theta.begin(), theta.end());
    const double med = theta[(B - 1) / 2];
    s = (M + std::log(bavg)) / std::cos(std::min(M_PI / 4, med));
  }
  Expected e{0, s, std::vector<double>(B), std::vector<double>(B * C)};
  for (int64_t b = 0; b < B; ++b) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < CK; ++j) mx = std::max(mx, s * cosv[b * CK + j]);
    double tot = 0;
    for (int64_t j = 0; j < CK; ++j) tot += std::exp(s * cosv[b * CK + j] - mx);
    e.lse_total[b] = mx + std::log(tot);
    for (int64_t c = 0; c < C; ++c) {
      double cm = -INFINITY, cs = 0;
      for (int64_t k = 0; k < K; ++k) cm = std::max(cm, s * cosv[b * CK + c * K + k]);
      for (int64_t k = 0; k < K; ++k) cs += std::exp(s * cosv[b * CK + c * K + k] - cm);
      e.lse_class[b * C + c] = cm + std::log(cs);
      e.loss -= t[b * C + c] * (e.lse_class[b * C + c] - e.lse_total[b]) / double(B);
    }
  }
  return e;
}

static double max_abs_diff(const at::Tensor& a, const std::vector<double>& b) {
  at::Tensor a64 = a.to(at::kDouble).contiguous();
  const double* p = a64.const_data_ptr<double>();
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::abs(p[i] - b[i]));
  return m;
}

static at::Tensor mixup_targets(int64_t B, int64_t C) {
  at::Tensor y = at::zeros({B, C}, at::kDouble);
  at::Tensor labels = at::randint(C, {B}, at::kLong);
  at::Tensor lam = at::rand({B}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t l1 = labels[b].item<int64_t>(), l2 = labels[B - 1 - b].item<int64_t>();
    const double a = lam[b].item<double>();
    y[b][l1] = a;
    y[b][l2] = std::max(y[b][l2].item<double>(), 1 - a);
  }
  return y;
}

static void check_forward(int64_t B, int64_t D, int64_t C, int64_t K, at::ScalarType dtype, bool update) {
  at::Tensor x = at::randn({B, D}, at::kDouble), w = at::randn({D, C * K}, at::kDouble);
  at::Tensor t = mixup_targets(B, C);
  const double s0 = 11.0;
  auto [loss, s, lt, lc, cs, rw] = fwd_op().call(x.to(dtype), w.to(dtype), t.to(dtype), s0, K, update);
  const Expected e = direct(x, w, t, s0, K, update);
  // float32: the logits s*cos carry ~1e-7 * s relative error, the log-sum-exps inherit it.
  const double tol = dtype == at::kDouble ? 1e-10 : 2e-5 * (1 + std::abs(e.scale));
  const char* name = c10::toString(dtype);
  EXPECT(std::abs(loss.item<double>() - e.loss) <= tol, "B=%ld C=%ld K=%ld %s update=%d: loss %.9g vs %.9g",
         long(B), long(C), long(K), name, int(update), loss.item<double>(), e.loss);
  EXPECT(std::abs(s.item<double>() - e.scale) <= tol, "B=%ld %s update=%d: scale %.9g vs %.9g", long(B), name,
         int(update), s.item<double>(), e.scale);
  EXPECT(max_abs_diff(lt, e.lse_total) <= tol, "B=%ld %s: lse_total off by %.3g", long(B), name,
         max_abs_diff(lt, e.lse_total));
  EXPECT(max_abs_diff(lc, e.lse_class) <= tol, "B=%ld %s: lse_class off by %.3g", long(B), name,
         max_abs_diff(lc, e.lse_class));
  // The outputs kept for the backward: the cosines and the inverse column norms.
  at::Tensor rw_ref = w.pow(2).sum(0).sqrt().clamp_min(1e-12).reciprocal();
  at::Tensor cos_ref = at::mm(x * x.pow(2).sum(1, true).sqrt().clamp_min(1e-12).reciprocal(), w * rw_ref);
  const double ctol = dtype == at::kDouble ? 1e-12 : 2e-6;
  EXPECT((cs.to(at::kDouble) - cos_ref).abs().max().item<double>() <= ctol, "B=%ld %s update=%d: cos off", long(B),
         name, int(update));
  EXPECT(((rw.to(at::kDouble) - rw_ref).abs() / rw_ref).max().item<double>() <= ctol, "B=%ld %s: col_inv_norms off",
         long(B), name);
}

// Backward vs central differences of the float64 forward (update_scale=False: the scale is a
// constant of the loss).
static void check_backward(int64_t B, int64_t D, int64_t C, int64_t K) {
  at::Tensor x = at::randn({B, D}, at::kDouble), w = at::randn({D, C * K}, at::kDouble);
  at::Tensor t = mixup_targets(B, C);
  const double s0 = 7.0, g = 1.3, h = 1e-6;
  auto [loss, s, lt, lc, cs, rw] = fwd_op().call(x, w, t, s0, K, false);
  auto [gx, gw] = bwd_op().call(at::scalar_tensor(g, at::kDouble), x, w, t, s, lt, lc, cs, rw, K, true);
  auto numeric = [&](at::Tensor& p, int64_t i) {
    double* q = p.data_ptr<double>() + i;
    const double orig = *q;
    *q = orig + h;
    const double up = std::get<0>(fwd_op().call(x, w, t, s0, K, false)).item<double>();
    *q = orig - h;
    const double down = std::get<0>(fwd_op().call(x, w, t, s0, K, false)).item<double>();
    *q = orig;
    return g * (up - down) / (2 * h);
  };
  double ex = 0, ew = 0;
  for (int64_t i = 0; i < x.numel(); ++i) ex = std::max(ex, std::abs(numeric(x, i) - gx.view(-1)[i].item<double>()));
  for (int64_t i = 0; i < w.numel(); ++i) ew = std::max(ew, std::abs(numeric(w, i) - gw.view(-1)[i].item<double>()));
  EXPECT(ex <= 1e-7 && ew <= 1e-7, "B=%ld D=%ld C=%ld K=%ld: finite differences off by %.3g (x), %.3g (w)",
         long(B), long(D), long(C), long(K), ex, ew);
  auto [gx2, gw2] = bwd_op().call(at::scalar_tensor(g, at::kDouble), x, w, t, s, lt, lc, cs, rw, K, false);
  EXPECT(at::allclose(gx2, gx) && gw2.numel() == 0, "centers_grad=false");
}

int main() {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (bool update : {false, true}) {
      check_forward(3, 7, 5, 3, dtype, update);      // odd sizes, K not a multiple of the lanes
      check_forward(1, 5, 1, 1, dtype, update);      // one sample, one column
      check_forward(64, 64, 40, 16, dtype, update);  // K = 16 as in the paper, even B (lower median)
      check_forward(9, 33, 7, 8, dtype, update);
    }
  }
  check_backward(3, 4, 3, 2);
  check_backward(2, 5, 2, 3);

  // Empty batch: loss 0, scale unchanged.
  auto [loss, s, lt, lc, cs, rw] =
      fwd_op().call(at::zeros({0, 4}), at::randn({4, 6}), at::zeros({0, 3}), 2.5, 2, true);
  EXPECT(loss.item<double>() == 0 && s.item<double>() == 2.5 && lt.numel() == 0 && lc.size(1) == 3 &&
             cs.size(0) == 0 && cs.size(1) == 6 && rw.size(0) == 6,
         "empty batch");

  const std::string p = "fastasd::subcluster_adacos: ";
  at::Tensor x = at::randn({4, 6}), w = at::randn({6, 6}), t = at::zeros({4, 3});
  EXPECT(fastasd::check_subcluster_adacos_args(x, w, t, 2) == 3, "the argument check returns C");
  expect_error([&] { fwd_op().call(x.to(at::kHalf), w, t, 1.0, 2, false); }, p + "embeddings");
  expect_error([&] { fwd_op().call(x, w.to(at::kDouble), t, 1.0, 2, false); }, p + "centers");
  expect_error([&] { fwd_op().call(x, w, t.to(at::kDouble), 1.0, 2, false); }, p + "targets");
  expect_error([&] { fwd_op().call(x, at::randn({5, 6}), t, 1.0, 2, false); }, p + "centers");
  expect_error([&] { fwd_op().call(x, w, t, 1.0, 4, false); }, p + "centers");
  expect_error([&] { fwd_op().call(x, w, at::zeros({4, 2}), 1.0, 2, false); }, p + "targets");
  expect_error([&] { fwd_op().call(x, w, t, 1.0, 0, false); }, p + "n_subclusters");
  expect_error([&] { fwd_op().call(at::randn({6, 4}).t(), w, t, 1.0, 2, false); }, p + "embeddings");
  expect_error([&] { fwd_op().call(x, at::randn({6, 6}).t(), t, 1.0, 2, false); }, p + "centers");
  auto [l2, s2, lt2, lc2, cs2, rw2] = fwd_op().call(x, w, t, 1.0, 2, false);
  const std::string pb = "fastasd::subcluster_adacos_backward: ";
  const at::Tensor one = at::scalar_tensor(1.0);
  expect_error([&] { bwd_op().call(one, x, w, t, s2, lt2.slice(0, 0, 3), lc2, cs2, rw2, 2, false); },
               pb + "lse_total");
  expect_error([&] { bwd_op().call(at::ones({1}), x, w, t, s2, lt2, lc2, cs2, rw2, 2, false); }, pb + "grad_loss");
  expect_error([&] { bwd_op().call(one, x, w, t, s2, lt2, lc2, cs2.slice(1, 0, 4).contiguous(), rw2, 2, false); },
               pb + "cos");
  expect_error([&] { bwd_op().call(one, x, w, t, s2, lt2, lc2, cs2, rw2.slice(0, 0, 5), 2, false); },
               pb + "col_inv_norms");

  std::printf("%s: %d failure(s)\n", __FILE__, failures);
  return failures == 0 ? 0 : 1;
}
