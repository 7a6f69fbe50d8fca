// Activations of the gated MLPs, in fp32.
namespace zm {

// ACT: 0 silu, 1 exact gelu, 2 tanh gelu, 3 silu with MLX's rounding (mlx_silu.cuh) in the
// forward product; its gradient is silu's.
constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

template <int ACT>
__device__ __forceinline__ float act(float g) {
  if constexpr (ACT == 0 || ACT == 3) {
    return g * sigmoid(g);
  } else if constexpr (ACT == 1) {
    return 0.5f * g * (1.0f + erff(g * kSqrtHalf));
  } else {
    return 0.5f * g * (1.0f + tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g)));
  }
}

template <int ACT>
__device__ __forceinline__ float act_grad(float g) {
  if constexpr (ACT == 0 || ACT == 3) {
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

// act(g) * u, the gated product the forward kernels store (before the final rounding to T).
template <int ACT, typename T>
__device__ __forceinline__ float glu(float g, float u) {
  if constexpr (ACT == 3) {
    return mlx_swiglu<T>(g, u);
  } else {
    return act<ACT>(g) * u;
  }
}

}  // namespace zm
