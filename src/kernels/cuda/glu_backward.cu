  // d_gate = cotan * up * act'(gate), d_up = cotan * act(gate).
  constexpr int V = 16 / sizeof(T);
  const long long base = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (base >= numel) {
    return;
  }
  if (base + V <= numel && zm::aligned<V>(gate) && zm::aligned<V>(up) &&
      zm::aligned<V>(cotan) && zm::aligned<V>(d_gate) && zm::aligned<V>(d_up)) {
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
    for (long long i = base; i < numel && i < base + V; ++i) {
      const float gf = zm::to_f(gate[i]);
      const float cf = zm::to_f(cotan[i]);
      d_gate[i] = zm::from_f<T>(cf * zm::to_f(up[i]) * zm::act_grad<ACT>(gf));
      d_up[i] = zm::from_f<T>(cf * zm::act<ACT>(gf));
    }
  }
