  // Decode-size MoE down-projection and combine: out[token, d] = sum_k scores[token, k] *
  // (row d of expert indices[token, k]'s down matrix . act[token, k]) in fp32. A block owns RB
  // outputs d of one token (blockIdx.y) and splits the K * I * BITS / 128 16-byte chunks of
  // their K rows each over its WARPS * 32 threads: a thread reads each of its activation chunks
  // once, straight from global memory, and reuses it for all RB outputs. Partial sums meet in
  // shared memory at the end: no atomics, no staging, one barrier.
  constexpr int CHUNKS = I * BITS / 128;
  constexpr int ALL = K * CHUNKS;
  constexpr int VALS = 128 / BITS;
  constexpr int NT = WARPS * 32;
  constexpr int STEPS = (ALL + NT - 1) / NT;
  __shared__ float partial[WARPS][RB];
  const long long token = blockIdx.y;
  const int d0 = blockIdx.x * RB;
  const T* arow = act + token * K * I;
  float acc[RB] = {};
#pragma unroll 1
  for (int step = 0; step < STEPS; ++step) {
    const int f = threadIdx.x + NT * step;
    if (ALL % NT == 0 || f < ALL) {
      const int k = f / CHUNKS;
      const int c = f % CHUNKS;
      // Out-of-range experts are clamped rather than fault; rows past D (the last block)
      // re-read row D - 1 and are never written.
      const long long e =
          min(static_cast<uint32_t>(indices[token * K + k]), static_cast<uint32_t>(E - 1));
      // All of the step's weights, scales and biases are requested before act: one latency.
      uint4 q[RB];
      float sc[RB], bi[RB];
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        const long long rw = e * D + min(d0 + r, D - 1);
        q[r] = __ldg(reinterpret_cast<const uint4*>(w) + rw * CHUNKS + c);
        const long long sb = rw * (I / GS) + c * VALS / GS;
        sc[r] = zm::to_f(scales[sb]);
        bi[r] = zm::to_f(biases[sb]);
      }
      const float s = zm::to_f(scores[token * K + k]);
      float4 xv[VALS / 4];
      const float xsum = zm::chunk_x<BITS>(xv, arow + f * VALS);
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        acc[r] += s * (sc[r] * zm::chunk_dot<BITS>(q[r], xv) + bi[r] * xsum);
      }
    }
  }
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
    if (lane == 0) {
      partial[threadIdx.x >> 5][r] = acc[r];
    }
  }
  __syncthreads();
  const int d = d0 + threadIdx.x;
  if (threadIdx.x < RB && d < D) {
    float sum = 0.0f;
#pragma unroll
    for (int wp = 0; wp < WARPS; ++wp) {
      sum += partial[wp][threadIdx.x];
    }
    out[token * D + d] = zm::from_f<T>(sum);
  }
