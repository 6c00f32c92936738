// C++ unit tests (ctest) of the stft_magnitude CPU kernel: against a direct float64 DFT written
// here, through the dispatcher (schema registered, CPU kernel found) and for bad input.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace fastasd {
at::Tensor stft_magnitude_cpu(const at::Tensor& waveforms, int64_t n_fft, int64_t hop, bool normalize);
}

// Direct DFT in float64: the definition, independent of the kernel's FFT.
static std::vector<double> naive(const at::Tensor& x64, int64_t n, int64_t hop, bool normalize) {
  const int64_t B = x64.size(0), N = x64.size(1), T = 1 + (N - n) / hop, F = n / 2 + 1;
  const double* x = x64.const_data_ptr<double>();
  std::vector<double> out(B * T * F);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < F; ++k) {
        double re = 0, im = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double w = 0.5 - 0.5 * std::cos(2 * M_PI * j / n);
          const double v = w * x[b * N + t * hop + j];
          const double a = 2 * M_PI * double((k * j) % n) / n;
          re += v * std::cos(a);
          im -= v * std::sin(a);
        }
        out[(b * T + t) * F + k] = std::sqrt(re * re + im * im);
      }
    }
    if (normalize) {
      for (int64_t k = 0; k < F; ++k) {
        double m = 0;
        for (int64_t t = 0; t < T; ++t) m += out[(b * T + t) * F + k];
        m /= T;
        for (int64_t t = 0; t < T; ++t) out[(b * T + t) * F + k] -= m;
      }
    }
  }
  return out;
}

static void compare(int64_t B, int64_t N, int64_t n, int64_t hop, bool normalize, at::ScalarType dtype) {
  at::Tensor x64 = at::randn({B, N}, at::kDouble);
  at::Tensor y = fastasd::stft_magnitude_cpu(x64.to(dtype), n, hop, normalize).to(at::kDouble).contiguous();
  const std::vector<double> ref = naive(x64, n, hop, normalize);
  const int64_t T = 1 + (N - n) / hop, F = n / 2 + 1;
  EXPECT(y.size(0) == B && y.size(1) == T && y.size(2) == F, "shape");
  double max_ref = 0, max_err = 0;
  const double* yp = y.const_data_ptr<double>();
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(ref[i]));
    max_err = std::max(max_err, std::abs(ref[i] - yp[i]));
  }
  // float64: round-off of an FFT vs a direct DFT; float32: ~1e-6 of the largest magnitude.
  const double tol = (dtype == at::kDouble ? 1e-10 : 1e-5) * std::max(1.0, max_ref);
  EXPECT(max_err <= tol, "B=%ld N=%ld n_fft=%ld hop=%ld normalize=%d dtype=%s: max err %.3g > %.3g",
         long(B), long(N), long(n), long(hop), int(normalize), c10::toString(dtype), max_err, tol);
}

int main() {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (bool norm : {false, true}) {
      compare(3, 2000, 256, 100, norm, dtype);   // power of two, N not a multiple of hop
      compare(2, 1100, 400, 160, norm, dtype);   // not a power of two: direct DFT path
      compare(1, 1024, 1024, 512, norm, dtype);  // one frame
      compare(2, 40, 8, 3, norm, dtype);         // tiny FFT
      compare(2, 5, 2, 1, norm, dtype);          // n_fft = 2
      compare(1, 3000, 512, 512, norm, dtype);
    }
  }
  compare(2, 20000, 1024, 512, true, at::kFloat);  // the paper's frame size, 38 frames

  // Through the dispatcher: the schema is registered and the CPU kernel is found.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("fastasd::stft_magnitude", "")
                .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, bool)>();
  at::Tensor x = at::randn({2, 4096});
  EXPECT(at::allclose(op.call(x, 1024, 512, true), fastasd::stft_magnitude_cpu(x, 1024, 512, true)),
         "dispatcher result differs");
  EXPECT(op.call(at::randn({0, 4096}), 1024, 512, true).sizes() == at::IntArrayRef({0, 7, 513}),
         "empty batch shape");
  for (const char* name : {"fastasd::stft_magnitude", "fastasd::subcluster_adacos",
                           "fastasd::subcluster_adacos_backward", "fastasd::min_cosine_distance"}) {
    EXPECT(c10::Dispatcher::singleton().findSchema({name, ""}).has_value(), "schema %s missing", name);
  }

  // Bad input names the op and the argument.
  const std::string p = "fastasd::stft_magnitude: ";
  expect_error([&] { op.call(at::randn({2, 100}).to(at::kHalf), 16, 4, false); }, p + "waveforms");
  expect_error([&] { op.call(at::randn({100}), 16, 4, false); }, p + "waveforms");
  expect_error([&] { op.call(at::randn({100, 2}).t(), 16, 4, false); }, p + "waveforms");
  expect_error([&] { op.call(at::randn({2, 10}), 16, 4, false); }, p + "waveforms");
  expect_error([&] { op.call(at::randn({2, 100}), 1, 4, false); }, p + "n_fft");
  expect_error([&] { op.call(at::randn({2, 100}), 16, 0, false); }, p + "hop");

  std::printf("%s: %d failure(s)\n", __FILE__, failures);
  return failures == 0 ? 0 : 1;
}
