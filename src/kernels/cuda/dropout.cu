  // Inverted dropout: keep each element with probability 1 - p and scale it by 1 / (1 - p).
  // Element e keeps iff word e % 4 of philox(e / 4, key) >= p * 2^32: the mask is a pure
  // function of (key, index), whatever the dtype or V, so the backward pass regenerates it.
  const float p = __int_as_float(P_BITS);
  const float scale = 1.0f / (1.0f - p);
  const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(p) * 4294967296.0);
  const long long base = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  // x is requested before the mask is computed: the load's latency runs under the Philox
  // rounds instead of after them.
  const bool vec = V > 1 && zm::aligned<V>(x) && zm::aligned<V>(out);
  float xs[V];
  if (vec) {
    const auto xv = zm::load<V>(x + base);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      xs[i] = zm::to_f(xv.v[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      xs[i] = zm::to_f(x[base + i]);
    }
  }
  uint32_t bits[V];
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int j = 0; j < V / 4; ++j) {
      const uint4 r = zm::philox(static_cast<unsigned long long>(base / 4 + j), key[0], key[1]);
      bits[4 * j] = r.x;
      bits[4 * j + 1] = r.y;
      bits[4 * j + 2] = r.z;
      bits[4 * j + 3] = r.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const long long e = base + i;
      const uint4 r = zm::philox(static_cast<unsigned long long>(e / 4), key[0], key[1]);
      const int w = static_cast<int>(e % 4);
      bits[i] = w == 0 ? r.x : w == 1 ? r.y : w == 2 ? r.z : r.w;
    }
  }
  zm::Vec<T, V> o;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    o.v[i] = zm::from_f<T>(bits[i] >= threshold ? xs[i] * scale : 0.0f);
  }
  if (vec) {
    zm::store<V>(out + base, o);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      out[base + i] = o.v[i];
    }
  }
