// Emulated launch of csrc/cuda/stft_magnitude.cu (see emu_common.h), following
// stft_magnitude_cuda_typed step by step.
#include "emu_common.h"

#include "stft_magnitude.cu"

using namespace fastasd;

namespace {

// Without clusters two blocks run at once (the kernels use only dynamic shared memory), so a race
// between blocks (e.g. on the per-bin sums) can show.
template <typename T, Mode M, bool POW2>
void run(const StftParams& p, const StftLaunch& l) {
  simt::launch(simt::Config{dim3(unsigned(l.blocks)), dim3(kThreads), l.smem, M == Mode::Cluster ? l.cluster : 1,
                            M == Mode::Cluster ? 1 : 2},
               stft_magnitude_kernel<T, M, POW2>, p);
}

std::string describe(const char* path, const StftLaunch& l) {
  return std::string("path=") + path + " ft=" + std::to_string(l.ft) + " fc=" + std::to_string(l.fc) +
         " blocks=" + std::to_string(l.blocks) + " cluster=" + std::to_string(l.cluster) +
         " smem=" + std::to_string(l.smem);
}

template <typename T, bool POW2>
std::string stft_typed(const T* x, T* out, int64_t B, int64_t N, int n, int64_t hop, bool normalize,
                       const EmuDevice& dev) {
  using T2 = typename Vec2<T>::type;
  const int H = n / 2, F = n / 2 + 1;
  const int64_t T_ = 1 + (N - n) / hop;
  const size_t smem_limit = size_t(dev.smem_optin);

  std::vector<T> win = garbage<T>(size_t(n));
  std::vector<T2> tw = garbage<T2>(size_t(POW2 ? H : n)), post = garbage<T2>(size_t(H + 1));
  simt::launch(simt::Config{dim3(unsigned(stft_tables_blocks(n))), dim3(256), 0, 1, 2}, stft_tables_kernel<T>,
               win.data(), tw.data(), post.data(), n, H, POW2);

  StftParams p{};
  p.x = x;
  p.out = out;
  p.sums = nullptr;
  p.win = win.data();
  p.tw = tw.data();
  p.post = post.data();
  p.N = N;
  p.T = T_;
  p.hop = hop;
  p.n = n;
  p.H = H;
  p.F = F;
  p.num_passes = POW2 ? stft_radix_plan(H, p.radix) : 0;
  const int ft = stft_frames_per_buffer<T>(n, F, POW2, smem_limit);
  if (ft == 0) throw std::runtime_error("fastasd::stft_magnitude: n_fft needs more shared memory than this GPU has");

  // The emulated GPU runs any cluster whose blocks fit (cudaOccupancyMaxActiveClusters > 0).
  if (normalize && dev.cc_major >= 9 && dev.cluster) {
    const StftLaunch l = stft_cluster_launch<T>(B, T_, n, F, POW2, ft, smem_limit);
    if (l.smem <= smem_limit) {
      StftParams pc = p;
      pc.ft = l.ft;
      pc.fc = l.fc;
      pc.blocks_per_clip = l.blocks_per_clip;
      run<T, Mode::Cluster, POW2>(pc, l);
      return describe("cluster", l);
    }
  }
  const StftLaunch l = stft_grid_launch<T>(B, T_, n, F, POW2, ft, dev.sm_count, normalize);
  p.ft = l.ft;
  p.fc = l.fc;
  p.blocks_per_clip = l.blocks_per_clip;
  if (!normalize) {
    run<T, Mode::Plain, POW2>(p, l);
    return describe("plain", l);
  }
  std::vector<double> sums(size_t(B * F), 0.0);  // cudaMemsetAsync(0)
  p.sums = sums.data();
  run<T, Mode::Sums, POW2>(p, l);
  run<T, Mode::Apply, POW2>(p, l);
  return describe("two-pass", l);
}

}  // namespace

// waveforms [B, N] -> out [B, T, F] (B > 0: the CUDA op returns before any launch for B == 0).
EMU_API int fastasd_emu_stft_magnitude(const void* x, void* out, int64_t B, int64_t N, int64_t n_fft, int64_t hop,
                                       int normalize, int is_double, const EmuDevice* dev, char* msg, int len) {
  return emu_guard(msg, len, [&]() -> std::string {
    if (n_fft > kMaxNfft) throw std::runtime_error("fastasd::stft_magnitude: n_fft must be <= 8192 on CUDA");
    const bool pow2 = (n_fft & (n_fft - 1)) == 0;
    const int n = static_cast<int>(n_fft);
    std::string d;
    if (is_double) {
      d = pow2 ? stft_typed<double, true>(static_cast<const double*>(x), static_cast<double*>(out), B, N, n, hop,
                                          normalize, *dev)
               : stft_typed<double, false>(static_cast<const double*>(x), static_cast<double*>(out), B, N, n, hop,
                                           normalize, *dev);
    } else {
      d = pow2 ? stft_typed<float, true>(static_cast<const float*>(x), static_cast<float*>(out), B, N, n, hop,
                                         normalize, *dev)
               : stft_typed<float, false>(static_cast<const float*>(x), static_cast<float*>(out), B, N, n, hop,
                                          normalize, *dev);
    }
    return d + (pow2 ? " pow2=1" : " pow2=0");
  });
}
