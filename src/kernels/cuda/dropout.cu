  // Inverted dropout: keep each element with probability 1 - p and scale it by 1 / (1 - p).
  // Element e keeps iff word e % 4 of philox(e / 4, key) >= p * 2^32: the mask is a pure
  // function of (key, index), whatever the dtype, so the backward pass regenerates it.
  constexpr int V = 16 / sizeof(T);
  const float p = __int_as_float(P_BITS);
  const float scale = 1.0f / (1.0f - p);
  const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(p) * 4294967296.0);
  const long long base = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (base >= numel) {
    return;
  }
  uint32_t bits[V];
#pragma unroll
  for (int j = 0; j < V / 4; ++j) {
    const uint4 r = zm::philox(static_cast<unsigned long long>(base / 4 + j), key[0], key[1]);
    bits[4 * j] = r.x;
    bits[4 * j + 1] = r.y;
    bits[4 * j + 2] = r.z;
    bits[4 * j + 3] = r.w;
  }
  if (base + V <= numel && zm::aligned<V>(x) && zm::aligned<V>(out)) {
    const auto xv = zm::load<V>(x + base);
    zm::Vec<T, V> o;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      o.v[i] = zm::from_f<T>(bits[i] >= threshold ? zm::to_f(xv.v[i]) * scale : 0.0f);
    }
    zm::store<V>(out + base, o);
  } else {
    for (int i = 0; i < V && base + i < numel; ++i) {
      out[base + i] = zm::from_f<T>(bits[i] >= threshold ? zm::to_f(x[base + i]) * scale : 0.0f);
    }
  }
