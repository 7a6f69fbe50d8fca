  // Decode-size MoE down-projection and combine: out[token, d] = sum_k scores[token, k] *
  // (row d of expert indices[token, k]'s down matrix . act[token, k]) in fp32. A warp owns R
  // outputs d, its lanes stride over the K * I * BITS / 128 16-byte chunks of the K rows: no
  // atomics. act[token] is staged in shared memory when it fits (XS).
  constexpr int CHUNKS = I * BITS / 128;
  constexpr int ALL = K * CHUNKS;
  constexpr int PER_LANE = (ALL + 31) / 32;
  constexpr int PRE = PER_LANE < 8 / R ? PER_LANE : 8 / R;
  __shared__ float4 xs[XS ? K * I / 4 : 1];
  __shared__ float xsum[XS ? ALL : 1];
  const long long token = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int d0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * R;
  const T* arow = act + token * K * I;
  // Row of output r (rows past D re-read row D - 1, never written) in the k-th pick's expert;
  // out-of-range experts are clamped rather than fault.
  const auto row = [&](int k, int r) -> long long {
    const uint32_t e = min(static_cast<uint32_t>(indices[token * K + k]), uint32_t(E - 1));
    return e * D + min(d0 + r, D - 1);
  };
  // The first PRE chunks' weights are requested before act is staged: the latencies overlap.
  uint4 pre[PRE][R];
#pragma unroll
  for (int it = 0; it < PRE; ++it) {
    const int f = min(lane + 32 * it, ALL - 1);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      pre[it][r] = __ldg(reinterpret_cast<const uint4*>(w) + row(f / CHUNKS, r) * CHUNKS +
                         f % CHUNKS);
    }
  }
  if constexpr (XS) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      zm::stage<BITS, I>(arow + k * I, xs + k * I / 4, xsum + k * CHUNKS, threadIdx.x,
                         WARPS * 32);
    }
    __syncthreads();
  }
  if (d0 >= D) {
    return;
  }
  float acc[R] = {};
#pragma unroll
  for (int it = 0; it < PER_LANE; ++it) {
    const int f = lane + 32 * it;
    if (ALL % 32 == 0 || f < ALL) {
      const int k = f / CHUNKS;
      const int c = f % CHUNKS;
      float4 xv[32 / BITS];
      const float csum =
          zm::chunk_x<XS, BITS, CHUNKS>(xv, xs + k * I / 4, xsum + k * CHUNKS, arow + k * I, c);
      const float s = zm::to_f(scores[token * K + k]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const long long rw = row(k, r);
        // `it` is a constant once unrolled; the clamp keeps the index in bounds regardless.
        const uint4 q = it < PRE ? pre[it < PRE ? it : 0][r]
                                 : __ldg(reinterpret_cast<const uint4*>(w) + rw * CHUNKS + c);
        const long long sb = rw * (I / GS) + c * 128 / BITS / GS;
        acc[r] += s * (zm::to_f(scales[sb]) * zm::chunk_dot<BITS>(q, xv) +
                       zm::to_f(biases[sb]) * csum);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
    if (lane == 0 && d0 + r < D) {
      out[token * D + d0 + r] = zm::from_f<T>(acc[r]);
    }
  }
