  // Decode-size MoE down-projection and combine, rounded as mlx-lm's unfused path (gather_qmm,
  // then (y * scores[..., None]).sum(-2)): y_k[d] = row d of expert indices[token, k]'s down
  // matrix . act[token, k] in fp32, rounded to T; out[token, d] = sum over k in order of
  // y_k[d] * scores[token, k], products and sum rounded to T when the scores are T, else fp32.
  // A block owns RB outputs d of one token (blockIdx.y). Expert k's 16-byte weight chunks
  // (I * BITS / 128 per row) are split over its own WPE warps (WARPS = K * WPE): a thread
  // reads each of its act chunks once, straight from global memory, and reuses it for all RB
  // rows. Per-warp sums meet in shared memory, per expert in warp order, then over k in
  // order: no atomics, the result is deterministic.
  constexpr int CHUNKS = I * BITS / 128;
  constexpr int VALS = 128 / BITS;
  constexpr int WPE = WARPS / K;
  constexpr int NT = WPE * 32;
  constexpr int STEPS = (CHUNKS + NT - 1) / NT;
  __shared__ float partial[WARPS][RB];
  __shared__ float prod[K][RB];
  const long long token = blockIdx.y;
  const int d0 = blockIdx.x * RB;
  const int warp = threadIdx.x >> 5;
  const int k = warp / WPE;
  const int t = threadIdx.x - k * NT;
  // Out-of-range experts are clamped rather than fault; rows past D (the last block) re-read
  // row D - 1 and are never written.
  const long long e =
      min(static_cast<uint32_t>(indices[token * K + k]), static_cast<uint32_t>(E - 1));
  const T* arow = act + (token * K + k) * I;
  float acc[RB] = {};
#pragma unroll 1
  for (int step = 0; step < STEPS; ++step) {
    const int c = t + NT * step;
    if (CHUNKS % NT == 0 || c < CHUNKS) {
      // All of the step's weights, scales and biases are requested before act: one latency.
      uint4 q[RB];
      T sc[RB], bi[RB];
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        const long long rw = e * D + min(d0 + r, D - 1);
        q[r] = __ldg(reinterpret_cast<const uint4*>(w) + rw * CHUNKS + c);
        const long long sb = rw * (I / GS) + c * VALS / GS;
        sc[r] = zm::from_f<T>(zm::to_f(scales[sb]));
        bi[r] = zm::from_f<T>(zm::to_f(biases[sb]));
      }
      float xs[VALS];
      zm::chunk_x<BITS>(xs, arow + c * VALS);
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        acc[r] += zm::chunk_dot<BITS>(q[r], xs, sc[r], bi[r]);
      }
    }
  }
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
    if (lane == 0) {
      partial[warp][r] = acc[r];
    }
  }
  __syncthreads();
  if (threadIdx.x < K * RB) {
    const int kk = threadIdx.x / RB;
    const int r = threadIdx.x % RB;
    float y = 0.0f;
#pragma unroll
    for (int wp = 0; wp < WPE; ++wp) {
      y += partial[kk * WPE + wp][r];
    }
    prod[kk][r] = zm::mlx_weighted<SC, T>(zm::round_to<T>(y), zm::to_f(scores[token * K + kk]));
  }
  __syncthreads();
  const int d = d0 + threadIdx.x;
  if (threadIdx.x < RB && d < D) {
    float sum = 0.0f;
#pragma unroll
    for (int kk = 0; kk < K; ++kk) {
      sum = zm::mlx_sum_step<SC, T>(sum, prod[kk][threadIdx.x]);
    }
    out[token * D + d] = zm::from_f<T>(sum);
  }
