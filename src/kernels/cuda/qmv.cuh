// Dequantisation of MLX affine-quantised rows (what mx.quantize produces): a row of N values
// is N * BITS / 32 uint32 words, value v in bits [(v % (32 / BITS)) * BITS, ...) of word
// v / (32 / BITS); w = scale * q + bias per GS consecutive values along the row. A 16-byte
// chunk holds 128 / BITS values, inside one group (GS >= 32).
namespace zm {

// A field is turned into a float without an int-to-float conversion (a slow pipe): OR-ed
// into the mantissa of 2^23 in place, masked but not shifted (one LOP3), 2^23 subtracted,
// gives q * 2^s exactly; x comes pre-scaled by 2^-s (exact), so x' * (q * 2^s) == x * q.
// Fields must stay below bit 23 (the exponent): those that would reach it are read from the
// word shifted right by kSplit (20 for 4-bit, 16 for 8-bit), once per word.
template <int BITS>
struct Fields {
  static constexpr int kPerWord = 32 / BITS;
  static constexpr int kSplit = BITS * ((23 - BITS) / BITS + 1);
};

// The in-word shift of value v's field as chunk_dot reads it.
template <int BITS>
__device__ __forceinline__ int field_shift(int v) {
  const int p = (v % Fields<BITS>::kPerWord) * BITS;
  return p < Fields<BITS>::kSplit ? p : p - Fields<BITS>::kSplit;
}

// sum_i x'[i] * (q[i] << field_shift(i)) over one chunk, i.e. sum_i x[i] * q[i];
// xv[m] = x'[4m..4m+3] as chunk_x leaves it.
template <int BITS>
__device__ __forceinline__ float chunk_dot(const uint4& chunk, const float4* xv) {
  constexpr int kPerWord = Fields<BITS>::kPerWord;
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  const uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
  float d = 0.0f;
#pragma unroll
  for (int v = 0; v < 128 / BITS; ++v) {
    const bool low = (v % kPerWord) * BITS < Fields<BITS>::kSplit;
    const uint32_t word = low ? words[v / kPerWord] : words[v / kPerWord] >> Fields<BITS>::kSplit;
    const uint32_t bits = 0x4B000000u | (word & (kMask << field_shift<BITS>(v)));
    d = fmaf((&xv[v / 4].x)[v % 4], __int_as_float(bits) - 8388608.0f, d);
  }
  return d;
}

// Four values of x (8- or 16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ float4 load4(const T* p) {
  const auto v = load<4>(p);
  return make_float4(to_f(v.v[0]), to_f(v.v[1]), to_f(v.v[2]), to_f(v.v[3]));
}

// The 128 / BITS values of one chunk of x (x points at its first), pre-scaled for chunk_dot,
// into xv; returns their plain sum, which the biases multiply.
template <int BITS, typename T>
__device__ __forceinline__ float chunk_x(float4* xv, const T* x) {
  float s = 0.0f;
#pragma unroll
  for (int m = 0; m < 32 / BITS; ++m) {
    float4 v = load4(x + 4 * m);
    s += (v.x + v.y) + (v.z + v.w);
    // 2^-shift, built from its exponent bits: a constant once unrolled.
    v.x *= __int_as_float((127 - field_shift<BITS>(4 * m)) << 23);
    v.y *= __int_as_float((127 - field_shift<BITS>(4 * m + 1)) << 23);
    v.z *= __int_as_float((127 - field_shift<BITS>(4 * m + 2)) << 23);
    v.w *= __int_as_float((127 - field_shift<BITS>(4 * m + 3)) << 23);
    xv[m] = v;
  }
  return s;
}

}  // namespace zm
