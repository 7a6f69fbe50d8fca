// Quantised dot products on the tensor cores in the order of MLX's gather_qmm when it runs its
// qmm_sm80 kernel (half or bfloat16 activations, 4- or 8-bit weights, at least 8 (token,
// expert) rows, out features a multiple of 128): each weight dequantised in T
// (dequant2), then one mma.sync m16n8k16 step with fp32 accumulators per 16-value block of the
// reduction, in order, from zero, rounded to T at the end. The tensor cores do not round each
// step like an IEEE fma, so only the same steps give the same numbers; the order of the 16
// values inside one step does not matter (checked on an H100 against every permutation tried).
namespace zm {

// A 16-byte global -> shared copy that does not wait (cp.async); the warp's other lanes see it
// after the wait and a __syncwarp.
__device__ __forceinline__ void copy_async16(void* dst, const void* src) {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src));
#else
  memcpy(dst, src, 16);
#endif
}

// Closes the group of copies issued since the last one; wait_async<N> waits until at most N
// groups are still in flight.
__device__ __forceinline__ void commit_async() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wait_async() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// c += A B for one m16n8k16 step. Every row of A holds v (a_lo: the step's values in slots 2t,
// 2t + 1 of lane t; a_hi: slots 2t + 8, 2t + 9), column n of B weight row n (lane 4n + t holds
// its values for the same slots), so lane 4g + t ends with rows 2t and 2t + 1 in c[0], c[1].
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], uint32_t a_lo, uint32_t a_hi, uint32_t b_lo,
                                    uint32_t b_hi) {
#ifdef __CUDA_ARCH__
  if constexpr (kSame<T, __half>) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%4,%5,%5}, "
        "{%6,%7}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a_lo), "r"(a_hi), "r"(b_lo), "r"(b_hi));
  } else {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%4,%5,%5}, "
        "{%6,%7}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a_lo), "r"(a_hi), "r"(b_lo), "r"(b_hi));
  }
#else
  emulated_mma<T>(c, a_lo, a_hi, b_lo, b_hi);  // tests/emulation/emu.h
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t bits_of(const T& v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Lane t's share of a 16-value block: values 4t..4t+3 as (4t, 4t + 2) in lo and (4t + 1,
// 4t + 3) in hi, of v (8-byte aligned) ...
template <typename T>
__device__ __forceinline__ void v_slots(const T* v, int t, uint32_t& lo, uint32_t& hi) {
  const uint2 u = *reinterpret_cast<const uint2*>(v + 4 * t);
  lo = __byte_perm(u.x, u.y, 0x5410);
  hi = __byte_perm(u.x, u.y, 0x7632);
}

// ... and of a weight row's block (blk: its first byte), dequantised with sb = (scale, bias).
template <int BITS, typename T>
__device__ __forceinline__ void w_slots(const unsigned char* blk, int t, uint32_t sb,
                                        uint32_t& lo, uint32_t& hi) {
  uint32_t f_lo, f_hi;
  if constexpr (BITS == 4) {
    const uint32_t h = *reinterpret_cast<const uint16_t*>(blk + 2 * t);
    f_lo = (h & 0xFu) | ((h << 8) & 0xF0000u);
    f_hi = ((h >> 4) & 0xFu) | ((h << 4) & 0xF0000u);
  } else {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(blk + 4 * t);
    f_lo = u & 0x00FF00FFu;
    f_hi = (u >> 8) & 0x00FF00FFu;
  }
  if constexpr (BITS <= Pair<T>::kMaxBits) {
    using T2 = typename Pair<T>::T2;
    const uint32_t s2 = __byte_perm(sb, sb, 0x1010);
    const uint32_t b2 = __byte_perm(sb, sb, 0x3232);
    lo = bits_of(dequant2<T>(f_lo, *reinterpret_cast<const T2*>(&s2),
                             *reinterpret_cast<const T2*>(&b2)));
    hi = bits_of(dequant2<T>(f_hi, *reinterpret_cast<const T2*>(&s2),
                             *reinterpret_cast<const T2*>(&b2)));
  } else {  // 8-bit fields in bfloat16: wider than its magic number; fp32 fma, one rounding
    const float s = __uint_as_float(sb << 16);
    const float b = __uint_as_float(sb & 0xFFFF0000u);
    auto pair = [&](uint32_t f) {
      return bits_of(__floats2bfloat162_rn(fmaf(static_cast<float>(f & 0xFFFFu), s, b),
                                           fmaf(static_cast<float>(f >> 16), s, b)));
    };
    lo = pair(f_lo);
    hi = pair(f_hi);
  }
}

// The dot products of 8 weight rows of expert data (row r: RB = N * BITS / 8 bytes at
// w + r * RB, scales and biases for group q at s[r * (N / GS) + q], b[...]) with v (N values
// of T), MLX's way, by one warp. The rows are staged in shared memory (ws: row r at r * RS;
// sb: (scale, bias) pairs in T, row r at r * GP) with asynchronous copies issued up front in
// four parts along the reduction, and the steps of each part run as soon as it has landed.
// Lane 4g + t gets rows 2t, 2t + 1 in c[0], c[1].
template <int BITS, int GS, int N, int RS, int GP, typename T, typename S>
__device__ __forceinline__ void mma_rows(float (&c)[4], const uint32_t* w, const S* s,
                                         const S* b, unsigned char* ws, uint32_t* sb, const T* v,
                                         int lane) {
  constexpr int RB = N * BITS / 8;
  constexpr int CHUNKS = RB / 16;  // per row
  constexpr int G = N / GS;
  const unsigned char* src = reinterpret_cast<const unsigned char*>(w);
  auto part_end = [](int p) { return (p + 1) * CHUNKS / 4; };
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    for (int i = lane; i < 8 * (part_end(p) - p * CHUNKS / 4); i += 32) {
      const int r = i % 8;
      const int o = (p * CHUNKS / 4 + i / 8) * 16;
      copy_async16(ws + r * RS + o, src + r * RB + o);
    }
    commit_async();
  }
  for (int i = lane; i < 8 * G; i += 32) {
    const T pair[2] = {from_f<T>(to_f(s[i])), from_f<T>(to_f(b[i]))};
    sb[i / G * GP + i % G] = *reinterpret_cast<const uint32_t*>(pair);
  }
  const int g = lane >> 2;
  const int t = lane & 3;
  const unsigned char* row = ws + g * RS;
  auto steps = [&](int p) {
    // The 16-value blocks whose bytes part p completes.
    const int kb_end = part_end(p) * 16 / (2 * BITS);
#pragma unroll 4
    for (int kb = p == 0 ? 0 : part_end(p - 1) * 16 / (2 * BITS); kb < kb_end; ++kb) {
      uint32_t a_lo, a_hi, b_lo, b_hi;
      v_slots(v + 16 * kb, t, a_lo, a_hi);
      w_slots<BITS, T>(row + kb * 2 * BITS, t, sb[g * GP + kb * 16 / GS], b_lo, b_hi);
      mma<T>(c, a_lo, a_hi, b_lo, b_hi);
    }
  };
  wait_async<3>();
  __syncwarp();
  steps(0);
  wait_async<2>();
  __syncwarp();
  steps(1);
  wait_async<1>();
  __syncwarp();
  steps(2);
  wait_async<0>();
  __syncwarp();
  steps(3);
}

}  // namespace zm
