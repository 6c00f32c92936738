// Shared by the emulated launchers (csrc/tests/emulated/*.cpp): each includes one csrc/cuda/*.cu
// file after the SIMT emulator and exposes a C function that launches that file's kernels on the
// CPU with the same geometry functions as its CUDA launcher. tests/emulated/ builds them with g++
// into one shared library and calls them through ctypes (no torch headers: fast to build).
#pragma once

#include "simt_cpu.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

// The emulated GPU: what the launchers read from cudaDeviceGetAttribute.
struct EmuDevice {
  int sm_count;    // cudaDevAttrMultiProcessorCount
  int smem_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin (bytes)
  int cc_major;    // cudaDevAttrComputeCapabilityMajor
  int cluster;     // 0: as FASTASD_STFT_CLUSTER=0
};

#define EMU_API extern "C" __attribute__((visibility("default")))

// Runs f (which returns a description of the launch) and reports: 0 and the description, or 1
// and the error (a failed launch: a deadlock, a bad shuffle, ...), in msg.
template <class F>
int emu_guard(char* msg, int len, F&& f) {
  std::string text;
  int rc = 0;
  try {
    text = f();
  } catch (const std::exception& e) {
    text = e.what();
    rc = 1;
  }
  if (len > 0) {
    std::strncpy(msg, text.c_str(), size_t(len) - 1);
    msg[len - 1] = '\0';
  }
  return rc;
}

// A device buffer as at::empty gives it: uninitialized, here filled with NaN (0xFF bytes), so a
// kernel that reads what nobody wrote shows it.
template <class T>
std::vector<T> garbage(size_t n) {
  std::vector<T> v(n);
  std::memset(static_cast<void*>(v.data()), 0xFF, n * sizeof(T));
  return v;
}
