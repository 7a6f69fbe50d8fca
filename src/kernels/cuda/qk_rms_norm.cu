  // One row of a fused q|k|v projection (HQ query heads, HK key heads of D values, HK value
  // heads of DV) into q and k normalised per head by their RMSNorms and v as it is, each
  // shaped (rows, heads, D): what mlx-lm's split, reshapes and q_norm / k_norm give, with
  // MLX-CUDA's rms_norm_small arithmetic (zm::mlx_head_rms: one warp per head). A warp of a
  // key head also copies that head's values.
  constexpr int HEADS = HQ + HK;
  constexpr int W = (HQ + HK) * D + HK * DV;
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
  if (lane * VEC < D) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      dst[lane * VEC + i] = zm::mlx_rms_out<T>(weight[lane * VEC + i], hv[i], scale);
    }
  }
  if (!is_q) {
    const T* vsrc = qkv + row * W + HEADS * D + kh * DV;
    T* vdst = v_out + (row * HK + kh) * DV;
    for (int i = lane; i < DV; i += 32) {
      vdst[i] = vsrc[i];
    }
  }
