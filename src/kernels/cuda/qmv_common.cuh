// Dequantisation of MLX affine-quantised rows (what mx.quantize produces): a row of N values
// is N * BITS / 32 uint32 words, value v in bits [(v % (32 / BITS)) * BITS, ...) of word
// v / (32 / BITS); w = scale * q + bias per GS consecutive values along the row.
namespace zm {

// q as float without an int-to-float conversion (a slow pipe): OR the BITS-wide field into
// the mantissa of 2^23 and subtract 2^23.
template <int BITS>
__device__ __forceinline__ float qval(uint32_t word, int shift) {
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  return __int_as_float(0x4B000000u | ((word >> shift) & kMask)) - 8388608.0f;
}

// sum_i x[i] * q[i] over the 128 / BITS values of one 16-byte chunk; xv[m] = x[4m..4m+3].
template <int BITS>
__device__ __forceinline__ float chunk_dot(const uint4& chunk, const float4* xv) {
  constexpr int kPerWord = 32 / BITS;
  const uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
  float d = 0.0f;
#pragma unroll
  for (int m = 0; m < 32 / BITS; ++m) {
    const int v = 4 * m;
    d = fmaf(xv[m].x, qval<BITS>(words[(v + 0) / kPerWord], ((v + 0) % kPerWord) * BITS), d);
    d = fmaf(xv[m].y, qval<BITS>(words[(v + 1) / kPerWord], ((v + 1) % kPerWord) * BITS), d);
    d = fmaf(xv[m].z, qval<BITS>(words[(v + 2) / kPerWord], ((v + 2) % kPerWord) * BITS), d);
    d = fmaf(xv[m].w, qval<BITS>(words[(v + 3) / kPerWord], ((v + 3) % kPerWord) * BITS), d);
  }
  return d;
}

// Four consecutive values of a float vector in global memory (8- or 16-byte aligned).
template <typename T>
__device__ __forceinline__ float4 load4(const T* p) {
  const auto v = load<4>(p);
  return make_float4(to_f(v.v[0]), to_f(v.v[1]), to_f(v.v[2]), to_f(v.v[3]));
}

// Stages one row of N values (N % (128 / BITS) == 0) into shared memory as fp32, chunk-major
// so a warp reading float4 m of 32 consecutive chunks hits 32 distinct banks:
// xs[m * CHUNKS + c] = x[c * VALS + 4m .. +3]. sums[c] = sum of chunk c (for the biases).
template <int BITS, int N, typename T>
__device__ __forceinline__ void stage_row(const T* x, float4* xs, float* sums, int tid,
                                          int nthreads) {
  constexpr int kVals = 128 / BITS;
  constexpr int kF4 = kVals / 4;
  constexpr int kChunks = N / kVals;
  for (int c = tid; c < kChunks; c += nthreads) {
    float s = 0.0f;
#pragma unroll
    for (int m = 0; m < kF4; ++m) {
      const float4 v = load4(x + c * kVals + 4 * m);
      xs[m * kChunks + c] = v;
      s += (v.x + v.y) + (v.z + v.w);
    }
    sums[c] = s;
  }
}

// The x values of chunk c (xv[m] = x[c * VALS + 4m ..]) and their sum: from the staged copy
// (XS, laid out by stage_row) or straight from x in global memory.
template <bool XS, int BITS, int CHUNKS, typename T>
__device__ __forceinline__ float chunk_x(float4* xv, const float4* xs, const float* sums,
                                         const T* x, int c) {
  if constexpr (XS) {
#pragma unroll
    for (int m = 0; m < 32 / BITS; ++m) {
      xv[m] = xs[m * CHUNKS + c];
    }
    return sums[c];
  } else {
    float s = 0.0f;
#pragma unroll
    for (int m = 0; m < 32 / BITS; ++m) {
      xv[m] = load4(x + c * (128 / BITS) + 4 * m);
      s += (xv[m].x + xv[m].y) + (xv[m].z + xv[m].w);
    }
    return s;
  }
}

}  // namespace zm
