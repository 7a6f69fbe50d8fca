  // Decode-size MoE up-projection with SwiGLU on the tensor cores, rounded exactly as the
  // unfused path where MLX's gather_qmm runs qmm_sm80 (mma.cuh): a block owns outputs
  // j0..j0+15 of one (token, k) pair (blockIdx.y); warp 0 the 16 gate rows, warp 1 the 16 up
  // rows of expert indices[pair], staged beside x (zm::mma_rows).
  __shared__ __align__(16) zm::MmaStage<BITS, GS, D, PARTS, AHEAD, false> st[2];
  __shared__ __align__(16) uint16_t xs[D];
  __shared__ float res[2][16];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const long long pair = blockIdx.y;
  const int j0 = blockIdx.x * 16;
  // Out-of-range experts are clamped rather than fault.
  const long long e = min(uint32_t(indices[pair]), uint32_t(E - 1));
  const long long row0 = e * 2 * I + warp * I + j0;
  zm::stage_v<D>(xs, x + pair / K * D, threadIdx.x, 64);
  float c[4] = {};
  zm::mma_rows<BITS, GS, D, PARTS, AHEAD, true, T>(c, st[warp], xs, w, scales, biases, row0,
                                                   lane);
  if ((lane & 3) == 0) {
    res[warp][lane >> 2] = c[0];  // row g
    res[warp][(lane >> 2) + 8] = c[2];  // row g + 8
  }
  __syncthreads();
  if (threadIdx.x < 16) {
    act[pair * I + j0 + threadIdx.x] = zm::from_f<T>(zm::mlx_swiglu<T>(
        zm::round_to<T>(res[0][threadIdx.x]), zm::round_to<T>(res[1][threadIdx.x])));
  }
