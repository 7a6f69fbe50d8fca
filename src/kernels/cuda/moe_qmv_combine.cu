  // Decode-size MoE down-projection and combine: out[token, d] = sum_k scores[token, k] *
  // (row d of expert indices[token, k]'s down matrix . act[token, k]), in fp32, one warp per
  // R outputs d, lanes striding over the K * I / VALS 16-byte chunks of the K rows, so no
  // atomics. act[token] is staged in shared memory when it fits (XS), else read through L1.
  constexpr int VALS = 128 / BITS;
  constexpr int CHUNKS = I / VALS;  // per expert row
  constexpr int ALL = K * CHUNKS;
  constexpr int PER_LANE = (ALL + 31) / 32;
  constexpr int F4 = VALS / 4;
  constexpr int GROUPS = I / GS;
  __shared__ float4 xs[XS ? K * I / 4 : 1];
  __shared__ float xsum[XS ? ALL : 1];
  __shared__ float score_of[K];
  __shared__ long long expert_of[K];
  const long long token = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int d0 = (blockIdx.x * WARPS + warp) * R;
  const T* arow = act + token * K * I;
  if (threadIdx.x < K) {
    const uint32_t e = static_cast<uint32_t>(indices[token * K + threadIdx.x]);
    // Out-of-range experts read expert 0 with a zero score rather than fault.
    const bool valid = e < static_cast<uint32_t>(E);
    expert_of[threadIdx.x] = valid ? e : 0;
    score_of[threadIdx.x] = valid ? zm::to_f(scores[token * K + threadIdx.x]) : 0.0f;
  }
  if constexpr (XS) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      zm::stage_row<BITS, I>(arow + k * I, xs + k * F4 * CHUNKS, xsum + k * CHUNKS, threadIdx.x,
                             WARPS * 32);
    }
  }
  __syncthreads();
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
      const long long e = expert_of[k];
      uint4 q[R];
      const S* srow[R];
      const S* brow[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const long long row = e * D + min(d0 + r, D - 1);
        q[r] = __ldg(reinterpret_cast<const uint4*>(w) + row * CHUNKS + c);
        srow[r] = scales + row * GROUPS;
        brow[r] = biases + row * GROUPS;
      }
      const int g = c * VALS / GS;
      float csum;
      float d[R];
      if constexpr (XS) {
        csum = xsum[f];
        const float4* xk = xs + k * F4 * CHUNKS;
        const auto at = [&](int m) { return xk[m * CHUNKS + c]; };
#pragma unroll
        for (int r = 0; r < R; ++r) {
          d[r] = zm::chunk_dot<BITS>(q[r], at);
        }
      } else {
        const T* xc = arow + k * I + c * VALS;
        float4 xv[F4];
        csum = 0.0f;
#pragma unroll
        for (int m = 0; m < F4; ++m) {
          xv[m] = zm::load4(xc + 4 * m);
          csum += (xv[m].x + xv[m].y) + (xv[m].z + xv[m].w);
        }
        const auto at = [&](int m) { return xv[m]; };
#pragma unroll
        for (int r = 0; r < R; ++r) {
          d[r] = zm::chunk_dot<BITS>(q[r], at);
        }
      }
      const float s = score_of[k];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        acc[r] += s * (zm::to_f(srow[r][g]) * d[r] + zm::to_f(brow[r][g]) * csum);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc[r] = zm::warp_sum(acc[r]);
  }
  if (lane < R) {
    float v = acc[0];
#pragma unroll
    for (int r = 1; r < R; ++r) {
      if (lane == r) {
        v = acc[r];
      }
    }
    const int dd = d0 + lane;
    if (dd < D) {
      out[token * D + dd] = zm::from_f<T>(v);
    }
  }
