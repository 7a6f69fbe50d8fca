  // One warp per row of E router logits; lane l holds experts l, l + 32, ...
  // MODE 0: softmax over all experts (rounded to T, as mlx-lm selects on T), top-k, scores
  //         from the softmax, optionally renormalised in T.
  // MODE 1: top-k on the logits, softmax over the k picked.
  // MODE 2: sigmoid in fp32, top-k on sigmoid + bias, scores from the unbiased sigmoid,
  //         optionally renormalised. Every mode then multiplies by the scale.
  // Ties go to the higher expert index if TIE_HIGH, else the lower (as the family's mlx-lm
  // argpartition on MLX-CUDA); NaN logits never win. The launch has exactly one warp per row.
  // MLXR (MODE 0): as mlx-lm's lines round on MLX-CUDA. Picks come out in the order of its
  // argpartition (ascending for TIE_HIGH, whose families take the top of an ascending sort)
  // and the renormalising sum adds them in that order in T, as MLX's reduction does. With at
  // most 32 * NR experts (MLXS) the softmax is MLX's kernel's too: lane l holds experts
  // NR * l ... NR * l + NR - 1 as it reads them and repeats its arithmetic (__expf, a running
  // sum per lane rescaled to the row's max, a warp sum, one reciprocal).
  constexpr int NR = 16 / sizeof(T);
  constexpr bool MLXO = MLXR && MODE == 0;
  constexpr bool MLXS = MLXO && E <= 32 * NR;
  constexpr int PER = MLXS ? NR : (E + 31) / 32;
  const float scale = __int_as_float(SCALE_BITS);
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const T* x = logits + row * E;
  auto expert = [&](int j) { return MLXS ? NR * lane + j : lane + 32 * j; };
  float val[PER];
  float rank[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int e = expert(j);
    float v = (e < E) ? zm::to_f(x[e]) : ZM_NEG_INF;
    val[j] = (v != v) ? ZM_NEG_INF : v;
  }
  if constexpr (MLXS) {
    float m = -3.402823466e38f;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      m = val[j] > m ? val[j] : m;
    }
    float n = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      n += __expf(val[j] - m);
    }
    const float top = zm::warp_max(m);
    const float inv = 1.0f / zm::warp_sum(n * __expf(m - top));
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      val[j] = zm::round_to<T>(__expf(val[j] - top) * inv);
      rank[j] = val[j];
    }
  } else if constexpr (MODE == 0) {
    float m = ZM_NEG_INF;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      m = fmaxf(m, val[j]);
    }
    m = zm::warp_max(m);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      val[j] = (lane + 32 * j < E) ? expf(val[j] - m) : 0.0f;
      s += val[j];
    }
    s = zm::warp_sum(s);
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      val[j] = zm::round_to<T>(val[j] / s);
      rank[j] = val[j];
    }
  } else if constexpr (MODE == 1) {
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      rank[j] = val[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int e = expert(j);
      val[j] = zm::sigmoid(val[j]);
      rank[j] = (e < E) ? val[j] + bias_at(e) : ZM_NEG_INF;
      rank[j] = (rank[j] != rank[j]) ? ZM_NEG_INF : rank[j];
    }
  }

  unsigned int taken = 0;
  int my_index = 0;
  float my_val = 0.0f;
  for (int r = 0; r < K; ++r) {
    float best = ZM_NEG_INF;
    int best_e = TIE_HIGH ? -1 : 0x7fffffff;
    float best_val = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int e = expert(j);
      const bool open = e < E && !((taken >> j) & 1u);
      const bool wins_tie = TIE_HIGH ? e > best_e : e < best_e;
      if (open && (rank[j] > best || (rank[j] == best && wins_tie))) {
        best = rank[j];
        best_e = e;
        best_val = val[j];
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float o = __shfl_xor_sync(zm::kFullMask, best, off);
      const int oe = __shfl_xor_sync(zm::kFullMask, best_e, off);
      const float ov = __shfl_xor_sync(zm::kFullMask, best_val, off);
      if (o > best || (o == best && (TIE_HIGH ? oe > best_e : oe < best_e))) {
        best = o;
        best_e = oe;
        best_val = ov;
      }
    }
    if ((MLXS ? best_e / NR : best_e & 31) == lane) {
      taken |= 1u << (MLXS ? best_e % NR : best_e >> 5);
    }
    if (lane == r) {
      my_index = best_e;
      my_val = best_val;
    }
  }

  const bool mine = lane < K;
  float score = my_val;
  // Where the picks go in the outputs: mlx-lm's order.
  const int pos = MLXO && TIE_HIGH ? K - 1 - lane : lane;
  if constexpr (MLXO && NORM) {
    // MLX's row reduction: runs of NR picks in order in T, then the runs' sums as its warp
    // reduction pairs them (K <= 16: at most 4 runs).
    float run[4] = {};
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const float v = __shfl_sync(zm::kFullMask, my_val, TIE_HIGH ? K - 1 - i : i);
      run[i / NR] = zm::round_to<T>(run[i / NR] + v);
    }
    const float s = zm::round_to<T>(zm::round_to<T>(run[0] + run[2]) +
                                    zm::round_to<T>(run[1] + run[3]));
    score = my_val / s;
  } else if constexpr (MODE == 0) {
    if constexpr (NORM) {
      const float s = zm::round_to<T>(zm::warp_sum(mine ? my_val : 0.0f));
      score = my_val / s;
    }
  } else if constexpr (MODE == 1) {
    const float m = __shfl_sync(zm::kFullMask, my_val, 0);
    const float ex = mine ? expf(my_val - m) : 0.0f;
    score = ex / zm::warp_sum(ex);
  } else {
    if constexpr (NORM && K > 1) {
      score = my_val / zm::warp_sum(mine ? my_val : 0.0f);
    }
  }
  if (mine) {
    scores[row * K + pos] = zm::from_f<S>(score * scale);
    indices[row * K + pos] = static_cast<uint32_t>(my_index);
  }
