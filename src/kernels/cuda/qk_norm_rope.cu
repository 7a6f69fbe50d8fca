  // qwen3 attention's front at one decode token: qk_rms_norm (the per-head RMSNorms of q and
  // k, MLX-CUDA's rms_norm_small arithmetic, each value rounded to T as q_norm / k_norm
  // return it), then RoPE of the normalised heads at position offset[row] with MLX-CUDA's
  // rope arithmetic, spelled as qkv_rope spells it; q, k and v come out (rows, heads, 1, D).
  // One warp per query or key head, lane t holding values t * VEC .. t * VEC + VEC - 1; a
  // value's RoPE partner i + D / 2 sits HALF / VEC lanes away (a shuffle), or next to it in
  // the lane's vector if TRAD. A key head's warp also copies that head's values.
  constexpr int HEADS = HQ + HK;
  constexpr int W = (HQ + HK) * D + HK * DV;
  constexpr int HALF = D / 2;
  const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const long long row = warp / HEADS;
  const int head = static_cast<int>(warp % HEADS);
  const bool is_q = head < HQ;
  const int kh = head - HQ;
  const T* src = qkv + row * W + head * D;
  const T* weight = is_q ? q_w : k_w;
  T* dst = is_q ? q_out + (row * HQ + head) * D : k_out + (row * HK + kh) * D;
  float hv[VEC];
  const float scale = zm::mlx_head_rms<VEC>(src, D, __int_as_float(is_q ? EPS_Q_BITS : EPS_K_BITS),
                                            lane, hv);
  float nv[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    nv[i] = lane * VEC + i < D ? zm::to_f(zm::mlx_rms_out<T>(weight[lane * VEC + i], hv[i], scale))
                               : 0.0f;
  }
  float pv[VEC];  // the partners' normalised values
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    if constexpr (TRAD) {
      pv[i] = nv[i ^ 1];
    } else {
      constexpr int PARTNER = HALF / VEC;
      pv[i] = __shfl_sync(0xffffffffu, nv[i], lane < PARTNER ? lane + PARTNER : lane - PARTNER);
    }
  }
  const float base = __int_as_float(BASE_BITS);
  const float L = __int_as_float(SCALE_BITS) * static_cast<float>(offset[PER_ROW ? row : 0]);
  if (lane * VEC < D) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const int e = lane * VEC + i;
      const bool first = TRAD ? (e % 2 == 0) : (e < HALF);
      const int j = TRAD ? e / 2 : (first ? e : e - HALF);
      const float d = static_cast<float>(j) / static_cast<float>(HALF);
      const float inv_freq = exp2f(-d * base);
      const float theta = L * inv_freq;
      const float costheta = cosf(theta);
      const float sintheta = sinf(theta);
      const float x1 = first ? nv[i] : pv[i];
      const float x2 = first ? pv[i] : nv[i];
      float rx;
      if (first) {
        rx = x1 * costheta - x2 * sintheta;
      } else {
        rx = x1 * sintheta + x2 * costheta;
      }
      dst[e] = zm::from_f<T>(rx);
    }
  }
  if (!is_q) {
    const T* vsrc = qkv + row * W + HEADS * D + kh * DV;
    T* vdst = v_out + (row * HK + kh) * DV;
    for (int i = lane; i < DV; i += 32) {
      vdst[i] = vsrc[i];
    }
  }
