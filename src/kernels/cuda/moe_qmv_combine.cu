  // Decode-size MoE down-projection and combine: out[token, d] = sum_k scores[token, k] *
  // (row d of expert indices[token, k]'s down matrix . act[token, k]), in fp32, one warp per
  // R outputs d, lanes striding over the K * I / VALS 16-byte chunks of the K rows, so no
  // atomics. act[token] is staged in shared memory when it fits (XS), else read through L1.
  constexpr int VALS = 128 / BITS;
  constexpr int CHUNKS = I / VALS;  // per expert row
  constexpr int ALL = K * CHUNKS;
  constexpr int PER_LANE = (ALL + 31) / 32;
  constexpr int PRE = PER_LANE < 8 / R ? PER_LANE : 8 / R;
  constexpr int F4 = VALS / 4;
  constexpr int GROUPS = I / GS;
  __shared__ float4 xs[XS ? K * I / 4 : 1];
  __shared__ float xsum[XS ? ALL : 1];
  const long long token = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int d0 = (blockIdx.x * WARPS + warp) * R;
  // Rows past D (the last tile) re-read row D - 1 and are never written.
  const int dw = min(d0, D - 1);
  const T* arow = act + token * K * I;
  // Expert of the chunk's row; out-of-range experts read expert 0 with a zero score.
  const auto expert_at = [&](int k) -> long long {
    const uint32_t e = static_cast<uint32_t>(indices[token * K + k]);
    return e < static_cast<uint32_t>(E) ? e : 0;
  };
  const auto score_at = [&](int k) {
    const uint32_t e = static_cast<uint32_t>(indices[token * K + k]);
    return e < static_cast<uint32_t>(E) ? zm::to_f(scores[token * K + k]) : 0.0f;
  };
  // The first PRE chunks' weights are requested before act is staged, so the two latencies
  // overlap instead of adding up.
  uint4 pre[PRE][R];
  float pre_s[PRE][R];
  float pre_b[PRE][R];
#pragma unroll
  for (int it = 0; it < PRE; ++it) {
    const int f = min(lane + 32 * it, ALL - 1);
    const int c = f % CHUNKS;
    const long long e = expert_at(f / CHUNKS);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const long long row = e * D + min(dw + r, D - 1);
      pre[it][r] = __ldg(reinterpret_cast<const uint4*>(w) + row * CHUNKS + c);
      pre_s[it][r] = zm::to_f(scales[row * GROUPS + c * VALS / GS]);
      pre_b[it][r] = zm::to_f(biases[row * GROUPS + c * VALS / GS]);
    }
  }
  if constexpr (XS) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      zm::stage_row<BITS, I>(arow + k * I, xs + k * F4 * CHUNKS, xsum + k * CHUNKS, threadIdx.x,
                             WARPS * 32);
    }
    __syncthreads();
  }
  if (d0 >= D) {
    return;
  }
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc[r] = 0.0f;
  }
#pragma unroll
  for (int it = 0; it < PER_LANE; ++it) {
    const int f = lane + 32 * it;
    if (ALL % 32 == 0 || f < ALL) {
      const int k = f / CHUNKS;
      const int c = f % CHUNKS;
      const int g = c * VALS / GS;
      // `it` is a constant once unrolled; the clamp keeps the index in bounds for the compiler.
      const int p = it < PRE ? it : 0;
      const long long e = it < PRE ? 0 : expert_at(k);
      uint4 q[R];
      float sc[R];
      float bi[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const long long row = e * D + min(dw + r, D - 1);
        q[r] = it < PRE ? pre[p][r] : __ldg(reinterpret_cast<const uint4*>(w) + row * CHUNKS + c);
        sc[r] = it < PRE ? pre_s[p][r] : zm::to_f(scales[row * GROUPS + g]);
        bi[r] = it < PRE ? pre_b[p][r] : zm::to_f(biases[row * GROUPS + g]);
      }
      float4 xv[F4];
      const float csum = zm::chunk_x<XS, BITS, CHUNKS>(xv, xs + k * F4 * CHUNKS,
                                                       xsum + k * CHUNKS, arow + k * I, c);
      const float s = score_at(k);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        acc[r] += s * (sc[r] * zm::chunk_dot<BITS>(q[r], xv) + bi[r] * csum);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (d0 + r < D) {
        out[token * D + d0 + r] = zm::from_f<T>(acc[r]);
      }
    }
  }
