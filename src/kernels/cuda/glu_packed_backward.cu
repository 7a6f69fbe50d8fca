  // h rows are [gate | up]; d_h rows are [d_gate | d_up]; cotan rows are H wide.
  constexpr int V = (H % (16 / sizeof(T)) == 0) ? 16 / sizeof(T) : 1;
  constexpr int PER_ROW = H / V;
  const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long row = tid / PER_ROW;
  const int col = static_cast<int>(tid % PER_ROW) * V;
  const T* g = h + row * (2 * H) + col;
  const T* u = g + H;
  const T* c = cotan + row * H + col;
  T* dg = d_h + row * (2 * H) + col;
  T* du = dg + H;
  if (V > 1 && zm::aligned<V>(h) && zm::aligned<V>(cotan) && zm::aligned<V>(d_h)) {
    const auto gv = zm::load<V>(g);
    const auto uv = zm::load<V>(u);
    const auto cv = zm::load<V>(c);
    zm::Vec<T, V> dgv, duv;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float gf = zm::to_f(gv.v[i]);
      const float cf = zm::to_f(cv.v[i]);
      dgv.v[i] = zm::from_f<T>(cf * zm::to_f(uv.v[i]) * zm::act_grad<ACT>(gf));
      duv.v[i] = zm::from_f<T>(cf * zm::act<ACT>(gf));
    }
    zm::store<V>(dg, dgv);
    zm::store<V>(du, duv);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float gf = zm::to_f(g[i]);
      const float cf = zm::to_f(c[i]);
      dg[i] = zm::from_f<T>(cf * zm::to_f(u[i]) * zm::act_grad<ACT>(gf));
      du[i] = zm::from_f<T>(cf * zm::act<ACT>(gf));
    }
  }
