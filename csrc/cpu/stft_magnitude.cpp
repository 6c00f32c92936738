// stft_magnitude on the CPU: periodic-Hann-windowed, uncentered, unpadded magnitude STFT with
// optional temporal mean normalization, in one pass (see fastasd/reference.py for the math).
//
//   out[b, t, k] = | sum_{n<n_fft} w[n] x[b, t*hop + n] exp(-2 pi i k n / n_fft) |,  k <= n_fft/2
//   normalize:  out[b, t, k] -= mean_t out[b, t, k]
//
// Layout of the computation: L frames at a time are transformed together, one frame per SIMD
// lane ("vertical" vectorization), so every butterfly is a plain vector operation without
// shuffles. Power-of-two n_fft: the real frame of n samples is packed into a complex sequence of
// H = n/2 points (z[m] = x[2m] + i x[2m+1]), transformed by an iterative radix-2 FFT and split
// into the n/2+1 bins of the real DFT. Other n_fft: a direct DFT over table twiddles. The
// per-bin sums for the normalization are accumulated (in float64) while the magnitudes are
// written; the mean is subtracted in a second pass while the clip is still in cache.
// Window, twiddles and bit-reversal table are computed once per (n_fft, dtype) and cached.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "checks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__NVCC__)
// One copy of the hot loops per x86 ISA level, picked at load time (AVX-512, AVX2+FMA, SSE2).
#define FASTASD_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTASD_TARGET_CLONES
#endif
#define FASTASD_ALWAYS_INLINE inline __attribute__((always_inline))

namespace fastasd {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Vector of L lanes of T (GCC/Clang vector extension; lowered to the widest ISA of the clone).
template <typename T, int L>
struct Lanes {
  typedef T type __attribute__((vector_size(L * sizeof(T))));
};

// Uninitialized 64-byte-aligned scratch of n elements (std::vector does not honour the
// alignment of vector-extension types).
template <typename V>
struct AlignedBuffer {
  explicit AlignedBuffer(int64_t n)
      : ptr(static_cast<V*>(std::aligned_alloc(64, ((std::max<int64_t>(n, 1) * sizeof(V) + 63) / 64) * 64))) {
    TORCH_CHECK(ptr != nullptr, "fastasd: out of memory for scratch buffers");
  }
  ~AlignedBuffer() { std::free(ptr); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  V* data() { return ptr; }
  V& operator[](int64_t i) { return ptr[i]; }
  V* ptr;
};

template <typename T>
struct StftPlan {
  int64_t n = 0;        // n_fft
  int64_t H = 0;        // n / 2: size of the complex FFT (power-of-two path)
  bool pow2 = false;
  std::vector<T> window;            // periodic Hann, n
  std::vector<int32_t> bitrev;      // H: bit-reversed index of m
  std::vector<T> tw_re, tw_im;      // exp(-2 pi i j / H), j < H/2
  std::vector<T> post_c, post_s;    // cos, sin(2 pi k / n), k <= H
  std::vector<T> dft_c, dft_s;      // cos, sin(2 pi j / n), j < n (direct DFT path)
};

template <typename T>
std::shared_ptr<const StftPlan<T>> make_plan(int64_t n) {
  auto p = std::make_shared<StftPlan<T>>();
  p->n = n;
  p->H = n / 2;
  p->pow2 = (n & (n - 1)) == 0;
  p->window.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    p->window[i] = static_cast<T>(0.5 - 0.5 * std::cos(2.0 * kPi * double(i) / double(n)));
  }
  if (p->pow2) {
    const int64_t H = p->H;
    int bits = 0;
    while ((int64_t{1} << bits) < H) ++bits;
    p->bitrev.resize(H);
    for (int64_t m = 0; m < H; ++m) {
      int64_t r = 0;
      for (int b = 0; b < bits; ++b) r |= ((m >> b) & 1) << (bits - 1 - b);
      p->bitrev[m] = static_cast<int32_t>(r);
    }
    p->tw_re.resize(std::max<int64_t>(H / 2, 1));
    p->tw_im.resize(std::max<int64_t>(H / 2, 1));
    for (int64_t j = 0; j < H / 2; ++j) {
      p->tw_re[j] = static_cast<T>(std::cos(2.0 * kPi * double(j) / double(H)));
      p->tw_im[j] = static_cast<T>(-std::sin(2.0 * kPi * double(j) / double(H)));
    }
    p->post_c.resize(H + 1);
    p->post_s.resize(H + 1);
    for (int64_t k = 0; k <= H; ++k) {
      p->post_c[k] = static_cast<T>(std::cos(2.0 * kPi * double(k) / double(n)));
      p->post_s[k] = static_cast<T>(std::sin(2.0 * kPi * double(k) / double(n)));
    }
  } else {
    p->dft_c.resize(n);
    p->dft_s.resize(n);
    for (int64_t j = 0; j < n; ++j) {
      p->dft_c[j] = static_cast<T>(std::cos(2.0 * kPi * double(j) / double(n)));
      p->dft_s[j] = static_cast<T>(std::sin(2.0 * kPi * double(j) / double(n)));
    }
  }
  return p;
}

template <typename T>
std::shared_ptr<const StftPlan<T>> get_plan(int64_t n) {
  static std::mutex mutex;
  static std::unordered_map<int64_t, std::shared_ptr<const StftPlan<T>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  auto plan = make_plan<T>(n);
  cache.emplace(n, plan);
  return plan;
}

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FASTASD_HAVE_SHUFFLEVECTOR 1
#endif
#endif

template <typename V>
FASTASD_ALWAYS_INLINE V load_vec(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
FASTASD_ALWAYS_INLINE void store_vec(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

#ifdef FASTASD_HAVE_SHUFFLEVECTOR
// Lane shuffles for in-register transposes (L x L blocks between "frame per lane" and
// "frame per row" layouts). interleave_lo(a, b) = a0 b0 a1 b1 ..., interleave_hi = the upper
// halves; even/odd pick the even/odd elements of the 2L-element concatenation a ++ b.
template <int L, typename V, size_t... I>
FASTASD_ALWAYS_INLINE V interleave_lo(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2 == 0) ? I / 2 : L + I / 2)...);
}
template <int L, typename V, size_t... I>
FASTASD_ALWAYS_INLINE V interleave_hi(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2 == 0) ? L / 2 + I / 2 : L + L / 2 + I / 2)...);
}
template <int L, typename V, size_t... I>
FASTASD_ALWAYS_INLINE V pick_even(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}
template <int L, typename V, size_t... I>
FASTASD_ALWAYS_INLINE V pick_odd(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I + 1)...);
}

// In-register transpose of L vectors of L lanes: log2(L) perfect-shuffle stages of
// interleave_lo/hi (r[i] and r[i + L/2] -> rows 2i, 2i+1).
template <int L, typename V>
FASTASD_ALWAYS_INLINE void transpose(V* r) {
  constexpr auto idx = std::make_index_sequence<L>{};
  for (int s = 1; s < L; s <<= 1) {
    V t[L];
    for (int i = 0; i < L / 2; ++i) {
      t[2 * i] = interleave_lo<L>(r[i], r[i + L / 2], idx);
      t[2 * i + 1] = interleave_hi<L>(r[i], r[i + L / 2], idx);
    }
    for (int i = 0; i < L; ++i) r[i] = t[i];
  }
}
#endif

// One radix-2 decimation-in-frequency butterfly: (u, v) -> (u + v, (u - v) * (wr + i wi)).
template <typename V, typename T>
FASTASD_ALWAYS_INLINE void dif2(V& ur, V& ui, V& vr, V& vi, T wr, T wi) {
  const V dr = ur - vr, di = ui - vi;
  ur = ur + vr;
  ui = ui + vi;
  vr = dr * wr - di * wi;
  vi = dr * wi + di * wr;
}

// In-place H-point complex FFT (forward, natural-order input, BIT-REVERSED output) of L
// independent sequences, one per lane. Stages are fused in pairs (radix 2^2) so each pass over
// the buffer does two stages' work in registers.
template <typename T, typename V>
FASTASD_ALWAYS_INLINE void fft_dif(V* re, V* im, int64_t H, const T* twr, const T* twi) {
  int64_t s = H;
  for (; s >= 4; s >>= 2) {  // stages s and s/2 together
    const int64_t q = s / 4, st1 = H / s, st2 = 2 * H / s;
    for (int64_t start = 0; start < H; start += s) {
      for (int64_t j = 0; j < q; ++j) {
        const int64_t a0 = start + j, a1 = a0 + q, a2 = a1 + q, a3 = a2 + q;
        V r0 = re[a0], i0 = im[a0], r1 = re[a1], i1 = im[a1];
        V r2 = re[a2], i2 = im[a2], r3 = re[a3], i3 = im[a3];
        dif2(r0, i0, r2, i2, twr[j * st1], twi[j * st1]);
        dif2(r1, i1, r3, i3, twr[(j + q) * st1], twi[(j + q) * st1]);
        dif2(r0, i0, r1, i1, twr[j * st2], twi[j * st2]);
        dif2(r2, i2, r3, i3, twr[j * st2], twi[j * st2]);
        re[a0] = r0; im[a0] = i0; re[a1] = r1; im[a1] = i1;
        re[a2] = r2; im[a2] = i2; re[a3] = r3; im[a3] = i3;
      }
    }
  }
  if (s == 2) {  // odd number of stages: a last radix-2 stage, twiddle 1
    for (int64_t a = 0; a < H; a += 2) {
      const V ur = re[a], ui = im[a], vr = re[a + 1], vi = im[a + 1];
      re[a] = ur + vr;
      im[a] = ui + vi;
      re[a + 1] = ur - vr;
      im[a + 1] = ui - vi;
    }
  }
}

// Magnitudes of the frames [t0, t1) of one clip into out (the clip's [T, F] block); adds each
// bin's magnitudes into sums[F] if sums is not null. Frames are processed L at a time.
template <typename T, int L>
FASTASD_ALWAYS_INLINE void stft_frames_impl(const T* x, int64_t hop, const StftPlan<T>& plan,
                                            int64_t t0, int64_t t1, T* out, double* sums) {
  using V = typename Lanes<T, L>::type;
  const int64_t n = plan.n, F = n / 2 + 1, H = plan.H;
  const T* w = plan.window.data();
  AlignedBuffer<V> buf_a(plan.pow2 ? H : n), buf_b(plan.pow2 ? H : 0), mag(F), msum(F);
  T* mag_s = reinterpret_cast<T*>(mag.data());
  // Bin sums: per lane in T for up to kFlush lane groups, then added into sums in float64.
  constexpr int kFlush = 8;
  int pending = 0;
  for (int64_t k = 0; k < F; ++k) msum[k] = V{};

  for (int64_t t = t0; t < t1; t += L) {
    const int valid = static_cast<int>(std::min<int64_t>(L, t1 - t));
    const T* xt = x + t * hop;
    if (plan.pow2) {
      V* re = buf_a.data();
      V* im = buf_b.data();
      T* re_s = reinterpret_cast<T*>(re);
      T* im_s = reinterpret_cast<T*>(im);
      // Load: windowed even/odd samples as real/imaginary parts. Lanes past the last frame are
      // zero, so they add nothing to the sums.
      int64_t m_done = 0;
#ifdef FASTASD_HAVE_SHUFFLEVECTOR
      // L x L blocks: each frame's 2L samples are windowed, split into even/odd and transposed
      // into L vectors (one per m) in registers.
      constexpr auto idx = std::make_index_sequence<L>{};
      for (; m_done + L <= H; m_done += L) {
        const int64_t m0 = m_done;
        const V w0 = load_vec<V>(w + 2 * m0), w1 = load_vec<V>(w + 2 * m0 + L);
        V ev[L], od[L];
        for (int l = 0; l < L; ++l) {
          if (l < valid) {
            const T* p = xt + l * hop + 2 * m0;
            const V a = load_vec<V>(p) * w0, b = load_vec<V>(p + L) * w1;
            ev[l] = pick_even<L>(a, b, idx);
            od[l] = pick_odd<L>(a, b, idx);
          } else {
            ev[l] = V{};
            od[l] = V{};
          }
        }
        transpose<L>(ev);
        transpose<L>(od);
        for (int i = 0; i < L; ++i) {
          re[m0 + i] = ev[i];
          im[m0 + i] = od[i];
        }
      }
#endif
      for (int l = 0; l < L; ++l) {  // what is left (n_fft < 2L, or no shuffles): scalar
        const T* xl = xt + l * hop;
        for (int64_t m = m_done; m < H; ++m) {
          re_s[m * L + l] = (l < valid) ? xl[2 * m] * w[2 * m] : T(0);
          im_s[m * L + l] = (l < valid) ? xl[2 * m + 1] * w[2 * m + 1] : T(0);
        }
      }
      fft_dif<T, V>(re, im, H, plan.tw_re.data(), plan.tw_im.data());
      // Split the H-point complex spectrum Z (bit-reversed in the buffer) into the real
      // spectrum's bins 0..H: X[k] = E + W^k O, E = (Z[k] + conj Z[H-k]) / 2,
      // O = (Z[k] - conj Z[H-k]) / 2i, W = exp(-2 pi i / n).
      const int32_t* rev = plan.bitrev.data();
      for (int64_t k = 0; k <= H; ++k) {
        const int64_t ia = rev[(k == H) ? 0 : k], ib = rev[(k == 0) ? 0 : H - k];
        const V ar = re[ia], ai = im[ia], br = re[ib], bi = im[ib];
        const V er = (ar + br) * T(0.5), ei = (ai - bi) * T(0.5);
        const V orr = (ai + bi) * T(0.5), oi = (br - ar) * T(0.5);
        const T c = plan.post_c[k], s = plan.post_s[k];
        const V xr = er + c * orr + s * oi;
        const V xi = ei + c * oi - s * orr;
        mag[k] = xr * xr + xi * xi;
      }
    } else {
      // Direct DFT (n_fft not a power of two): O(n_fft^2) per frame.
      V* xw = buf_a.data();
      T* xw_s = reinterpret_cast<T*>(xw);
      for (int l = 0; l < L; ++l) {
        const T* xl = xt + l * hop;
        for (int64_t j = 0; j < n; ++j) xw_s[j * L + l] = (l < valid) ? xl[j] * w[j] : T(0);
      }
      const T* dc = plan.dft_c.data();
      const T* ds = plan.dft_s.data();
      for (int64_t k = 0; k < F; ++k) {
        V accr = {}, acci = {};
        int64_t idx = 0;  // (k * j) mod n, updated incrementally
        for (int64_t j = 0; j < n; ++j) {
          accr += xw[j] * dc[idx];
          acci -= xw[j] * ds[idx];
          idx += k;
          if (idx >= n) idx -= n;
        }
        mag[k] = accr * accr + acci * acci;
      }
    }
    for (int64_t i = 0; i < F * L; ++i) mag_s[i] = std::sqrt(mag_s[i]);
    // Transposed store: lane l is frame t + l, a contiguous row of F bins.
    int64_t k_done = 0;
#ifdef FASTASD_HAVE_SHUFFLEVECTOR
    for (; k_done + L <= F; k_done += L) {
      V r[L];
      for (int i = 0; i < L; ++i) r[i] = mag[k_done + i];
      transpose<L>(r);
      for (int l = 0; l < valid; ++l) store_vec(out + (t + l) * F + k_done, r[l]);
    }
#endif
    for (int l = 0; l < valid; ++l) {
      T* row = out + (t + l) * F;
      for (int64_t k = k_done; k < F; ++k) row[k] = mag_s[k * L + l];
    }
    if (sums != nullptr) {
      for (int64_t k = 0; k < F; ++k) msum[k] += mag[k];
      if (++pending == kFlush || t + L >= t1) {
        const T* ms = reinterpret_cast<const T*>(msum.data());
        for (int64_t k = 0; k < F; ++k) {
          double acc = 0.0;
          for (int l = 0; l < L; ++l) acc += static_cast<double>(ms[k * L + l]);
          sums[k] += acc;
          msum[k] = V{};
        }
        pending = 0;
      }
    }
  }
}

// Non-template entry points, so that each gets one clone per ISA level.
constexpr int kLanesF32 = 8;
constexpr int kLanesF64 = 8;

FASTASD_TARGET_CLONES
void stft_frames_f32(const float* x, int64_t hop, const StftPlan<float>& plan, int64_t t0,
                     int64_t t1, float* out, double* sums) {
  stft_frames_impl<float, kLanesF32>(x, hop, plan, t0, t1, out, sums);
}

FASTASD_TARGET_CLONES
void stft_frames_f64(const double* x, int64_t hop, const StftPlan<double>& plan, int64_t t0,
                     int64_t t1, double* out, double* sums) {
  stft_frames_impl<double, kLanesF64>(x, hop, plan, t0, t1, out, sums);
}

FASTASD_ALWAYS_INLINE void stft_frames(const float* x, int64_t hop, const StftPlan<float>& plan,
                                       int64_t t0, int64_t t1, float* out, double* sums) {
  stft_frames_f32(x, hop, plan, t0, t1, out, sums);
}
FASTASD_ALWAYS_INLINE void stft_frames(const double* x, int64_t hop, const StftPlan<double>& plan,
                                       int64_t t0, int64_t t1, double* out, double* sums) {
  stft_frames_f64(x, hop, plan, t0, t1, out, sums);
}

template <typename T>
void subtract_mean(T* out, int64_t t0, int64_t t1, int64_t F, const double* mean) {
  for (int64_t t = t0; t < t1; ++t) {
    T* row = out + t * F;
    for (int64_t k = 0; k < F; ++k) row[k] = static_cast<T>(row[k] - mean[k]);
  }
}

template <typename T>
void stft_magnitude_typed(const at::Tensor& waveforms, int64_t n_fft, int64_t hop, bool normalize,
                          at::Tensor& out) {
  constexpr int L = sizeof(T) == 4 ? kLanesF32 : kLanesF64;
  const int64_t B = out.size(0), T_ = out.size(1), F = out.size(2), N = waveforms.size(1);
  const auto plan = get_plan<T>(n_fft);
  const T* x = waveforms.const_data_ptr<T>();
  T* y = out.mutable_data_ptr<T>();

  // Work items: (clip, chunk of frames). Whole clips when there are enough of them; otherwise
  // each clip is split so that every thread gets work (B = 1 inference).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t lane_groups = (T_ + L - 1) / L;
  int64_t chunks = 1;
  if (B < 4 * threads) chunks = std::clamp<int64_t>((4 * threads + B - 1) / B, 1, lane_groups);
  auto frame_range = [&](int64_t c) {
    return std::make_pair(std::min(T_, (c * lane_groups / chunks) * L),
                          std::min(T_, ((c + 1) * lane_groups / chunks) * L));
  };
  // Per-(clip, chunk) bin sums for the normalization, reduced per clip afterwards.
  std::vector<double> partial(normalize ? B * chunks * F : 0, 0.0);

  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> mean(normalize && chunks == 1 ? F : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, c = item % chunks;
      const auto [t0, t1] = frame_range(c);
      double* sums = normalize ? partial.data() + item * F : nullptr;
      stft_frames(x + b * N, hop, *plan, t0, t1, y + b * T_ * F, sums);
      if (normalize && chunks == 1) {  // the whole clip is done and still in cache
        for (int64_t k = 0; k < F; ++k) mean[k] = sums[k] / double(T_);
        subtract_mean(y + b * T_ * F, 0, T_, F, mean.data());
      }
    }
  });
  if (normalize && chunks > 1) {
    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> mean(F);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / chunks, c = item % chunks;
        std::fill(mean.begin(), mean.end(), 0.0);
        for (int64_t cc = 0; cc < chunks; ++cc) {
          const double* s = partial.data() + (b * chunks + cc) * F;
          for (int64_t k = 0; k < F; ++k) mean[k] += s[k];
        }
        for (int64_t k = 0; k < F; ++k) mean[k] /= double(T_);
        const auto [t0, t1] = frame_range(c);
        subtract_mean(y + b * T_ * F, t0, t1, F, mean.data());
      }
    });
  }
}

}  // namespace

at::Tensor stft_magnitude_cpu(const at::Tensor& waveforms, int64_t n_fft, int64_t hop,
                              bool normalize) {
  const int64_t T = check_stft_magnitude_args(waveforms, n_fft, hop);
  const int64_t B = waveforms.size(0), F = n_fft / 2 + 1;
  at::Tensor out = at::empty({B, T, F}, waveforms.options());
  if (B == 0) return out;
  if (waveforms.scalar_type() == at::kFloat) {
    stft_magnitude_typed<float>(waveforms, n_fft, hop, normalize, out);
  } else {
    stft_magnitude_typed<double>(waveforms, n_fft, hop, normalize, out);
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastasd, CPU, m) { m.impl("stft_magnitude", &stft_magnitude_cpu); }

}  // namespace fastasd
