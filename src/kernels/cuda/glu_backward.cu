  // d_gate = cotan * up * act'(gate), d_up = cotan * act(gate), V elements per thread.
  const long long base = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (V > 1 && zm::aligned<V>(gate) && zm::aligned<V>(up) && zm::aligned<V>(cotan) &&
      zm::aligned<V>(d_gate) && zm::aligned<V>(d_up)) {
    const auto g = zm::load<V>(gate + base);
    const auto u = zm::load<V>(up + base);
    const auto c = zm::load<V>(cotan + base);
    zm::Vec<T, V> dg, du;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float gf = zm::to_f(g.v[i]);
      const float cf = zm::to_f(c.v[i]);
      dg.v[i] = zm::from_f<T>(cf * zm::to_f(u.v[i]) * zm::act_grad<ACT>(gf));
      du.v[i] = zm::from_f<T>(cf * zm::act<ACT>(gf));
    }
    zm::store<V>(d_gate + base, dg);
    zm::store<V>(d_up + base, du);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float gf = zm::to_f(gate[base + i]);
      const float cf = zm::to_f(cotan[base + i]);
      d_gate[base + i] = zm::from_f<T>(cf * zm::to_f(up[base + i]) * zm::act_grad<ACT>(gf));
      d_up[base + i] = zm::from_f<T>(cf * zm::act<ACT>(gf));
    }
  }
