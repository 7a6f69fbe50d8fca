// The end of MLX-CUDA's rms_norm_small, shared by the kernels that reproduce it: the scale from
// a row's fp32 sum of squares, and one output value, w * T(h * scale) with the product in T.
namespace zm {

__device__ __forceinline__ float mlx_rms_scale(float sum_sq, int d, float eps) {
  return rsqrtf(sum_sq / static_cast<float>(d) + eps);
}

template <typename T>
__device__ __forceinline__ T mlx_rms_out(T w, float h, float scale) {
  return mul_in<T>(w, from_f<T>(h * scale));
}

}  // namespace zm
