  // One decode token of a fused q|k|v projection (HQ query heads, HK key heads of D values, HK
  // value heads of DV) into q and k rotated by RoPE at position offset[row] and v as it is,
  // each shaped (rows, heads, 1, D): what mlx-lm's split, reshapes, transposes and two
  // mx.fast.rope nodes give. The rotation is MLX-CUDA's rope kernel's arithmetic, written
  // the same way so that the compiler contracts it the same way: pair i's frequency
  // exp2(-(i / (D / 2)) * log2(base)), angle (scale * position) * frequency, accurate cos and
  // sin, (x1 c - x2 s, x1 s + x2 c) in fp32, rounded to T. Pairs are (i, i + D / 2), or
  // (2i, 2i + 1) if TRAD. One warp per head; a value head's warp copies it.
  constexpr int HEADS = HQ + 2 * HK;
  constexpr int W = (HQ + HK) * D + HK * DV;
  constexpr int HALF = D / 2;
  const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const long long row = warp / HEADS;
  const int head = static_cast<int>(warp % HEADS);
  const T* src = qkv + row * W;
  if (head >= HQ + HK) {
    const int vh = head - HQ - HK;
    for (int i = lane; i < DV; i += 32) {
      v_out[(row * HK + vh) * DV + i] = src[(HQ + HK) * D + vh * DV + i];
    }
    return;
  }
  src += head * D;
  T* dst = head < HQ ? q_out + (row * HQ + head) * D : k_out + (row * HK + head - HQ) * D;
  const float base = __int_as_float(BASE_BITS);
  const float L = __int_as_float(SCALE_BITS) * static_cast<float>(offset[PER_ROW ? row : 0]);
  for (int i = lane; i < HALF; i += 32) {
    const float d = static_cast<float>(i) / static_cast<float>(HALF);
    const float inv_freq = exp2f(-d * base);
    const float theta = L * inv_freq;
    const float costheta = cosf(theta);
    const float sintheta = sinf(theta);
    const int i1 = TRAD ? 2 * i : i;
    const int i2 = TRAD ? i1 + 1 : i + HALF;
    const float x1 = zm::to_f(src[i1]);
    const float x2 = zm::to_f(src[i2]);
    const float rx1 = x1 * costheta - x2 * sintheta;
    const float rx2 = x1 * sintheta + x2 * costheta;
    dst[i1] = zm::from_f<T>(rx1);
    dst[i2] = zm::from_f<T>(rx2);
  }
