  // Decode-size MoE up-projection: for each (token, k) pair, rows j and I + j of expert
  // indices[pair]'s packed [gate | up] matrix (MLX affine-quantised, BITS, GS) dotted with
  // x[token], then act[pair, j] = silu(gate) * up. gate and up are rounded to T first, as the
  // unfused path stores them. Block (blockIdx.x, pair): WARPS warps, R outputs j per warp,
  // fp32 accumulation; x staged in shared memory when it fits (XS), else read through L1.
  constexpr int VALS = 128 / BITS;
  constexpr int CHUNKS = D / VALS;
  constexpr int PER_LANE = (CHUNKS + 31) / 32;
  constexpr int ROW_CHUNKS = CHUNKS;  // uint4 per weight row
  constexpr int GROUPS = D / GS;
  constexpr int NR = 2 * R;  // weight rows per warp: gate and up of R outputs
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
  if constexpr (XS) {
    zm::stage_row<BITS, D>(xrow, xs, xsum, threadIdx.x, WARPS * 32);
    __syncthreads();
  }
  if (j0 >= I) {
    return;
  }
  const uint4* wrow[NR];
  const S* srow[NR];
  const S* brow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const int j = min(j0 + r / 2, I - 1);
    const long long row = e * (2 * I) + (r % 2) * I + j;
    wrow[r] = reinterpret_cast<const uint4*>(w) + row * ROW_CHUNKS;
    srow[r] = scales + row * GROUPS;
    brow[r] = biases + row * GROUPS;
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
      uint4 q[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        q[r] = __ldg(wrow[r] + c);
      }
      const int g = c * VALS / GS;
      float csum;
      float d[NR];
      if constexpr (XS) {
        csum = xsum[c];
        const auto at = [&](int m) { return xs[m * CHUNKS + c]; };
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          d[r] = zm::chunk_dot<BITS>(q[r], at);
        }
      } else {
        const T* xc = xrow + c * VALS;
        float4 xv[VALS / 4];
        csum = 0.0f;
#pragma unroll
        for (int m = 0; m < VALS / 4; ++m) {
          xv[m] = zm::load4(xc + 4 * m);
          csum += (xv[m].x + xv[m].y) + (xv[m].z + xv[m].w);
        }
        const auto at = [&](int m) { return xv[m]; };
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          d[r] = zm::chunk_dot<BITS>(q[r], at);
        }
      }
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        acc[r] += zm::to_f(srow[r][g]) * d[r] + zm::to_f(brow[r][g]) * csum;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
  }
  if (lane < R) {
    // Registers are indexed by constants only: pick this lane's pair with a select chain.
    float gate = acc[0];
    float up = acc[1];
#pragma unroll
    for (int r = 1; r < R; ++r) {
      if (lane == r) {
        gate = acc[2 * r];
        up = acc[2 * r + 1];
      }
    }
    const int j = j0 + lane;
    if (j < I) {
      const float gt = zm::round_to<T>(gate);
      const float v = valid_e ? zm::act<0>(gt) * zm::round_to<T>(up) : 0.0f;
      act[pair * I + j] = zm::from_f<T>(v);
    }
  }
