  // Dense 4-bit qmv, out[m, n] = x[m, :] . dequant(w[n, :]), with MLX's qmv arithmetic (what
  // mx.quantized_matmul runs for one row on MLX-CUDA 0.32): lane t of a row's warp takes the
  // 16 values t * 16 + r * 512 + i of each step r; value slot i keeps its own running sum in T,
  // acc_i = fma(x_i, w_i, acc_i) rounded once to T, with w_i = fma(q_i, scale, bias) rounded
  // once to T; then the lane adds its 16 slots in order in fp32 and the warp adds its lanes
  // by xor shuffles. Bit for bit what MLX computes (probed on an H100: every output of
  // 4096x4096 .. 300x14336, group sizes 32-128, fp16 and bf16). The speed is in the layout:
  // a warp owns ROWS rows and shares each x load between them, and U steps' loads are issued
  // before their first use; slots (i, i + 4) of a 32-bit word sit 16 bits apart, so one mask
  // and one half2 fma dequantise two values, and one half2 fma accumulates them.
  using T2 = typename zm::Pair<T>::T2;
  constexpr int PER_STEP = 512;  // 32 lanes x 16 values
  constexpr int STEPS = K / PER_STEP;
  constexpr int REST = K % PER_STEP;
  constexpr int WORDS = K / 8;  // uint32 per weight row
  constexpr int G = K / GS;
  const int lane = threadIdx.x & 31;
  const int row0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS;
  if (row0 >= N) {
    return;
  }
  const T* xrow = x + static_cast<long long>(blockIdx.y) * K;
  // Rows past N (the last warp) re-read row N - 1 and are never written.
  long long rows[ROWS];
#pragma unroll
  for (int j = 0; j < ROWS; ++j) {
    rows[j] = min(row0 + j, N - 1);
  }
  const uint32_t magic_bits = zm::Pair<T>::kMagic;
  const T2 magic = *reinterpret_cast<const T2*>(&magic_bits);
  // acc[j][4 * h + p] holds slots (8h + p, 8h + p + 4) of row j.
  T2 acc[ROWS][8];
#pragma unroll
  for (int j = 0; j < ROWS; ++j) {
#pragma unroll
    for (int p = 0; p < 8; ++p) {
      const uint32_t zero = 0u;
      acc[j][p] = *reinterpret_cast<const T2*>(&zero);
    }
  }
  auto step = [&](int idx) {
    uint2 q[ROWS];
    T2 s[ROWS], b[ROWS];
#pragma unroll
    for (int j = 0; j < ROWS; ++j) {
      q[j] = __ldg(reinterpret_cast<const uint2*>(w + rows[j] * WORDS + idx / 8));
      const T sv = scales[rows[j] * G + idx / GS];
      const T bv = biases[rows[j] * G + idx / GS];
      s[j] = T2(sv, sv);
      b[j] = T2(bv, bv);
    }
    const uint4 xa = __ldg(reinterpret_cast<const uint4*>(xrow + idx));
    const uint4 xb = __ldg(reinterpret_cast<const uint4*>(xrow + idx + 8));
    const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
    T2 x2[8];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const uint32_t u =
            __byte_perm(xw[4 * h + p / 2], xw[4 * h + p / 2 + 2], (p & 1) ? 0x7632u : 0x5410u);
        x2[4 * h + p] = *reinterpret_cast<const T2*>(&u);
      }
    }
#pragma unroll
    for (int j = 0; j < ROWS; ++j) {
      const uint32_t words[2] = {q[j].x, q[j].y};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          const uint32_t u = ((words[h] >> (4 * p)) & 0x000F000Fu) | magic_bits;
          const T2 wq = __hsub2(*reinterpret_cast<const T2*>(&u), magic);
          acc[j][4 * h + p] = __hfma2(x2[4 * h + p], __hfma2(wq, s[j], b[j]), acc[j][4 * h + p]);
        }
      }
    }
  };
#pragma unroll 1
  for (int r0 = 0; r0 < STEPS; r0 += U) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (STEPS % U == 0 || r0 + u < STEPS) {
        step(lane * 16 + (r0 + u) * PER_STEP);
      }
    }
  }
  if (REST > 0 && lane * 16 < REST) {
    step(K - REST + lane * 16);
  }
#pragma unroll
  for (int j = 0; j < ROWS; ++j) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const T2 a = acc[j][(i / 8) * 4 + i % 4];
      sum += zm::to_f(i % 8 < 4 ? a.x : a.y);
    }
    sum = zm::warp_sum(sum);
    if (lane == 0 && row0 + j < N) {
      out[static_cast<long long>(blockIdx.y) * N + row0 + j] = zm::from_f<T>(sum);
    }
  }
