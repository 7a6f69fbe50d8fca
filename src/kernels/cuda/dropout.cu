  // Inverted dropout: keep each element with probability 1 - p and scale it by 1 / (1 - p).
  // The mask is a pure function of (key, element index), so the backward pass regenerates it.
  const float p = __int_as_float(P_BITS);
  const float scale = 1.0f / (1.0f - p);
  const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(p) * 4294967296.0);
  const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long base = tid * 4;
  if (base >= numel) {
    return;
  }
  const uint4 r = zm::philox(static_cast<unsigned long long>(tid), key[0], key[1]);
  const uint32_t bits[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const long long e = base + i;
    if (e < numel) {
      out[e] = zm::from_f<T>(bits[i] >= threshold ? zm::to_f(x[e]) * scale : 0.0f);
    }
  }
