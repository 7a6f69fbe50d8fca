  // Decode-size MoE up-projection with SwiGLU on the tensor cores, rounded exactly as the
  // unfused path where MLX's gather_qmm runs qmm_sm80 (mma.cuh): a block owns outputs
  // j0..j0+7 of one (token, k) pair (blockIdx.y); warp 0 the 8 gate rows, warp 1 the 8 up rows
  // of expert indices[pair], staged beside x (zm::mma_rows).
  constexpr int RB = D * BITS / 8;
  constexpr int G = D / GS;
  __shared__ __align__(16) zm::MmaStage<BITS, GS, D> st[2];
  __shared__ __align__(16) uint16_t xs[D];
  __shared__ float res[2][8];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const long long pair = blockIdx.y;
  const int j0 = blockIdx.x * 8;
  // Out-of-range experts are clamped rather than fault.
  const long long e = min(static_cast<uint32_t>(indices[pair]), static_cast<uint32_t>(E - 1));
  const long long row0 = e * 2 * I + warp * I + j0;
  zm::stage_v<D>(xs, x + pair / K * D, threadIdx.x, 64);
  float c[4] = {};
  zm::mma_rows<BITS, GS, D, true>(c, st[warp], reinterpret_cast<const T*>(xs),
                            reinterpret_cast<const unsigned char*>(w) + row0 * RB,
                            reinterpret_cast<const uint16_t*>(scales) + row0 * G,
                            reinterpret_cast<const uint16_t*>(biases) + row0 * G, lane);
  if (lane < 4) {
    res[warp][2 * lane] = c[0];
    res[warp][2 * lane + 1] = c[1];
  }
  __syncthreads();
  if (threadIdx.x < 8) {
    act[pair * I + j0 + threadIdx.x] = zm::from_f<T>(zm::mlx_swiglu<T>(
        zm::round_to<T>(res[0][threadIdx.x]), zm::round_to<T>(res[1][threadIdx.x])));
  }
