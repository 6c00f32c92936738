// simt_cpu.h: a test-only SIMT emulator that runs the device code of csrc/cuda/*.cu on the CPU.
//
// Include it before a .cu file and compile that file with g++ (-std=c++20 -pthread
// -fno-strict-aliasing); tests/emulated/ does this with the files on disk, unchanged. The .cu
// files see FASTASD_SIMT_CPU defined and skip their host (torch / CUDA runtime) part.
//
// Model (what a launch does):
//   - one host thread per CUDA thread of a block; threadIdx/blockIdx/blockDim/gridDim are
//     thread_local; warps are 32 consecutive linear thread ids, as on the GPU;
//   - blocks run one after another, or Config::concurrent of them at a time (to expose races
//     between blocks); the blocks of a thread-block cluster run concurrently, so cluster.sync()
//     and map_shared_rank() behave as on sm_90;
//   - __syncthreads() is a barrier of the block's threads; a thread that returns drops out of it
//     (as exited warps do on the GPU);
//   - dynamic shared memory (FASTASD_DYNAMIC_SMEM) is a per-block buffer filled with 0xFF bytes
//     (NaN for floats) at each block start and, in a cluster, when the block has finished, so
//     reading it before it is written or after its block left shows; static
//     `__shared__` variables are function statics, valid because blocks run one at a time (a
//     launch that runs several blocks at once refuses them);
//   - warp shuffles exchange values through a per-warp buffer and a barrier keyed on the mask, so
//     sub-warp masks work; a lane outside its own mask or a source lane outside the mask fails;
//   - atomics are std::atomic_ref operations, __threadfence a sequentially consistent RMW;
//   - math follows CUDA's semantics where they differ from the host's (max/min on floats are
//     fmax/fmin and drop NaN, as on the GPU); results are IEEE (no --use_fast_math approximations).
//   - a deadlock (every live thread waits at a barrier that can no longer complete) fails the
//     launch at once with the waiting sites; a watchdog fails it when no barrier completes for
//     FASTASD_SIMT_WATCHDOG_S seconds (default 300), and exits the process if the threads
//     still do not stop as long again (they spin without reaching a barrier).
// A failed launch throws simt::LaunchError from simt::launch with the first failure's message.
#pragma once

#include <linux/futex.h>
#include <math.h>  // the float overloads of sqrt, fmax, ... in the global namespace, as in CUDA
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define FASTASD_SIMT_CPU 1
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900  // the device pass of an sm_90 build (cluster code included)
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: a function static, checked to be used only where blocks run alone.
#define SIMT_CAT2(a, b) a##b
#define SIMT_CAT(a, b) SIMT_CAT2(a, b)
#define __shared__ ::simt::StaticSharedUse SIMT_CAT(simt_static_shared_, __COUNTER__){}; static
// Dynamic shared memory: the block's buffer (16-byte aligned).
#define FASTASD_DYNAMIC_SMEM(name) unsigned char* const name = ::simt::dynamic_smem()

// ---------------------------------------------------------------------------------------------
// Built-in vector types and variables
// ---------------------------------------------------------------------------------------------
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

namespace simt {

// ---------------------------------------------------------------------------------------------
// Launch state
// ---------------------------------------------------------------------------------------------
struct LaunchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Abort {};  // unwinds a thread of a failed launch

struct Launch;

// Sleeping on a barrier's generation word: the futex system call itself, not
// std::atomic::wait, whose shared waiter pool makes every wait an RMW on a few global counters
// (ThreadSanitizer would see all threads synchronize there and miss races).
inline void futex_wait(std::atomic<unsigned>* word, unsigned expected) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
inline void futex_wake_all(std::atomic<unsigned>* word) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(word), FUTEX_WAKE_PRIVATE, std::numeric_limits<int>::max(),
          nullptr, nullptr, 0);
}

// A barrier over `expected` threads with exact deadlock accounting: Launch::running counts the
// threads not blocked in an incomplete wait; when it reaches 0 nobody can arrive any more.
class Barrier {
 public:
  Barrier(Launch* L, const char* what, unsigned mask = 0);
  ~Barrier();
  void reset(int expected) {
    std::lock_guard<std::mutex> lk(m_);
    expected_ = expected;
    arrived_ = 0;
  }
  // Arrive and wait; with a payload (shuffles), exchange 8 bytes: returns lane src's value.
  uint64_t arrive_and_wait(int lane = 0, uint64_t value = 0, int src = 0);
  void arrive_and_drop();
  void wake_for_abort() {
    gen_.fetch_add(1, std::memory_order_release);
    futex_wake_all(&gen_);
  }
  const char* what() const { return what_; }
  unsigned mask() const { return mask_; }

 private:
  void complete_locked();
  Launch* L_;
  const char* what_;
  unsigned mask_;
  std::mutex m_;
  int expected_ = 0, arrived_ = 0, waiters_ = 0;
  std::atomic<unsigned> gen_{0};
  uint64_t slots_[2][32] = {};
};

struct Warp {
  std::mutex m;
  std::map<unsigned, std::unique_ptr<Barrier>> groups;  // one barrier per shuffle mask (under m)
  std::atomic<unsigned> exited{0};                      // lanes that returned
};

struct Block {
  std::unique_ptr<Barrier> sync;  // __syncthreads
  std::atomic<int> alive{0};      // threads that have not returned
  std::vector<unsigned char> smem_storage;
  unsigned char* smem = nullptr;  // 16-byte aligned
  std::vector<std::unique_ptr<Warp>> warps;
};

struct ThreadState {
  std::atomic<const char*> waiting{nullptr};  // the site this thread waits at (for messages)
  std::atomic<unsigned> waiting_mask{0};
  unsigned block_linear = 0, thread_linear = 0;
};

struct Launch {
  std::mutex reg_m;                 // (first: destroyed last, after every Barrier)
  std::vector<Barrier*> registry;   // every barrier of the launch (woken when it fails)
  dim3 grid, block;
  size_t smem_bytes = 0;
  int cluster = 1, nthreads = 0, nworkers = 0;  // cluster: the blocks of a cluster (1: none)
  std::vector<Block> blocks;  // the blocks running now (one cluster)
  std::unique_ptr<Barrier> cluster_sync, step;
  std::vector<ThreadState> threads;
  std::atomic<int> running{0};
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> progress{0};
  std::mutex fail_m;
  std::string message;

  void fail(const std::string& why);
  std::string waiting_summary();
};

struct Ctx {
  Launch* L = nullptr;
  int rank = 0;   // block rank in the cluster
  int tid = 0;    // linear thread id in the block
  int worker = 0; // index into L->threads
  // The shuffle barriers this thread used (looked up without the warp's mutex, which would
  // order the lanes' memory accesses for ThreadSanitizer).
  struct Group {
    const void* warp;
    unsigned mask;
    Barrier* barrier;
  } groups[8] = {};
  int ngroups = 0;
};
inline thread_local Ctx ctx;

inline Barrier::Barrier(Launch* L, const char* what, unsigned mask) : L_(L), what_(what), mask_(mask) {
  std::lock_guard<std::mutex> lk(L->reg_m);
  L->registry.push_back(this);
}
inline Barrier::~Barrier() {
  std::lock_guard<std::mutex> lk(L_->reg_m);
  for (auto& b : L_->registry)
    if (b == this) b = nullptr;
}

inline void Barrier::complete_locked() {
  arrived_ = 0;
  L_->running.fetch_add(waiters_, std::memory_order_relaxed);
  waiters_ = 0;
  L_->progress.fetch_add(1, std::memory_order_relaxed);
  gen_.fetch_add(1, std::memory_order_release);
  futex_wake_all(&gen_);
}

inline uint64_t Barrier::arrive_and_wait(int lane, uint64_t value, int src) {
  Launch* L = L_;
  ThreadState& me = L->threads[ctx.worker];
  std::unique_lock<std::mutex> lk(m_);
  if (L->failed.load()) throw Abort{};
  const unsigned g = gen_.load(std::memory_order_relaxed);
  slots_[g & 1][lane] = value;
  if (++arrived_ == expected_) {
    complete_locked();
    return slots_[g & 1][src];
  }
  ++waiters_;
  me.waiting.store(what_, std::memory_order_relaxed);
  me.waiting_mask.store(mask_, std::memory_order_relaxed);
  // Relaxed: the bookkeeping must not order the threads' memory accesses, or ThreadSanitizer
  // would see every barrier as a synchronization of all threads and miss races.
  const int still_running = L->running.fetch_sub(1, std::memory_order_relaxed) - 1;
  lk.unlock();
  if (still_running == 0) L->fail("deadlock: every live thread waits at a barrier that cannot complete; " +
                                  L->waiting_summary());
  while (gen_.load(std::memory_order_acquire) == g) futex_wait(&gen_, g);
  me.waiting.store(nullptr, std::memory_order_relaxed);
  if (L->failed.load()) throw Abort{};
  std::lock_guard<std::mutex> lk2(m_);  // slots_ were written under m_
  return slots_[g & 1][src];
}

inline void Barrier::arrive_and_drop() {
  std::lock_guard<std::mutex> lk(m_);
  --expected_;
  if (arrived_ > 0 && arrived_ == expected_) complete_locked();
}

inline void Launch::fail(const std::string& why) {
  {
    std::lock_guard<std::mutex> lk(fail_m);
    if (failed.load()) return;
    message = why;
    failed.store(true);
  }
  std::lock_guard<std::mutex> lk(reg_m);
  for (Barrier* b : registry)
    if (b != nullptr) b->wake_for_abort();
}

inline std::string Launch::waiting_summary() {
  std::map<std::string, int> sites;
  for (const ThreadState& t : threads) {
    const char* w = t.waiting.load(std::memory_order_relaxed);
    if (w == nullptr) continue;
    char buf[160];
    const unsigned m = t.waiting_mask.load(std::memory_order_relaxed);
    if (m != 0) {
      std::snprintf(buf, sizeof buf, "%s(mask=0x%08x)", w, m);
    } else {
      std::snprintf(buf, sizeof buf, "%s", w);
    }
    ++sites[buf];
  }
  std::string s = "threads waiting at:";
  for (const auto& [site, n] : sites) s += " " + site + " x" + std::to_string(n);
  return s;
}

[[noreturn]] inline void fail_here(const std::string& why) {
  char where[96];
  std::snprintf(where, sizeof where, " (block (%u,%u,%u), thread (%u,%u,%u))", blockIdx.x, blockIdx.y, blockIdx.z,
                threadIdx.x, threadIdx.y, threadIdx.z);
  ctx.L->fail(why + where);
  throw Abort{};
}

inline Block& my_block() { return ctx.L->blocks[ctx.rank]; }

inline unsigned char* dynamic_smem() {
  Block& b = my_block();
  if (b.smem == nullptr) fail_here("dynamic shared memory used by a launch with 0 dynamic bytes");
  return b.smem;
}

struct StaticSharedUse {
  StaticSharedUse() {
    if (ctx.L != nullptr && ctx.L->blocks.size() > 1)
      fail_here("static __shared__ in a launch that runs several blocks at once (a cluster, or "
                "Config::concurrent > 1): use FASTASD_DYNAMIC_SMEM there");
  }
};

// ---------------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------------
struct Config {
  dim3 grid, block;
  size_t smem = 0;  // dynamic shared memory bytes
  int cluster = 1;  // blocks per cluster (along x)
  int concurrent = 1;  // without clusters: blocks run at once (their kernels must not use static
                       // __shared__ variables)
};

inline double watchdog_seconds() {
  const char* v = std::getenv("FASTASD_SIMT_WATCHDOG_S");
  return (v != nullptr && *v != '\0') ? std::atof(v) : 300.0;
}

// Runs kernel(args...) on every thread of the grid; throws LaunchError when the launch failed.
template <class Kernel, class... Args>
void launch(const Config& cfg, Kernel kernel, const Args&... args) {
  const unsigned nt = cfg.block.x * cfg.block.y * cfg.block.z;
  if (nt == 0 || nt > 1024) throw LaunchError("simt: block of " + std::to_string(nt) + " threads (1..1024)");
  if (cfg.cluster < 1 || cfg.cluster > 16 || cfg.grid.x % unsigned(cfg.cluster) != 0 || cfg.concurrent < 1 ||
      (cfg.cluster > 1 && cfg.concurrent > 1))
    throw LaunchError("simt: grid.x=" + std::to_string(cfg.grid.x) + " is not a multiple of the cluster size " +
                      std::to_string(cfg.cluster));
  const uint64_t nblocks = uint64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  if (nblocks == 0) throw LaunchError("simt: empty grid (a CUDA launch would fail: invalid configuration)");
  Launch L;
  L.grid = cfg.grid;
  L.block = cfg.block;
  L.smem_bytes = cfg.smem;
  L.cluster = cfg.cluster;
  L.nthreads = int(nt);
  const int at_once = cfg.cluster > 1 ? cfg.cluster : int(std::min<uint64_t>(uint64_t(cfg.concurrent), nblocks));
  L.nworkers = int(nt) * at_once;
  L.threads = std::vector<ThreadState>(size_t(L.nworkers));
  L.blocks = std::vector<Block>(size_t(at_once));
  const int nwarps = int((nt + 31) / 32);
  for (Block& b : L.blocks) {
    b.sync = std::make_unique<Barrier>(&L, "__syncthreads");
    if (cfg.smem > 0) {
      b.smem_storage.resize(cfg.smem + 16);
      b.smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(b.smem_storage.data()) + 15) &
                                                ~uintptr_t(15));
    }
    for (int w = 0; w < nwarps; ++w) b.warps.push_back(std::make_unique<Warp>());
  }
  L.cluster_sync = std::make_unique<Barrier>(&L, "cluster.sync");
  L.step = std::make_unique<Barrier>(&L, "(end of block)");
  L.running.store(L.nworkers);
  const uint64_t nrounds = (nblocks + uint64_t(at_once) - 1) / uint64_t(at_once);

  // Between clusters the workers meet at `step`; worker 0 resets the per-block state meanwhile.
  auto reset_cluster = [&L, &cfg]() {
    for (Block& b : L.blocks) {
      b.sync->reset(L.nthreads);
      b.alive.store(L.nthreads);
      if (b.smem != nullptr) std::memset(b.smem, 0xFF, cfg.smem);
      for (auto& w : b.warps) w->exited.store(0, std::memory_order_relaxed);
    }
    L.cluster_sync->reset(L.nworkers);
  };
  reset_cluster();
  L.step->reset(L.nworkers);

  auto worker = [&](int index) {
    ctx = Ctx{};
    ctx.L = &L;
    ctx.worker = index;
    ctx.rank = index / int(nt);
    ctx.tid = index % int(nt);
    blockDim = cfg.block;
    gridDim = cfg.grid;
    threadIdx = {ctx.tid % cfg.block.x, (ctx.tid / cfg.block.x) % cfg.block.y,
                 ctx.tid / (cfg.block.x * cfg.block.y)};
    try {
      for (uint64_t c = 0; c < nrounds; ++c) {
        const uint64_t lb = c * uint64_t(at_once) + uint64_t(ctx.rank);
        blockIdx = {unsigned(lb % cfg.grid.x), unsigned((lb / cfg.grid.x) % cfg.grid.y),
                    unsigned(lb / (uint64_t(cfg.grid.x) * cfg.grid.y))};
        if (lb < nblocks) kernel(args...);  // (the last round may have fewer blocks)
        // The thread has returned: it leaves its block's and cluster's barriers.
        Block& b = my_block();
        {
          Warp& w = *b.warps[size_t(ctx.tid / 32)];
          w.exited.fetch_or(1u << (ctx.tid % 32), std::memory_order_relaxed);
        }
        b.sync->arrive_and_drop();
        // A finished block's shared memory is gone: poison it for the blocks of its cluster
        // that might still read it (through map_shared_rank) (a race ThreadSanitizer reports).
        if (b.alive.fetch_sub(1) == 1 && b.smem != nullptr && L.cluster > 1) std::memset(b.smem, 0xFF, cfg.smem);
        L.cluster_sync->arrive_and_drop();
        L.progress.fetch_add(1, std::memory_order_relaxed);
        if (c + 1 < nrounds) {
          L.step->arrive_and_wait();  // everybody is done with cluster c ...
          if (index == 0) reset_cluster();
          L.step->arrive_and_wait();  // ... and the state is reset for cluster c + 1
        }
      }
    } catch (const Abort&) {
    } catch (const std::exception& e) {
      L.fail(std::string("exception in a kernel thread: ") + e.what());
    }
    if (L.running.fetch_sub(1, std::memory_order_relaxed) - 1 == 0 && !L.failed.load()) {
      // Nobody is running: fine if all finished, a deadlock if some still wait.
      bool waiting = false;
      for (const ThreadState& t : L.threads) waiting = waiting || t.waiting.load(std::memory_order_relaxed) != nullptr;
      if (waiting) L.fail("deadlock: a thread waits for threads that have returned; " + L.waiting_summary());
    }
  };

  std::vector<std::thread> pool;
  pool.reserve(size_t(L.nworkers));
  std::atomic<bool> done{false};
  std::mutex wd_m;
  std::condition_variable wd_cv;
  std::thread watchdog([&]() {
    const double limit = watchdog_seconds();
    uint64_t last = L.progress.load();
    auto since = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lk(wd_m);
    while (!done.load()) {
      wd_cv.wait_for(lk, std::chrono::milliseconds(200));
      const uint64_t now = L.progress.load();
      if (now != last) {
        last = now;
        since = std::chrono::steady_clock::now();
      } else if (std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count() > limit) {
        if (L.failed.load()) {
          // Failed, and still no thread finished: they loop without reaching a barrier.
          std::fprintf(stderr, "simt: %s; the kernel threads do not stop (a loop without barriers): exiting\n",
                       L.message.c_str());
          std::_Exit(70);
        }
        L.fail("watchdog: no barrier completed for " + std::to_string(limit) + " s; " + L.waiting_summary());
        since = std::chrono::steady_clock::now();
      }
    }
  });
  for (int i = 0; i < L.nworkers; ++i) pool.emplace_back(worker, i);
  for (auto& t : pool) t.join();
  {
    std::lock_guard<std::mutex> lk(wd_m);
    done.store(true);
  }
  wd_cv.notify_all();
  watchdog.join();
  if (L.failed.load()) throw LaunchError(L.message);
}

// ---------------------------------------------------------------------------------------------
// Synchronization and warp intrinsics
// ---------------------------------------------------------------------------------------------
inline void syncthreads() { my_block().sync->arrive_and_wait(); }

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

// The value of lane src among the lanes of mask (the calling lane must be one of them).
template <class T>
T shuffle(unsigned mask, T v, int src, const char* what) {
  const int lane = ctx.tid % 32;
  if (((mask >> lane) & 1u) == 0) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s: lane %d calls with mask 0x%08x, which does not name it", what, lane, mask);
    fail_here(buf);
  }
  if (src < 0 || src > 31 || ((mask >> src) & 1u) == 0) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s: lane %d reads lane %d, outside mask 0x%08x (undefined on the GPU)", what,
                  lane, src, mask);
    fail_here(buf);
  }
  Warp& w = *my_block().warps[size_t(ctx.tid / 32)];
  Barrier* g = nullptr;
  for (int i = 0; i < ctx.ngroups && g == nullptr; ++i)
    if (ctx.groups[i].warp == &w && ctx.groups[i].mask == mask) g = ctx.groups[i].barrier;
  if (g == nullptr) {
    std::lock_guard<std::mutex> lk(w.m);
    auto it = w.groups.find(mask);
    if (it == w.groups.end()) {
      it = w.groups.emplace(mask, std::make_unique<Barrier>(ctx.L, what, mask)).first;
      it->second->reset(std::popcount(mask));
    }
    g = it->second.get();
    if (ctx.ngroups < 8) ctx.groups[ctx.ngroups++] = {&w, mask, g};
  }
  const unsigned gone = mask & w.exited.load(std::memory_order_relaxed);
  if (gone != 0) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s: mask 0x%08x names lanes that have returned (0x%08x)", what, mask, gone);
    fail_here(buf);
  }
  return from_bits<T>(g->arrive_and_wait(lane, to_bits(v), src));
}

}  // namespace simt

inline void __syncthreads() { simt::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)simt::shuffle(mask, 0, threadIdx.x % 32, "__syncwarp"); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = simt::ctx.tid % 32;
  int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return simt::shuffle(mask, v, src, "__shfl_xor_sync");
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  const int lane = simt::ctx.tid % 32;
  const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return simt::shuffle(mask, v, src, "__shfl_sync");
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = simt::ctx.tid % 32;
  int src = lane + int(delta);
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return simt::shuffle(mask, v, src, "__shfl_down_sync");
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = simt::ctx.tid % 32;
  int src = lane - int(delta);
  if (src < (lane & ~(width - 1))) src = lane;
  return simt::shuffle(mask, v, src, "__shfl_up_sync");
}

// Atomics (on global or shared memory alike); each returns the old value.
template <class T>
T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
inline int atomicOr(int* p, int v) { return std::atomic_ref<int>(*p).fetch_or(v); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_or(v); }
inline int atomicMax(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline void __threadfence() {
  static std::atomic<int> fence{0};
  fence.fetch_add(0, std::memory_order_seq_cst);  // (ThreadSanitizer does not model bare fences)
}
template <class T>
T __ldcg(const T* p) { return *p; }
[[noreturn]] inline void __trap() { simt::fail_here("__trap() executed"); }

// Bit casts.
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }

// CUDA's min/max overloads: on floats they are fminf/fmaxf (a NaN operand is dropped).
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
#define SIMT_INT_MINMAX(T)                              \
  inline T max(T a, T b) { return a > b ? a : b; }      \
  inline T min(T a, T b) { return a < b ? a : b; }
SIMT_INT_MINMAX(int)
SIMT_INT_MINMAX(unsigned int)
SIMT_INT_MINMAX(long)
SIMT_INT_MINMAX(unsigned long)
SIMT_INT_MINMAX(long long)
SIMT_INT_MINMAX(unsigned long long)
#undef SIMT_INT_MINMAX

// sin(pi x), cos(pi x), exact at multiples of 1/2 (as CUDA's sincospi).
inline void sincospi(double x, double* s, double* c) {
  double r = x - 2.0 * std::nearbyint(x / 2.0);  // [-1, 1]
  const double q = std::nearbyint(2.0 * r);      // quarter turns, -2..2
  const double f = r - q / 2.0;                  // [-1/4, 1/4]
  const double pi = 3.14159265358979323846;
  const double sf = std::sin(pi * f), cf = std::cos(pi * f);
  switch (((int(q) % 4) + 4) % 4) {
    case 0: *s = sf; *c = cf; break;
    case 1: *s = cf; *c = -sf; break;
    case 2: *s = -sf; *c = -cf; break;
    default: *s = -cf; *c = sf; break;
  }
}

// Cooperative groups: the thread block and the thread-block cluster.
namespace cooperative_groups {
struct thread_block {
  void sync() const { __syncthreads(); }
};
inline thread_block this_thread_block() { return {}; }
struct cluster_group {
  void sync() const {
    if (simt::ctx.L->cluster == 1 && simt::ctx.L->blocks.size() > 1)
      simt::fail_here("cluster.sync() in a launch without clusters that runs several blocks at once");
    simt::ctx.L->cluster_sync->arrive_and_wait();
  }
  unsigned int num_blocks() const { return unsigned(simt::ctx.L->cluster); }
  unsigned int block_rank() const { return unsigned(simt::ctx.rank); }
  // The address in block `rank`'s shared memory that corresponds to p in this block's.
  template <class T>
  T* map_shared_rank(T* p, unsigned int rank) const {
    simt::Launch& L = *simt::ctx.L;
    if (rank >= unsigned(L.cluster)) simt::fail_here("map_shared_rank: rank outside the cluster");
    const unsigned char* mine = L.blocks[size_t(simt::ctx.rank)].smem;
    const auto* q = reinterpret_cast<const unsigned char*>(p);
    if (mine == nullptr || q < mine || q >= mine + L.smem_bytes)
      simt::fail_here("map_shared_rank: the pointer is not into this block's dynamic shared memory");
    return reinterpret_cast<T*>(L.blocks[rank].smem + (q - mine));
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups
