  // Decode-size MoE up-projection: for each (token, k) pair (blockIdx.y), rows j and I + j of
  // expert indices[pair]'s packed [gate | up] matrix dotted with x[token] in fp32, then
  // act[pair, j] = silu(gate) * up, gate and up rounded to T first as the unfused path stores
  // them. WARPS warps of R outputs j each; x staged in shared memory when it fits (XS).
  constexpr int CHUNKS = D * BITS / 128;
  constexpr int PER_LANE = (CHUNKS + 31) / 32;
  constexpr int NR = 2 * R;
  constexpr int PRE = PER_LANE < 8 / NR ? PER_LANE : 8 / NR;
  __shared__ float4 xs[XS ? D / 4 : 1];
  __shared__ float xsum[XS ? CHUNKS : 1];
  const long long pair = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int j0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * R;
  // Out-of-range experts are clamped rather than fault.
  const long long e = min(static_cast<uint32_t>(indices[pair]), static_cast<uint32_t>(E - 1));
  const T* xrow = x + pair / K * D;
  long long row[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    // Rows past I (the last tile) re-read row I - 1 and are never written.
    row[r] = e * 2 * I + (r % 2) * I + min(j0 + r / 2, I - 1);
  }
  // The first PRE chunks' weights are requested before x is staged: the latencies overlap.
  uint4 pre[PRE][NR];
#pragma unroll
  for (int it = 0; it < PRE; ++it) {
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      pre[it][r] = __ldg(reinterpret_cast<const uint4*>(w) + row[r] * CHUNKS +
                         min(lane + 32 * it, CHUNKS - 1));
    }
  }
  if constexpr (XS) {
    zm::stage<BITS, D>(xrow, xs, xsum, threadIdx.x, WARPS * 32);
    __syncthreads();
  }
  if (j0 >= I) {
    return;
  }
  float acc[NR] = {};
#pragma unroll
  for (int it = 0; it < PER_LANE; ++it) {
    const int c = lane + 32 * it;
    if (CHUNKS % 32 == 0 || c < CHUNKS) {
      float4 xv[32 / BITS];
      const float csum = zm::chunk_x<XS, BITS, CHUNKS>(xv, xs, xsum, xrow, c);
      const long long g = c * 128 / BITS / GS;
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        // `it` is a constant once unrolled; the clamp keeps the index in bounds regardless.
        const uint4 q = it < PRE ? pre[it < PRE ? it : 0][r]
                                 : __ldg(reinterpret_cast<const uint4*>(w) + row[r] * CHUNKS + c);
        const long long sb = row[r] * (D / GS) + g;
        acc[r] += zm::to_f(scales[sb]) * zm::chunk_dot<BITS>(q, xv) + zm::to_f(biases[sb]) * csum;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float gate = zm::round_to<T>(acc[2 * r]);
    if (lane == 0 && j0 + r < I) {
      act[pair * I + j0 + r] =
          zm::from_f<T>(gate / (1.0f + expf(-gate)) * zm::round_to<T>(acc[2 * r + 1]));
    }
  }
