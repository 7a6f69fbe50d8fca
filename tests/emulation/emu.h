// Host emulation of the CUDA execution model, enough to run a catalog kernel body on the CPU:
// blocks one after another, a std::thread per CUDA thread, std::barrier for __syncthreads and
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
static float warp_slot[64][32];
static int warp_slot_i[64][32];
inline void __syncthreads() { block_bar->arrive_and_wait(); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __int_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __shfl_xor_sync(unsigned, float v, int off) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  warp_slot[w][l] = v; warp_bar[w]->arrive_and_wait();
  float r = warp_slot[w][l ^ off]; warp_bar[w]->arrive_and_wait(); return r;
}
inline int __shfl_xor_sync(unsigned, int v, int off) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  warp_slot_i[w][l] = v; warp_bar[w]->arrive_and_wait();
  int r = warp_slot_i[w][l ^ off]; warp_bar[w]->arrive_and_wait(); return r;
}
inline float __shfl_sync(unsigned, float v, int src) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  warp_slot[w][l] = v; warp_bar[w]->arrive_and_wait();
  float r = warp_slot[w][src]; warp_bar[w]->arrive_and_wait(); return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
using std::min;
template <typename F>
void launch(Dim grid, Dim block, F body) {
  blockDim = block;
  int n = block.x;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> b(n);
      block_bar = &b;
      for (int w = 0; w < n / 32; ++w) { warp_bar[w] = new std::barrier<>(32); }
      std::vector<std::thread> ts;
      for (int t = 0; t < n; ++t)
        ts.emplace_back([=] { threadIdx = {(unsigned)t, 0, 0}; blockIdx = {bx, by, 0}; body(); });
      for (auto& t : ts) t.join();
      for (int w = 0; w < n / 32; ++w) delete warp_bar[w];
    }
}
