  // Decode-size MoE up-projection: for each (token, k) pair, rows j and I + j of expert
  // indices[pair]'s packed [gate | up] matrix (MLX affine-quantised, BITS, GS) dotted with
  // x[token], then act[pair, j] = silu(gate) * up. gate and up are rounded to T first, as the
  // unfused path stores them. Block (blockIdx.x, pair): WARPS warps, R outputs j per warp,
  // fp32 accumulation; x staged in shared memory when it fits (XS), else read through L1.
  constexpr int VALS = 128 / BITS;
  constexpr int CHUNKS = D / VALS;
  constexpr int PER_LANE = (CHUNKS + 31) / 32;
  constexpr int GROUPS = D / GS;
  constexpr int NR = 2 * R;  // weight rows per warp: gate and up of R outputs
  constexpr int PRE = PER_LANE < 8 / NR ? PER_LANE : 8 / NR;
  __shared__ float4 xs[XS ? D / 4 : 1];
  __shared__ float xsum[XS ? CHUNKS : 1];
  const long long pair = blockIdx.y;
  const long long token = pair / K;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int j0 = (blockIdx.x * WARPS + warp) * R;
  const uint32_t e_raw = static_cast<uint32_t>(indices[pair]);
  // Out-of-range experts read expert 0 and write zeros rather than fault.
  const bool valid_e = e_raw < static_cast<uint32_t>(E);
  const long long e = valid_e ? e_raw : 0;
  const T* xrow = x + token * D;
  // Rows past I (the last tile) re-read row I - 1 and are never written.
  const int jw = min(j0, I - 1);
  const uint4* wrow[NR];
  const S* srow[NR];
  const S* brow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const long long row = e * (2 * I) + (r % 2) * I + min(jw + r / 2, I - 1);
    wrow[r] = reinterpret_cast<const uint4*>(w) + row * CHUNKS;
    srow[r] = scales + row * GROUPS;
    brow[r] = biases + row * GROUPS;
  }
  // The first PRE chunks' weights are requested before x is staged, so the two latencies
  // overlap instead of adding up.
  uint4 pre[PRE][NR];
  float pre_s[PRE][NR];
  float pre_b[PRE][NR];
#pragma unroll
  for (int it = 0; it < PRE; ++it) {
    const int c = min(lane + 32 * it, CHUNKS - 1);
    const int g = c * VALS / GS;
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      pre[it][r] = __ldg(wrow[r] + c);
      pre_s[it][r] = zm::to_f(srow[r][g]);
      pre_b[it][r] = zm::to_f(brow[r][g]);
    }
  }
  if constexpr (XS) {
    zm::stage_row<BITS, D>(xrow, xs, xsum, threadIdx.x, WARPS * 32);
    __syncthreads();
  }
  if (j0 >= I) {
    return;
  }
  float acc[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    acc[r] = 0.0f;
  }
#pragma unroll
  for (int it = 0; it < PER_LANE; ++it) {
    const int c = lane + 32 * it;
    if (CHUNKS % 32 == 0 || c < CHUNKS) {
      const int g = c * VALS / GS;
      // `it` is a constant once unrolled; the clamp keeps the index in bounds for the compiler.
      const int p = it < PRE ? it : 0;
      uint4 q[NR];
      float sc[NR];
      float bi[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        q[r] = it < PRE ? pre[p][r] : __ldg(wrow[r] + c);
        sc[r] = it < PRE ? pre_s[p][r] : zm::to_f(srow[r][g]);
        bi[r] = it < PRE ? pre_b[p][r] : zm::to_f(brow[r][g]);
      }
      float4 xv[VALS / 4];
      const float csum = zm::chunk_x<XS, BITS, CHUNKS>(xv, xs, xsum, xrow, c);
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        acc[r] += sc[r] * zm::chunk_dot<BITS>(q[r], xv) + bi[r] * csum;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float gate = zm::round_to<T>(acc[2 * r]);
      const float v = valid_e ? gate / (1.0f + expf(-gate)) * zm::round_to<T>(acc[2 * r + 1]) : 0.0f;
      if (j0 + r < I) {
        act[pair * I + j0 + r] = zm::from_f<T>(v);
      }
    }
  }
