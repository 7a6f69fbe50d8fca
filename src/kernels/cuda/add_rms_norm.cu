  // h = x + r, out = rms_norm(h) * w: a residual add and the RMSNorm after it in one node,
  // with MLX-CUDA's arithmetic for both (its binary add rounds h to T; its rms_norm_small
  // kernel, which MLX runs for rows up to 8 * 16 / sizeof(T) * 128 values): one block of BLOCK
  // threads per row, thread t squares the values of vectors t + BLOCK * c (c < CHUNKS, VEC
  // values each) in that order into one fp32 sum by fmas, the block adds its threads by xor
  // shuffles within each warp and then across the warps' results the same way, and each value
  // is scaled in fp32, rounded to T, times the weight in T.
  constexpr int WARPS = BLOCK / 32;
  __shared__ float partial[WARPS];
  const long long row = blockIdx.x;
  const int t = threadIdx.x;
  const T* xr = x + row * D;
  const T* rr = r + row * D;
  // Whole 16-byte vectors when every row fills the block's vectors and the arrays allow.
  const bool vectors = D % (BLOCK * VEC) == 0 && zm::aligned<VEC>(xr) && zm::aligned<VEC>(rr) &&
                       zm::aligned<VEC>(h + row * D) && zm::aligned<VEC>(out + row * D) &&
                       zm::aligned<VEC>(w);
  float hv[CHUNKS][VEC];
  float sq = 0.0f;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int base = (BLOCK * c + t) * VEC;
    zm::Vec<T, VEC> hs;
    if (vectors) {
      const auto xs = zm::load<VEC>(xr + base);
      const auto rs = zm::load<VEC>(rr + base);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        hs.v[v] = zm::add_in<T>(xs.v[v], rs.v[v]);
      }
      zm::store<VEC>(h + row * D + base, hs);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        // Past the row: 0, as MLX's masked loads give (and 0 * 0 adds nothing).
        hs.v[v] = zm::from_f<T>(0.0f);
        if (base + v < D) {
          hs.v[v] = zm::add_in<T>(xr[base + v], rr[base + v]);
          h[row * D + base + v] = hs.v[v];
        }
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      hv[c][v] = zm::to_f(hs.v[v]);
      sq = fmaf(hv[c][v], hv[c][v], sq);
    }
  }
  sq = zm::warp_sum(sq);
  if (WARPS > 1) {
    if ((t & 31) == 0) {
      partial[t >> 5] = sq;
    }
    __syncthreads();
    sq = zm::warp_sum((t & 31) < WARPS ? partial[t & 31] : 0.0f);
  }
  const float scale = zm::mlx_rms_scale(sq, D, __int_as_float(EPS_BITS));
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int base = (BLOCK * c + t) * VEC;
    if (vectors) {
      const auto ws = zm::load<VEC>(w + base);
      zm::Vec<T, VEC> os;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        os.v[v] = zm::mlx_rms_out<T>(ws.v[v], hv[c][v], scale);
      }
      zm::store<VEC>(out + row * D + base, os);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        if (base + v < D) {
          out[row * D + base + v] = zm::mlx_rms_out<T>(w[base + v], hv[c][v], scale);
        }
      }
    }
  }
