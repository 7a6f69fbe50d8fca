  // Decode-size MoE up-projection: for each (token, k) pair (blockIdx.y), rows j and I + j of
  // expert indices[pair]'s packed [gate | up] matrix dotted with x[token] in fp32, then
  // act[pair, j] = silu(gate) * up rounded as the unfused path (gather_qmm, then mlx-lm's
  // SwiGLU): gate and up rounded to T, then mlx_swiglu. A block owns JB outputs j (2 * JB rows) and splits the dot products' 16-byte chunks
  // over its WARPS * 32 threads: a thread reads each of its x chunks once, straight from
  // global memory (every block reads the same x: L1/L2 hits), and reuses it for all 2 * JB
  // rows. Partial sums meet in shared memory at the end; no staging, one barrier.
  constexpr int CHUNKS = D * BITS / 128;
  constexpr int VALS = 128 / BITS;
  constexpr int NT = WARPS * 32;
  constexpr int STEPS = (CHUNKS + NT - 1) / NT;
  constexpr int NR = 2 * JB;
  __shared__ float partial[WARPS][NR];
  const long long pair = blockIdx.y;
  const int j0 = blockIdx.x * JB;
  // Out-of-range experts are clamped rather than fault.
  const long long e = min(static_cast<uint32_t>(indices[pair]), static_cast<uint32_t>(E - 1));
  const T* xrow = x + pair / K * D;
  // Row r < JB is gate j0 + r, row JB + r is up j0 + r; rows past I (the last block) re-read
  // row I - 1 and are never written.
  long long row[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    row[r] = e * 2 * I + (r < JB ? 0 : I) + min(j0 + r % JB, I - 1);
  }
  float acc[NR] = {};
#pragma unroll 1
  for (int step = 0; step < STEPS; ++step) {
    const int c = threadIdx.x + NT * step;
    if (CHUNKS % NT == 0 || c < CHUNKS) {
      // All of the step's weights, scales and biases are requested before x: one latency.
      uint4 q[NR];
      T sc[NR], bi[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        q[r] = __ldg(reinterpret_cast<const uint4*>(w) + row[r] * CHUNKS + c);
        const long long sb = row[r] * (D / GS) + c * VALS / GS;
        sc[r] = zm::from_f<T>(zm::to_f(scales[sb]));
        bi[r] = zm::from_f<T>(zm::to_f(biases[sb]));
      }
      float xs[VALS];
      zm::chunk_x<BITS>(xs, xrow + c * VALS);
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        acc[r] += zm::chunk_dot<BITS>(q[r], xs, sc[r], bi[r]);
      }
    }
  }
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
    if (lane == 0) {
      partial[threadIdx.x >> 5][r] = acc[r];
    }
  }
  __syncthreads();
  const int j = j0 + threadIdx.x;
  if (threadIdx.x < JB && j < I) {
    float gate = 0.0f;
    float up = 0.0f;
#pragma unroll
    for (int wp = 0; wp < WARPS; ++wp) {
      gate += partial[wp][threadIdx.x];
      up += partial[wp][JB + threadIdx.x];
    }
    act[pair * I + j] = zm::from_f<T>(zm::mlx_swiglu<T>(zm::round_to<T>(gate), zm::round_to<T>(up)));
  }
