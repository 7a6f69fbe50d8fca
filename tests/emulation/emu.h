// Host emulation of the CUDA execution model, enough to run a catalog kernel body on the CPU:
// blocks one after another, a std::thread per CUDA thread of a block, std::barrier for __syncthreads and
// for warp shuffles, __shared__ as function statics (one block at a time shares them).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct Dim { unsigned x, y, z; };
thread_local Dim threadIdx, blockIdx;
static Dim blockDim;
static std::barrier<>* block_bar;
static std::barrier<>* warp_bar[64];
// Shuffles go through two slot sets in turn, one barrier each: a lane rewrites a set only after
// the next shuffle's barrier, when every lane has read it.
static float warp_slot[2][64][32];
static int warp_slot_i[2][64][32];
thread_local int shuffle_set;
inline void __syncthreads() { block_bar->arrive_and_wait(); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __int_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { return __int_as_float(v); }
inline float __expf(float x) { return std::exp(x); }
// The GPU's rsqrtf is an approximation (MUFU.RSQ); the host stands in the exact value.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <typename V>
inline V shuffle(V (&slots)[2][64][32], V v, int src_lane) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32, s = shuffle_set ^= 1;
  slots[s][w][l] = v; warp_bar[w]->arrive_and_wait();
  return slots[s][w][src_lane];
}
inline float __shfl_xor_sync(unsigned, float v, int off) {
  return shuffle(warp_slot, v, (threadIdx.x % 32) ^ off);
}
inline int __shfl_xor_sync(unsigned, int v, int off) {
  return shuffle(warp_slot_i, v, (threadIdx.x % 32) ^ off);
}
inline float __shfl_sync(unsigned, float v, int src) { return shuffle(warp_slot, v, src); }
inline int __shfl_sync(unsigned, int v, int src) { return shuffle(warp_slot_i, v, src); }
inline void __syncwarp(unsigned = 0xffffffffu) { warp_bar[threadIdx.x / 32]->arrive_and_wait(); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = x | (unsigned long long)y << 32;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
using std::min;
// cuda_fp16.h leaves __hfma2 device-only: each lane computed exactly in double and rounded
// once, as the device's fma.rn.f16x2.
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  auto lane = [](__half x, __half y, __half z) {
    return __double2half((double)__half2float(x) * (double)__half2float(y) + (double)__half2float(z));
  };
  return __halves2half2(lane(__low2half(a), __low2half(b), __low2half(c)),
                        lane(__high2half(a), __high2half(b), __high2half(c)));
}
// One mma.sync m16n8k16 step (row.col, fp32 accumulators) as mma.cuh issues it: lane 4g + t
// holds A's rows g (a0: columns 2t, 2t + 1; a2: 2t + 8, 2t + 9) and g + 8 (a1, a3) and B's
// column g (b_lo: rows 2t, 2t + 1; b_hi: 2t + 8, 2t + 9), and gets C's rows g (c[0], c[1]) and
// g + 8 (c[2], c[3]) at columns 2t, 2t + 1. The lanes' fragments meet in two slot sets used in
// turn, one warp barrier each (as the shuffles); exact products summed in double, rounded
// once (the tensor cores round differently: the cuda tests check those).
static unsigned mma_slot[2][64][32][6];
thread_local int mma_set;
template <typename T>
void emulated_mma(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                  unsigned b_lo, unsigned b_hi) {
  static_assert(sizeof(T) == 2, "half types only");
  auto lo = [](unsigned u) { __half2 h; std::memcpy(&h, &u, 4); return (double)__low2float(h); };
  auto hi = [](unsigned u) { __half2 h; std::memcpy(&h, &u, 4); return (double)__high2float(h); };
  const int w = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const int s = mma_set ^= 1;
  unsigned(&lanes)[32][6] = mma_slot[s][w];
  unsigned* mine = lanes[threadIdx.x % 32];
  mine[0] = a0, mine[1] = a1, mine[2] = a2, mine[3] = a3, mine[4] = b_lo, mine[5] = b_hi;
  warp_bar[w]->arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    const int upper = i / 2, col = 2 * t + i % 2;  // row g + 8 * upper
    double d = c[i];
    for (int src = 0; src < 4; ++src) {
      const unsigned* a = lanes[4 * g + src];
      const unsigned* b = lanes[4 * col + src];
      d += lo(a[upper]) * lo(b[4]) + hi(a[upper]) * hi(b[4]) + lo(a[2 + upper]) * lo(b[5]) +
           hi(a[2 + upper]) * hi(b[5]);
    }
    c[i] = (float)d;
  }
}
// A thread that leaves the kernel drops out of the block's later __syncthreads, as on the GPU;
// the block barrier is made anew for each block.
struct FreshBlockBarrier {
  void operator()() noexcept { delete block_bar; block_bar = new std::barrier<>(blockDim.x); }
};
// One std::thread per thread of a block, reused for every block in turn: creating threads per
// block made the larger launches take tens of seconds.
template <typename F>
void launch(Dim grid, Dim block, F body) {
  blockDim = block;
  int n = block.x;
  block_bar = new std::barrier<>(n);
  for (int w = 0; w < n / 32; ++w) { warp_bar[w] = new std::barrier<>(32); }
  std::barrier<FreshBlockBarrier> block_done(n);
  std::vector<std::thread> ts;
  for (int t = 0; t < n; ++t)
    ts.emplace_back([&, t] {
      threadIdx = {(unsigned)t, 0, 0};
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          blockIdx = {bx, by, 0};
          body();
          block_bar->arrive_and_drop();
          block_done.arrive_and_wait();
        }
    });
  for (auto& t : ts) t.join();
  delete block_bar;
  for (int w = 0; w < n / 32; ++w) delete warp_bar[w];
}
