// Dequantisation of MLX affine-quantised rows (what mx.quantize produces): a row of N values
// is N * BITS / 32 uint32 words, value v in bits [(v % (32 / BITS)) * BITS, ...) of word
// v / (32 / BITS); w = scale * q + bias per GS consecutive values along the row. A 16-byte
// chunk holds 128 / BITS values, inside one group (GS >= 32).
namespace zm {

// sum_i x[i] * q[i] over one chunk; xv[m] = x[4m..4m+3]. q becomes a float by OR-ing it into
// the mantissa of 2^23 and subtracting 2^23: no int-to-float conversion (a slow pipe).
template <int BITS>
__device__ __forceinline__ float chunk_dot(const uint4& chunk, const float4* xv) {
  constexpr int kPerWord = 32 / BITS;
  const uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
  float d = 0.0f;
#pragma unroll
  for (int v = 0; v < 128 / BITS; ++v) {
    const uint32_t q = (words[v / kPerWord] >> ((v % kPerWord) * BITS)) & ((1u << BITS) - 1u);
    d = fmaf((&xv[v / 4].x)[v % 4], __int_as_float(0x4B000000u | q) - 8388608.0f, d);
  }
  return d;
}

// Four values of x (8- or 16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ float4 load4(const T* p) {
  const auto v = load<4>(p);
  return make_float4(to_f(v.v[0]), to_f(v.v[1]), to_f(v.v[2]), to_f(v.v[3]));
}

// Stages N values of x in shared memory as fp32, chunk-major so that a warp reading float4 m
// of 32 consecutive chunks hits 32 distinct banks: xs[m * (N / VALS) + c] = x[c * VALS + 4m..].
// sums[c] = sum of chunk c, for the biases.
template <int BITS, int N, typename T>
__device__ __forceinline__ void stage(const T* x, float4* xs, float* sums, int tid, int nt) {
  constexpr int kChunks = N * BITS / 128;
  for (int c = tid; c < kChunks; c += nt) {
    float s = 0.0f;
#pragma unroll
    for (int m = 0; m < 32 / BITS; ++m) {
      const float4 v = load4(x + c * (128 / BITS) + 4 * m);
      xs[m * kChunks + c] = v;
      s += (v.x + v.y) + (v.z + v.w);
    }
    sums[c] = s;
  }
}

// The values of chunk c of x as float4s, and their sum: from the staged copy (XS) or from x.
template <bool XS, int BITS, int CHUNKS, typename T>
__device__ __forceinline__ float chunk_x(float4* xv, const float4* xs, const float* sums,
                                         const T* x, int c) {
  float s = XS ? sums[c] : 0.0f;
#pragma unroll
  for (int m = 0; m < 32 / BITS; ++m) {
    if constexpr (XS) {
      xv[m] = xs[m * CHUNKS + c];
    } else {
      xv[m] = load4(x + c * (128 / BITS) + 4 * m);
      s += (xv[m].x + xv[m].y) + (xv[m].z + xv[m].w);
    }
  }
  return s;
}

}  // namespace zm
