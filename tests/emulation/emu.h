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
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
using std::min;
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
