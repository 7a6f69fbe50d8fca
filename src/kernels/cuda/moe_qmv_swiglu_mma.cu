  // Decode-size MoE up-projection with SwiGLU on the tensor cores, rounded exactly as the
  // unfused path where MLX's gather_qmm runs qmm_sm80 (mma.cuh): a block owns outputs
  // j0..j0+7 of one (token, k) pair (blockIdx.y); warp 0 the 8 gate rows, warp 1 the 8 up rows
  // of expert indices[pair], staged in shared memory as they are reduced (zm::mma_rows).
  constexpr int RB = D * BITS / 8;
  constexpr int RS = RB + 16;  // padded: the 8 rows a step reads fall on different banks
  constexpr int G = D / GS;
  __shared__ __align__(16) unsigned char ws[2][8 * RS];
  constexpr int GP = G % 2 ? G : G + 1;  // odd: the 8 rows' pairs fall on different banks
  __shared__ uint32_t sb[2][8 * GP];
  __shared__ float res[2][8];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const long long pair = blockIdx.y;
  const int j0 = blockIdx.x * 8;
  // Out-of-range experts are clamped rather than fault.
  const long long e = min(static_cast<uint32_t>(indices[pair]), static_cast<uint32_t>(E - 1));
  const long long row0 = e * 2 * I + warp * I + j0;
  float c[4] = {};
  zm::mma_rows<BITS, GS, D, RS, GP>(c, w + row0 * RB / 4, scales + row0 * G, biases + row0 * G,
                                ws[warp], sb[warp], x + pair / K * D, lane);
  if (lane < 4) {
    res[warp][2 * lane] = c[0];
    res[warp][2 * lane + 1] = c[1];
  }
  __syncthreads();
  if (threadIdx.x < 8) {
    act[pair * I + j0 + threadIdx.x] = zm::from_f<T>(zm::mlx_swiglu<T>(
        zm::round_to<T>(res[0][threadIdx.x]), zm::round_to<T>(res[1][threadIdx.x])));
  }
