// SwiGLU rounded as MLX evaluates mlx-lm's `silu(gate) * up` in T (its compiled node, or the
// unfused ops): MLX's sigmoid y = 1 / (1 + exp|g|), mirrored to 1 - y for g >= 0, then g * s
// and * up, every op rounded to T; the exp is cuda::std::exp in T (hexp for the half types,
// expf for float), as MLX's; mixed int/half arithmetic goes through float, as MLX defines it.
#include <cuda/std/cmath>
namespace zm {
template <typename T>
__device__ __forceinline__ float mlx_swiglu(float g, float u) {
  const float e = to_f(cuda::std::exp(from_f<T>(fabsf(g))));
  const float y = round_to<T>(1.0f / round_to<T>(1.0f + e));
  const float s = g < 0.0f ? y : round_to<T>(1.0f - y);
  return round_to<T>(round_to<T>(g * s) * u);
}
}  // namespace zm
