  // Decode-size MoE down-projection and combine on the tensor cores, rounded exactly as the
  // unfused path where MLX's gather_qmm runs qmm_sm80 (mma.cuh), then mlx-lm's combine: y_k
  // rounded to T, times the score, summed over k in order (zm::mlx_weighted, mlx_sum_step). A
  // block owns outputs d0..d0+15 of one token (blockIdx.y); warp k the 16 rows of expert
  // indices[token, k], its activations staged part by part with them (zm::mma_rows).
  __shared__ __align__(16) zm::MmaStage<BITS, GS, I, PARTS, AHEAD, true> st[K];
  __shared__ float prod[K][16];
  const int k = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const long long token = blockIdx.y;
  const int d0 = blockIdx.x * 16;
  // Out-of-range experts are clamped rather than fault.
  const long long e = min(uint32_t(indices[token * K + k]), uint32_t(E - 1));
  const long long row0 = e * D + d0;
  const auto* v = reinterpret_cast<const uint16_t*>(act + (token * K + k) * I);
  float c[4] = {};
  zm::mma_rows<BITS, GS, I, PARTS, AHEAD, false, T>(c, st[k], v, w, scales, biases, row0, lane);
  if ((lane & 3) == 0) {
    const float sk = zm::to_f(scores[token * K + k]);
    for (int h = 0; h < 2; ++h) {  // rows g and g + 8
      prod[k][(lane >> 2) + 8 * h] = zm::mlx_weighted<SC, T>(zm::round_to<T>(c[2 * h]), sk);
    }
  }
  __syncthreads();
  if (threadIdx.x < 16) {
    float sum = 0.0f;
#pragma unroll
    for (int kk = 0; kk < K; ++kk) {
      sum = zm::mlx_sum_step<SC, T>(sum, prod[kk][threadIdx.x]);
    }
    out[token * D + d0 + threadIdx.x] = zm::from_f<T>(sum);
  }
