// The end of MLX-CUDA's rms_norm_small, shared by the kernels that reproduce it: the scale from
// a row's fp32 sum of squares, and one output value, w * T(h * scale) with the product in T;
// and a whole head of D <= 32 * VEC values normalised by one warp.
namespace zm {

__device__ __forceinline__ float mlx_rms_scale(float sum_sq, int d, float eps) {
  return rsqrtf(sum_sq / static_cast<float>(d) + eps);
}

template <typename T>
__device__ __forceinline__ T mlx_rms_out(T w, float h, float scale) {
  return mul_in<T>(w, from_f<T>(h * scale));
}

// MLX normalises a head of D <= 32 * VEC values with 64 threads whose first D / VEC hold one
// vector each, so only the first warp sums anything and the second adds an exact 0: one warp
// per head, lane t squaring the values of vector t in order into one fp32 sum by fmas, then
// the xor butterfly, is the same sum. Lane t gets its values in hv (zeros past the head, as
// MLX's idle threads hold) and returns the head's scale.
template <int VEC, typename T>
__device__ __forceinline__ float mlx_head_rms(const T* head, int d, float eps, int lane,
                                              float (&hv)[VEC]) {
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    hv[i] = lane * VEC + i < d ? to_f(head[lane * VEC + i]) : 0.0f;
    sq = fmaf(hv[i], hv[i], sq);
  }
  return mlx_rms_scale(warp_sum(sq), d, eps);
}

}  // namespace zm
