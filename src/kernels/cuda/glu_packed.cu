  // h rows are [gate | up], each H wide; out = act(gate) * up, H wide.
  constexpr int V = (H % (16 / sizeof(T)) == 0) ? 16 / sizeof(T) : 1;
  constexpr int PER_ROW = H / V;
  const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long row = tid / PER_ROW;
  const int col = static_cast<int>(tid % PER_ROW) * V;
  const T* g = h + row * (2 * H) + col;
  const T* u = g + H;
  T* o = out + row * H + col;
  if (V > 1 && zm::aligned<V>(h) && zm::aligned<V>(out)) {
    const auto gv = zm::load<V>(g);
    const auto uv = zm::load<V>(u);
    zm::Vec<T, V> ov;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      ov.v[i] = zm::from_f<T>(zm::glu<ACT, T>(zm::to_f(gv.v[i]), zm::to_f(uv.v[i])));
    }
    zm::store<V>(o, ov);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      o[i] = zm::from_f<T>(zm::glu<ACT, T>(zm::to_f(g[i]), zm::to_f(u[i])));
    }
  }
