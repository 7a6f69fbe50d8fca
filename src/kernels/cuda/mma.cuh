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

// c += A B for one m16n8k16 step. A holds 16 weight rows (lane 4g + t: rows g and g + 8 in
// slots 2t, 2t + 1 (a0: row g, a1: row g + 8) and 2t + 8, 2t + 9 (a2, a3)), every column of B
// the vector v (b_lo: slots 2t, 2t + 1, b_hi: 2t + 8, 2t + 9), so lane 4g + t ends with row
// g in c[0] (and c[1]) and row g + 8 in c[2] (and c[3]). The tensor cores' sum does not
// depend on which operand holds the weights (checked bitwise on an H100).
#define ZM_MMA(AB) \
  asm("mma.sync.aligned.m16n8k16.row.col.f32." AB "." AB ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, " \
      "{%8,%9}, {%0,%1,%2,%3};" \
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) \
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b_lo), "r"(b_hi))
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b_lo, uint32_t b_hi) {
#ifdef __CUDA_ARCH__
  if constexpr (kSame<T, __half>) {
    ZM_MMA("f16");
  } else {
    ZM_MMA("bf16");
  }
#else
  emulated_mma<T>(c, a0, a1, a2, a3, b_lo, b_hi);  // tests/emulation/emu.h
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t bits_of(const T& v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Lane t's share of a 16-value block: values 4t..4t+3 as (4t, 4t + 2) in lo and (4t + 1,
// 4t + 3) in hi, of v (8-byte aligned) ...
__device__ __forceinline__ void v_slots(const uint16_t* v, int t, uint32_t& lo, uint32_t& hi) {
  const uint2 u = *reinterpret_cast<const uint2*>(v + 4 * t);
  lo = __byte_perm(u.x, u.y, 0x5410);
  hi = __byte_perm(u.x, u.y, 0x7632);
}

// ... and of a weight row's step (row: 16-byte aligned; o: the step's first byte, 2 * BITS
// bytes a step), dequantised with sb = (scale, bias). A 4-bit step is half of a 16-byte load
// (the next step's load is the same one, merged by the compiler); a byte permute (sel: bytes
// 2t, 2t + 1 to bytes 0 and 2) and a shift spread lane t's fields to (value, value) pairs; the
// mask and dequant2's magic number then make one three-input logic op per pair.
template <int BITS, typename T>
__device__ __forceinline__ void w_slots(const unsigned char* row, int o, int t, uint32_t sel,
                                        uint32_t sb, uint32_t& lo, uint32_t& hi) {
  constexpr uint32_t kMask = BITS == 4 ? 0x000F000Fu : 0x00FF00FFu;
  uint32_t u;
  if constexpr (BITS == 4) {
    const uint4 c = *reinterpret_cast<const uint4*>(row + (o & ~15));
    u = o & 8 ? __byte_perm(c.z, c.w, sel) : __byte_perm(c.x, c.y, sel);
  } else {
    u = *reinterpret_cast<const uint32_t*>(row + o + 4 * t);
  }
  if constexpr (BITS <= Pair<T>::kMaxBits) {
    using T2 = typename Pair<T>::T2;
    const uint32_t s2 = __byte_perm(sb, sb, 0x1010), b2 = __byte_perm(sb, sb, 0x3232);
    const T2 s = *reinterpret_cast<const T2*>(&s2), b = *reinterpret_cast<const T2*>(&b2);
    lo = bits_of(dequant2<T>(u, kMask, s, b));
    hi = bits_of(dequant2<T>(u >> BITS, kMask, s, b));
  } else {  // 8-bit fields in bfloat16: wider than its magic number; fp32 fma, one rounding
    const float s = __uint_as_float(sb << 16);
    const float b = __uint_as_float(sb & 0xFFFF0000u);
    auto pair = [&](uint32_t f) {
      f &= kMask;
      return bits_of(__floats2bfloat162_rn(fmaf(static_cast<float>(f & 0xFFFFu), s, b),
                                           fmaf(static_cast<float>(f >> 16), s, b)));
    };
    lo = pair(u);
    hi = pair(u >> 8);
  }
}

// What one warp stages in shared memory for mma_rows: a ring of NS slots, each holding one
// part of 16 weight rows (whole groups along the reduction, RS bytes a row: the largest
// part's bytes padded by 16 so that the 8 rows a load reads fall on different banks), with
// the same part of v where RING_V (VB bytes), and all of the rows' scales and biases (raw
// bits, the 16 rows back to back as in global memory). PARTS parts, AHEAD of them in flight
// beside the one being reduced.
template <int BITS, int GS, int N, int PARTS, int AHEAD, bool RING_V>
struct MmaStage {
  static constexpr int G = N / GS;
  static constexpr int GB = GS * BITS / 8;  // bytes of one row per group: a multiple of 16
  static constexpr int RS = (G + PARTS - 1) / PARTS * GB + 16;
  static constexpr int VB = RING_V ? (G + PARTS - 1) / PARTS * GS * 2 : 0;
  static constexpr int NS = AHEAD + 1 < PARTS ? AHEAD + 1 : PARTS;
  unsigned char w[NS][16 * RS + VB];
  uint16_t s[16 * G];
  uint16_t b[16 * G];
};

// Issues the asynchronous copy of v (N values of T, 16-byte aligned) to shared memory, shared
// by the block's `threads` threads: mma_rows waits for it.
template <int N, typename T>
__device__ __forceinline__ void stage_v(uint16_t* sv, const T* v, int thread, int threads) {
  for (int i = thread; i < N / 8; i += threads) {
    copy_async16(sv + 8 * i, v + 8 * i);
  }
}

// The dot products of 16 consecutive weight rows (rows row0.. of w_all, N * BITS / 8 bytes
// each; their 16 * G scales and biases in s_all and b_all; all 16-byte aligned) with v (N
// values of T: if BLOCK_V, in shared memory, its copy issued by stage_v before by the whole
// block, then every warp of the block calls this; else in global memory, and this warp copies
// it part by part with the rows), MLX's way, by one warp. The rows are copied to
// shared memory asynchronously in PARTS parts of whole groups along the reduction, AHEAD in
// flight: a part's steps run once it has landed, while the next ones load, and its slot of
// the ring takes the part AHEAD + 1 further on. Keeping only a few parts in flight makes
// every warp's first parts land before any warp's last: with all of them requested up front,
// each warp's first part waited behind other warps' whole rows and the steps (one dependent
// chain of N / 16 mma) started only when nearly all data had arrived. A step reads only
// shared memory. Lane 4g + t ends with row g in c[0] and row g + 8 in c[2].
//
// The weights ride in the mma's A operand (16 rows) and v in B: the first version put v in A
// (16 copies of one vector) and 8 weight rows in B, twice the mma steps and warps for the
// same rows (moe_qmv.rs has the timings).
template <int BITS, int GS, int N, int PARTS, int AHEAD, bool BLOCK_V, typename T, typename S>
__device__ __forceinline__ void mma_rows(float (&c)[4],
                                         MmaStage<BITS, GS, N, PARTS, AHEAD, !BLOCK_V>& st,
                                         const uint16_t* v, const uint32_t* w_all,
                                         const S* s_all, const S* b_all, long long row0,
                                         int lane) {
  using St = MmaStage<BITS, GS, N, PARTS, AHEAD, !BLOCK_V>;
  constexpr int RB = N * BITS / 8;
  constexpr int G = St::G, GB = St::GB, RS = St::RS;
  constexpr int STEPS = GS / 16;  // mma steps per group
  const auto* w = reinterpret_cast<const unsigned char*>(w_all) + row0 * RB;
  const auto* s = reinterpret_cast<const uint16_t*>(s_all) + row0 * G;
  const auto* b = reinterpret_cast<const uint16_t*>(b_all) + row0 * G;
  auto q0 = [](int p) { return p * G / PARTS; };  // part p's first group
  auto fetch = [&](int p) {
    const int n = (q0(p + 1) - q0(p)) * GB / 16;  // 16-byte chunks per row
    for (int i = lane; i < 16 * n; i += 32) {
      const int r = i / n;
      const int o = (i % n) * 16;
      copy_async16(st.w[p % St::NS] + r * RS + o, w + r * RB + q0(p) * GB + o);
    }
    if (!BLOCK_V) {  // the part's values of v after the rows
      for (int i = lane; i < (q0(p + 1) - q0(p)) * GS / 8; i += 32) {
        copy_async16(st.w[p % St::NS] + 16 * RS + 16 * i, v + q0(p) * GS + 8 * i);
      }
    }
  };
  for (int i = lane; i < 2 * G; i += 32) {
    copy_async16(st.s + 8 * i, s + 8 * i);
    copy_async16(st.b + 8 * i, b + 8 * i);
  }
  fetch(0);
  commit_async();  // with v, scales and biases
#pragma unroll
  for (int p = 1; p < AHEAD; ++p) {
    fetch(p);
    commit_async();
  }
  const int g = lane >> 2, t = lane & 3;
  const uint32_t sel = 2 * t | (2 * t + 1) << 8;
#pragma unroll
  for (int p = 0; p < PARTS; ++p) {
    wait_async<AHEAD - 1>();  // part p has landed; one group is committed per part
    // Also: every lane is done with part p - 1, whose slot the next load reuses.
    if (BLOCK_V && p == 0) {
      __syncthreads();  // v, copied by the whole block
    } else {
      __syncwarp();
    }
    if (p + AHEAD < PARTS) {
      fetch(p + AHEAD);
    }
    commit_async();
    const unsigned char* slot = st.w[p % St::NS];
    // v from the part's first value on
    const uint16_t* pv =
        BLOCK_V ? v + q0(p) * GS : reinterpret_cast<const uint16_t*>(slot + 16 * RS);
#pragma unroll 2
    for (int q = q0(p); q < q0(p + 1); ++q) {
      auto sb = [&](int r) { return st.s[r * G + q] | uint32_t{st.b[r * G + q]} << 16; };
      const uint32_t sb0 = sb(g), sb1 = sb(g + 8);
#pragma unroll
      for (int kk = 0; kk < STEPS; ++kk) {
        const int o = (q - q0(p)) * GB + kk * 2 * BITS;  // the step's bytes in the part
        uint32_t v_lo, v_hi, w0_lo, w0_hi, w1_lo, w1_hi;
        v_slots(pv + (q - q0(p)) * GS + 16 * kk, t, v_lo, v_hi);
        w_slots<BITS, T>(slot + g * RS, o, t, sel, sb0, w0_lo, w0_hi);
        w_slots<BITS, T>(slot + (g + 8) * RS, o, t, sel, sb1, w1_lo, w1_hi);
        mma<T>(c, w0_lo, w1_lo, w0_hi, w1_hi, v_lo, v_hi);
      }
    }
  }
}

}  // namespace zm
