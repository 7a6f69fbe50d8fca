// Dequantisation of two MLX affine-quantised values at once, in T (half or bfloat16), as MLX
// does it: w = q * scale + bias by one fused multiply-add rounded once to T.
namespace zm {

// Two values of T in one 32-bit register, and the T whose bits OR-ed with a field q give
// kMagic + q exactly (q < 1024 for half, q < 128 for bfloat16); none for float.
template <typename T>
struct Pair {
  static constexpr int kMaxBits = 0;
};
template <>
struct Pair<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic = 0x64006400u;  // 1024, 1024
  static constexpr int kMaxBits = 10;
};
template <>
struct Pair<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300u;  // 128, 128
  static constexpr int kMaxBits = 7;
};

// (a & m) | c in one three-input logic op. Written in C++ with m and c constants, the compiler
// emits two (an and, then an or: it takes one immediate per op); this was a sixth of the
// instructions of the tensor-core kernels' steps (moe_qmv.rs has the timings).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t m, uint32_t c) {
#ifdef __CUDA_ARCH__
  asm("lop3.b32 %0, %0, %1, %2, 0xEA;" : "+r"(a) : "r"(m), "r"(c));
  return a;
#else
  return (a & m) | c;
#endif
}

// The fields word & mask = q0 | q1 << 16 -> (w0, w1). A field OR-ed into the mantissa of a
// magic number gives kMagic + q exactly; subtracting the magic is exact, the fma rounds once.
template <typename T, typename T2 = typename Pair<T>::T2>
__device__ __forceinline__ T2 dequant2(uint32_t word, uint32_t mask, T2 s2, T2 b2) {
  const uint32_t m = Pair<T>::kMagic, u = and_or(word, mask, m);
  return __hfma2(__hsub2(*reinterpret_cast<const T2*>(&u), *reinterpret_cast<const T2*>(&m)), s2, b2);
}

}  // namespace zm
