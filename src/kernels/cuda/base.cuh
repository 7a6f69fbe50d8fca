// Device helpers shared by the zmlx_rs kernels. Self-contained (CUDA headers only) so the
// same sources build inside mx.fast.cuda_kernel and on their own.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/cstdint>

#define ZM_NEG_INF (__int_as_float(0xff800000))

namespace zm {

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
// Whether two types are one (no <type_traits> in every compile path).
template <typename A, typename B>
constexpr bool kSame = false;
template <typename A>
constexpr bool kSame<A, A> = true;

template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f(from_f<T>(v)); }

// y * s (an MoE expert output of type T times its score of type S) in the dtype MLX gives
// that product: rounded to T when the score is T too, else fp32.
template <typename S, typename T>
__device__ __forceinline__ float mlx_weighted(float y, float s) {
  return kSame<S, T> ? round_to<T>(y * s) : y * s;
}

// acc + term, one step of MLX's sum over those products (in order): rounded to T when they are
// T (MLX accumulates a half-type sum in its own dtype), else fp32.
template <typename S, typename T>
__device__ __forceinline__ float mlx_sum_step(float acc, float term) {
  return kSame<S, T> ? round_to<T>(acc + term) : acc + term;
}

// a + b and a * b in T, rounded once as T's own operators round them (half and bfloat16 sums
// and products of two values are exact in fp32, so rounding that once is the same).
template <typename T>
__device__ __forceinline__ T add_in(T a, T b) { return from_f<T>(to_f(a) + to_f(b)); }
template <typename T>
__device__ __forceinline__ T mul_in(T a, T b) { return from_f<T>(to_f(a) * to_f(b)); }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

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

}  // namespace zm
