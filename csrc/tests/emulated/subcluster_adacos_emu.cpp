// Emulated launches of csrc/cuda/subcluster_adacos.cu (see emu_common.h), following
// forward_cuda and backward_cuda step by step.
#include "emu_common.h"

#include "subcluster_adacos.cu"

using namespace fastasd;

namespace {

simt::Config grid_of(dim3 grid, dim3 block) { return simt::Config{grid, block, 0, 1}; }

template <typename T>
void forward(const T* x, const T* w, const T* targets, double scale, int64_t B, int64_t D, int64_t C, int64_t K,
             bool update_scale, T* loss, T* scale_out, T* lse_total, T* lse_class, T* cosines, T* rw) {
  const int64_t CK = C * K;
  std::vector<T> rows = garbage<T>(size_t(3 * B));  // row loss, lse_old, theta
  std::vector<int> counters = garbage<int>(2);       // zeroed by the first GEMM's block (0, 0, 0)
  T* rowp = rows.data();
  int* cnt = counters.data();
  simt::launch(grid_of(gemm_grid(B, CK, 1), dim3(kThreads)), gemm_tile_kernel<T, false, true, true, true, EpiCos<T>>,
               x, int64_t(D), int64_t(1), w, int64_t(CK), int64_t(1), B, CK, D, D, rw, cnt,
               EpiCos<T>{cosines, CK});
  const int group = group_size(K);
  if (update_scale) {
    simt::launch(grid_of(dim3(unsigned(B)), dim3(kRowThreads)), row_pass_kernel<T, true>, (const T*)cosines,
                 targets, B, C, K, group, T(scale), (const T*)nullptr, (T*)nullptr, (T*)nullptr, rowp + B,
                 rowp + 2 * B, scale_out, (T*)nullptr, cnt);
  }
  simt::launch(grid_of(dim3(unsigned(B)), dim3(kRowThreads)), row_pass_kernel<T, false>, (const T*)cosines, targets,
               B, C, K, group, T(scale), update_scale ? (const T*)scale_out : (const T*)nullptr, lse_class,
               lse_total, rowp, (T*)nullptr, loss, scale_out, cnt + 1);
}

template <typename T>
void backward(const T* grad_loss, const T* x, const T* w, const T* targets, const T* scale, const T* lse_total,
              const T* lse_class, const T* cosines, const T* rw, int64_t B, int64_t D, int64_t C, int64_t K,
              bool centers_grad, int sms, T* grad_x, T* grad_w) {
  const int64_t CK = C * K;
  std::vector<T> rows = garbage<T>(size_t(2 * B));  // rx, g*T
  std::vector<T> G = garbage<T>(size_t(B * CK));
  T* rx = rows.data();
  T* gT = rx + B;
  simt::launch(grid_of(dim3(row_prep_blocks(B)), dim3(kPrepThreads)), row_prep_kernel<T>, x, targets, B, D, C,
               grad_loss, scale, rx, gT);
  simt::launch(grid_of(dim3(logit_grad_blocks(B, CK, sms)), dim3(kLogitThreads)), logit_grad_kernel<T>, cosines,
               rw, targets, lse_total, lse_class, (const T*)gT, grad_loss, scale, B, CK, C, K, G.data());
  const SplitK sk = dxn_split(B, D, CK, sms);
  std::vector<T> partial = garbage<T>(size_t(sk.splits * B * D));
  simt::launch(grid_of(gemm_grid(B, D, sk.splits), dim3(kThreads)),
               gemm_tile_kernel<T, false, false, false, false, EpiStore<T>>, (const T*)G.data(), int64_t(CK),
               int64_t(1), w, int64_t(1), int64_t(CK), B, D, CK, sk.k_split, (T*)nullptr, (int*)nullptr,
               EpiStore<T>{partial.data(), B, D});
  std::vector<T> xn = centers_grad ? garbage<T>(size_t(B * D)) : std::vector<T>();
  simt::launch(grid_of(dim3(unsigned(B)), dim3(kRowThreads)), dx_kernel<T>, (const T*)partial.data(), sk.splits,
               x, (const T*)rx, B, D, grad_x, centers_grad ? xn.data() : (T*)nullptr);
  if (centers_grad) {
    simt::launch(grid_of(gemm_grid(D, CK, 1), dim3(kThreads)), gemm_tile_kernel<T, true, true, false, false, EpiStore<T>>,
                 (const T*)xn.data(), int64_t(1), int64_t(D), (const T*)G.data(), int64_t(CK), int64_t(1), D, CK, B,
                 B, (T*)nullptr, (int*)nullptr, EpiStore<T>{grad_w, D, CK});
    simt::launch(grid_of(dim3(col_project_blocks(CK)), col_project_block()), col_project_kernel<T>, grad_w, w, rw,
                 D, CK);
  }
}

}  // namespace

// embeddings [B, D], centers [D, C*K], targets [B, C] -> loss, scale (0-dim), lse_total [B],
// lse_class [B, C], cos [B, C*K], col_inv_norms [C*K] (B > 0: the CUDA op returns before any
// launch for B == 0).
EMU_API int fastasd_emu_subcluster_adacos(const void* x, const void* w, const void* targets, double scale,
                                          int64_t B, int64_t D, int64_t C, int64_t K, int update_scale,
                                          int is_double, void* loss, void* scale_out, void* lse_total,
                                          void* lse_class, void* cosines, void* rw, char* msg, int len) {
  return emu_guard(msg, len, [&]() -> std::string {
    if (is_double) {
      using T = double;
      forward<T>(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(targets), scale, B, D, C,
                 K, update_scale, static_cast<T*>(loss), static_cast<T*>(scale_out), static_cast<T*>(lse_total),
                 static_cast<T*>(lse_class), static_cast<T*>(cosines), static_cast<T*>(rw));
    } else {
      using T = float;
      forward<T>(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(targets), scale, B, D, C,
                 K, update_scale, static_cast<T*>(loss), static_cast<T*>(scale_out), static_cast<T*>(lse_total),
                 static_cast<T*>(lse_class), static_cast<T*>(cosines), static_cast<T*>(rw));
    }
    return "gemm grid " + std::to_string(gemm_grid(B, C * K, 1).x) + "x" + std::to_string(gemm_grid(B, C * K, 1).y) +
           ", rows " + std::to_string(B) + ", group " + std::to_string(group_size(K));
  });
}

// The backward: grad_x [B, D] and (centers_grad) grad_w [D, C*K].
EMU_API int fastasd_emu_subcluster_adacos_backward(const void* grad_loss, const void* x, const void* w,
                                                   const void* targets, const void* scale, const void* lse_total,
                                                   const void* lse_class, const void* cosines, const void* rw,
                                                   int64_t B, int64_t D, int64_t C, int64_t K, int centers_grad,
                                                   int is_double, const EmuDevice* dev, void* grad_x, void* grad_w,
                                                   char* msg, int len) {
  return emu_guard(msg, len, [&]() -> std::string {
#define ARGS(T)                                                                                              \
  static_cast<const T*>(grad_loss), static_cast<const T*>(x), static_cast<const T*>(w),                     \
      static_cast<const T*>(targets), static_cast<const T*>(scale), static_cast<const T*>(lse_total),       \
      static_cast<const T*>(lse_class), static_cast<const T*>(cosines), static_cast<const T*>(rw), B, D, C, K, \
      centers_grad != 0, dev->sm_count, static_cast<T*>(grad_x), static_cast<T*>(grad_w)
    if (is_double) {
      backward<double>(ARGS(double));
    } else {
      backward<float>(ARGS(float));
    }
#undef ARGS
    const SplitK sk = dxn_split(B, D, C * K, dev->sm_count);
    return "splits " + std::to_string(sk.splits) + " (k " + std::to_string(sk.k_split) + "), logit blocks " +
           std::to_string(logit_grad_blocks(B, C * K, dev->sm_count));
  });
}
