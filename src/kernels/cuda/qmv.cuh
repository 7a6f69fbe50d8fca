// Dequantisation of MLX affine-quantised rows (what mx.quantize produces): a row of N values
// is N * BITS / 32 uint32 words, value v in bits [(v % (32 / BITS)) * BITS, ...) of word
// v / (32 / BITS); w = scale * q + bias per GS consecutive values along the row. A 16-byte
// chunk holds 128 / BITS values, inside one group (GS >= 32).
//
// The arithmetic is MLX's qmv (gather_qmm at one token, MLX 0.32 on CUDA), so that a fused
// kernel gives the unfused path's numbers: each weight is dequantised in the activation dtype
// T by one fused multiply-add, w = fma(q, scale, bias) rounded once to T, and x * w is
// accumulated in fp32. (Probed on an H100 against gather_qmm: 99.8-100% of bf16 outputs
// bit-identical; the rest are one-ulp differences of the fp32 summation order. Dequantising
// in fp32, or the factored scale * sum(x q) + bias * sum(x), matched 40-60%.)
namespace zm {

// sum_i x[i] * w[i] in fp32 over one 16-byte chunk of weights (128 / BITS values, x as
// plain floats), w[i] = fma(q[i], scale, bias) rounded once to T as MLX's qmv has it.
template <int BITS, typename T>
__device__ __forceinline__ float chunk_dot(const uint4& chunk, const float* x, T scale, T bias) {
  constexpr int kPerWord = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  const uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
  float d = 0.0f;
  if constexpr (BITS <= Pair<T>::kMaxBits) {
    // Fields p and p + kPerWord / 2 of a word sit 16 bits apart: one mask gives dequant2 both.
    using T2 = typename Pair<T>::T2;
    const T2 s2(scale, scale);
    const T2 b2(bias, bias);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int p = 0; p < kPerWord / 2; ++p) {
        const T2 w2 = dequant2<T>(words[i] >> (p * BITS), kMask * 0x10001u, s2, b2);
        d = fmaf(x[i * kPerWord + p], __low2float(w2), d);
        d = fmaf(x[i * kPerWord + p + kPerWord / 2], __high2float(w2), d);
      }
    }
  } else {
    // fp32 activations, and 8-bit fields in bfloat16 (too wide for its magic number).
    const float s = to_f(scale);
    const float b = to_f(bias);
#pragma unroll
    for (int v = 0; v < 128 / BITS; ++v) {
      const uint32_t q = (words[v / kPerWord] >> (v % kPerWord * BITS)) & kMask;
      d = fmaf(x[v], round_to<T>(fmaf(static_cast<float>(q), s, b)), d);
    }
  }
  return d;
}

// The 128 / BITS values of one chunk of x (x points at its first; 8- or 16-byte aligned) as
// floats.
template <int BITS, typename T>
__device__ __forceinline__ void chunk_x(float* xs, const T* x) {
#pragma unroll
  for (int m = 0; m < 32 / BITS; ++m) {
    const auto v = load<4>(x + 4 * m);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xs[4 * m + i] = to_f(v.v[i]);
    }
  }
}

}  // namespace zm
