  // out[r, h] = sum_k y[r, k, h] * scores[r, k], accumulated in fp32 in k order. One thread
  // per V outputs of a row; the launch covers rows * H / V threads exactly. MLXR: as mlx-lm's
  // (y * scores[..., None]).sum(-2) rounds, each product and each step of the sum in the dtype
  // MLX gives them (zm::mlx_weighted, zm::mlx_sum_step).
  constexpr int V = (H % (16 / sizeof(T)) == 0) ? 16 / sizeof(T) : 1;
  constexpr int PER_ROW = H / V;
  const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long row = tid / PER_ROW;
  const int col = static_cast<int>(tid % PER_ROW) * V;
  const T* yr = y + row * K * H + col;
  const S* sr = scores + row * K;
  float acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    acc[i] = 0.0f;
  }
  if (V > 1 && zm::aligned<V>(y) && zm::aligned<V>(out)) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float s = zm::to_f(sr[k]);
      const auto v = zm::load<V>(yr + k * H);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        acc[i] = MLXR ? zm::mlx_sum_step<S, T>(acc[i], zm::mlx_weighted<S, T>(zm::to_f(v.v[i]), s))
                      : acc[i] + s * zm::to_f(v.v[i]);
      }
    }
    zm::Vec<T, V> o;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      o.v[i] = zm::from_f<T>(acc[i]);
    }
    zm::store<V>(out + row * H + col, o);
  } else {
    for (int k = 0; k < K; ++k) {
      const float s = zm::to_f(sr[k]);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        acc[i] = MLXR ? zm::mlx_sum_step<S, T>(acc[i], zm::mlx_weighted<S, T>(zm::to_f(yr[k * H + i]), s))
                      : acc[i] + s * zm::to_f(yr[k * H + i]);
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) {
      out[row * H + col + i] = zm::from_f<T>(acc[i]);
    }
  }
