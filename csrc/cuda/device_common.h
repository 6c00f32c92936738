// Shared by the device code of every csrc/cuda/*.cu file.
//
// Each .cu file is split in two: its device code (kernels and the __host__ functions that
// compute their launch geometry) comes first and needs only this header; its host part (torch
// and the CUDA runtime: the launchers and the operator registration) follows inside
// `#ifndef FASTASD_SIMT_CPU`. The tests compile the device part with g++ against the SIMT
// emulator csrc/tests/simt_cpu.h, which defines FASTASD_SIMT_CPU and the macros below itself.
#pragma once

#ifndef FASTASD_SIMT_CPU
#include <cooperative_groups.h>
#include <cuda_runtime.h>

// The block's dynamic shared memory (16-byte aligned): `FASTASD_DYNAMIC_SMEM(smem);`.
#define FASTASD_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace fastasd {

// max and min that propagate NaN (CUDA's max/fmax and min/fmin return the other operand).
template <typename T>
__host__ __device__ __forceinline__ T nan_max(T a, T b) {
  return (a > b || a != a) ? a : b;
}
template <typename T>
__host__ __device__ __forceinline__ T nan_min(T a, T b) {
  return (a < b || a != a) ? a : b;
}

}  // namespace fastasd
