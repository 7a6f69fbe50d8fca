  // out = act(gate) * up, elementwise; V elements per thread with 16-byte accesses.
  constexpr int V = 16 / sizeof(T);
  const long long base = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (base >= numel) {
    return;
  }
  if (base + V <= numel && zm::aligned<V>(gate) && zm::aligned<V>(up) && zm::aligned<V>(out)) {
    const auto g = zm::load<V>(gate + base);
    const auto u = zm::load<V>(up + base);
    zm::Vec<T, V> o;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      o.v[i] = zm::from_f<T>(zm::act<ACT>(zm::to_f(g.v[i])) * zm::to_f(u.v[i]));
    }
    zm::store<V>(out + base, o);
  } else {
    for (long long i = base; i < numel && i < base + V; ++i) {
      out[i] = zm::from_f<T>(zm::act<ACT>(zm::to_f(gate[i])) * zm::to_f(up[i]));
    }
  }
