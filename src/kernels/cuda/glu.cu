  // out = act(gate) * up, elementwise, V elements per thread (16-byte accesses when V > 1).
  const long long base = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (V > 1 && zm::aligned<V>(gate) && zm::aligned<V>(up) && zm::aligned<V>(out)) {
    const auto g = zm::load<V>(gate + base);
    const auto u = zm::load<V>(up + base);
    zm::Vec<T, V> o;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      o.v[i] = zm::from_f<T>(zm::glu<ACT, T>(zm::to_f(g.v[i]), zm::to_f(u.v[i])));
    }
    zm::store<V>(out + base, o);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      out[base + i] = zm::from_f<T>(zm::glu<ACT, T>(zm::to_f(gate[base + i]), zm::to_f(up[base + i])));
    }
  }
