// Emulated launch of csrc/cuda/min_cosine_distance.cu (see emu_common.h).
#include "emu_common.h"

#include "min_cosine_distance.cu"

using namespace fastasd;

// queries [N, D], refs [M, D], group [N], offsets [G+1], scale / shift [M] or null -> out [N];
// *flags gets the kernel's error bits (kErrBounds 1, kErrEmpty 2, kErrGroup 4), OR-ed into what it
// holds.
EMU_API int fastasd_emu_min_cosine_distance(const void* queries, const void* refs, const int64_t* group,
                                            const int64_t* offsets, const void* scale, const void* shift,
                                            void* out, int64_t N, int64_t M, int64_t D,
                                            int64_t G, int is_double, const EmuDevice* dev, int* flags, char* msg,
                                            int len) {
  return emu_guard(msg, len, [&]() -> std::string {
    const size_t elem = is_double ? 8 : 4;
    const MinCosGeometry geo =
        min_cos_geometry(N, D, G, elem, reinterpret_cast<uintptr_t>(queries) % 16 == 0, dev->sm_count);
    if (geo.smem > size_t(dev->smem_optin))
      throw std::runtime_error("fastasd::min_cosine_distance: queries has D=" + std::to_string(D) +
                               " columns, too many for one reference row in shared memory");
    MinCosParams p{};
    p.queries = queries;
    p.refs = refs;
    p.group = group;
    p.offsets = offsets;
    p.scale = scale;
    p.shift = shift;
    p.out = out;
    p.err = flags;
    p.N = N;
    p.M = M;
    p.D = static_cast<int>(D);
    p.G = static_cast<int>(G);
    p.slices = geo.slices;
    p.rc = geo.rc;
    const simt::Config cfg{dim3(unsigned(geo.blocks)), dim3(kThreads), geo.smem, 1};
    if (is_double) {
      simt::launch(cfg, geo.vec ? min_cosine_distance_kernel<double, true> : min_cosine_distance_kernel<double, false>, p);
    } else {
      simt::launch(cfg, geo.vec ? min_cosine_distance_kernel<float, true> : min_cosine_distance_kernel<float, false>, p);
    }
    return "blocks=" + std::to_string(geo.blocks) + " slices=" + std::to_string(geo.slices) +
           " rc=" + std::to_string(geo.rc) + " vec=" + std::to_string(int(geo.vec)) +
           " smem=" + std::to_string(geo.smem);
  });
}
