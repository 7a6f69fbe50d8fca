  // Decode-size MoE down-projection and combine on the tensor cores, rounded exactly as the
  // unfused path where MLX's gather_qmm runs qmm_sm80 (mma.cuh), then mlx-lm's combine: y_k
  // rounded to T, times the score, summed over k in order (zm::mlx_weighted, mlx_sum_step). A
  // block owns outputs d0..d0+7 of one token (blockIdx.y); warp k the 8 rows of expert
  // indices[token, k] with its activations, staged beside them (zm::mma_rows).
  constexpr int RB = I * BITS / 8;
  constexpr int G = I / GS;
  __shared__ __align__(16) zm::MmaStage<BITS, GS, I> st[K];
  __shared__ __align__(16) uint16_t vs[K][I];
  __shared__ float prod[K][8];
  const int k = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const long long token = blockIdx.y;
  const int d0 = blockIdx.x * 8;
  // Out-of-range experts are clamped rather than fault.
  const long long e =
      min(static_cast<uint32_t>(indices[token * K + k]), static_cast<uint32_t>(E - 1));
  const long long row0 = e * D + d0;
  zm::stage_v<I>(vs[k], act + (token * K + k) * I, lane, 32);
  float c[4] = {};
  zm::mma_rows<BITS, GS, I, false>(c, st[k], reinterpret_cast<const T*>(vs[k]),
                            reinterpret_cast<const unsigned char*>(w) + row0 * RB,
                            reinterpret_cast<const uint16_t*>(scales) + row0 * G,
                            reinterpret_cast<const uint16_t*>(biases) + row0 * G, lane);
  if (lane < 4) {
    const float sk = zm::to_f(scores[token * K + k]);
    prod[k][2 * lane] = zm::mlx_weighted<SC, T>(zm::round_to<T>(c[0]), sk);
    prod[k][2 * lane + 1] = zm::mlx_weighted<SC, T>(zm::round_to<T>(c[1]), sk);
  }
  __syncthreads();
  if (threadIdx.x < 8) {
    float sum = 0.0f;
#pragma unroll
    for (int kk = 0; kk < K; ++kk) {
      sum = zm::mlx_sum_step<SC, T>(sum, prod[kk][threadIdx.x]);
    }
    out[token * D + d0 + threadIdx.x] = zm::from_f<T>(sum);
  }
