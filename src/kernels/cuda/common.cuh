// Device helpers shared by the zmlx_rs kernels. Self-contained (CUDA headers only) so the
// same sources build inside mx.fast.cuda_kernel and on their own.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
// NVRTC ships no libc headers; libcu++ defines the fixed-width types in every compiler.
#include <cuda/std/cstdint>

#define ZM_NEG_INF (__int_as_float(0xff800000))

namespace zm {

template <typename S>
__device__ __forceinline__ long long numel(const S& shape, int ndim) {
  long long n = 1;
  for (int i = 0; i < ndim; ++i) {
    n *= shape[i];
  }
  return n;
}

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(uint32_t v) { return static_cast<float>(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Rounds through T: the value a float has once stored as T.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f(from_f<T>(v)); }

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ bool aligned(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N)) == 0;
}

template <int N, typename T>
__device__ __forceinline__ Vec<T, N> load(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Activations of the gated MLPs, in fp32. ACT: 0 silu, 1 exact gelu, 2 tanh gelu.
constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

template <int ACT>
__device__ __forceinline__ float act(float g) {
  if constexpr (ACT == 0) {
    return g * sigmoid(g);
  } else if constexpr (ACT == 1) {
    return 0.5f * g * (1.0f + erff(g * kSqrtHalf));
  } else {
    return 0.5f * g * (1.0f + tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g)));
  }
}

template <int ACT>
__device__ __forceinline__ float act_grad(float g) {
  if constexpr (ACT == 0) {
    const float s = sigmoid(g);
    return s * (1.0f + g * (1.0f - s));
  } else if constexpr (ACT == 1) {
    return 0.5f * (1.0f + erff(g * kSqrtHalf)) + g * kInvSqrt2Pi * expf(-0.5f * g * g);
  } else {
    const float t = tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g));
    return 0.5f * (1.0f + t) +
           0.5f * g * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * g * g);
  }
}

}  // namespace zm

namespace zm {

constexpr unsigned int kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    v += __shfl_xor_sync(kFullMask, v, off);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  }
  return v;
}

// Philox4x32-10 (Salmon et al., SC'11): four random words per (counter, key).
__device__ __forceinline__ uint4 philox(unsigned long long counter, uint32_t k0, uint32_t k1) {
  uint32_t c0 = static_cast<uint32_t>(counter);
  uint32_t c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t lo0 = 0xD2511F53u * c0;
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0);
    const uint32_t lo1 = 0xCD9E8D57u * c2;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return make_uint4(c0, c1, c2, c3);
}

}  // namespace zm
