// The AdamW step and the sparsity prox of 4-D conv weights in one pass over memory (CPU).
//
// `lightning_mtl::adamw_prox_` takes the params of one ProxAdamW param group (contiguous
// [O, I, kh, kw] float32 or float64 weights, their gradients and torch AdamW's state) and
// applies, per weight, torch's AdamW update followed by the prox of `penalty` (group lasso or
// l1) in the metric `metric`, exactly as the eager path does (sparsity/optimizer.py and
// sparsity/operators/), with the same operation order so results agree to float rounding.
//
// A weight is a matrix [O, C] (C = I·kh·kw). It is cut into blocks of whole groups (columns
// of input channels, or rows of output channels) of about kBlockBytes of solver data: pass 1
// streams the block from memory once (Adam update; z written to the weight, the metric's
// c = t/d to scratch), the group sums and the Newton iterations of the adaptive prox then
// re-read the block from the CPU cache, and the last pass scales z in place. Blocks are
// independent and go to threads dynamically; their results do not depend on the number of
// threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

enum Penalty : int64_t { kGroupLasso = 0, kL1 = 1 };
enum Metric : int64_t { kEuclidean = 0, kAdaptive = 1, kUncorrected = 2 };
enum GroupBy : int64_t { kInChannel = 0, kOutChannel = 1 };

// What a block's solver re-reads (z, and c in a metric) takes about this many bytes. Blocks
// this large leave the strided input-channel pass row segments of ≥ 2 KiB even in the largest
// layers (2048 rows); shorter ones stream from memory markedly slower. The re-reads then come
// from L2/L3 rather than L2 alone, which costs less (measured on a 2-core Sapphire Rapids).
constexpr int64_t kBlockBytes = int64_t(8) << 20;
constexpr int kLanes = 16;  // fixed partial sums of a row reduction: same order on every CPU

#define ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__)
#define CLONES \
  __attribute__((flatten, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES __attribute__((flatten))
#endif

// NaN-propagating clamps and max, as torch's clamp_min / maximum
template <typename T>
ALWAYS_INLINE T clamp_min(T x, T lo) {
  return x < lo ? lo : x;
}
template <typename T>
ALWAYS_INLINE T maximum(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// Everything one block needs: the layer's tensors and its per-step constants, rounded to T as
// torch rounds the Python scalars of its ops.
template <typename T>
struct Layer {
  T* p;
  const T* g;
  T* m;
  T* v;
  T* vmax;  // nullptr without amsgrad
  int64_t rows, cols, kernel;  // kernel = kh·kw
  T grad_sign, decay, lerp_coeff, beta2, sq_coeff, bc2_sqrt, eps, neg_step;
  bool lerp_small;
  T threshold;  // lr·λ·√p_g (group lasso) or lr·λ (l1)
  T tolerance, tiny;
  int64_t penalty, metric, group_by, max_newton;
};

struct Block {
  int64_t layer, begin, end;  // input-channel columns [begin, end)·kernel, or rows [begin, end)
  int64_t elements;
};

template <typename T>
struct Scratch {
  std::vector<T> c, theta_at, s_at, t_at, q_sum, qc_sum, theta;
};

// Pass 1 over n contiguous elements from `at`: torch AdamW's update, z stored into the weight;
// the group-lasso proxes in a metric store c = t/d into `c`; l1 soft-thresholds right away.
template <typename T, bool kAmsgrad, int64_t kPenalty, int64_t kMetric>
ALWAYS_INLINE void adam_pass(const Layer<T>& L, int64_t at, int64_t n, T* __restrict c) {
  constexpr bool kStoreC = kPenalty == kGroupLasso && kMetric != kEuclidean;
  T* __restrict p = L.p + at;
  const T* __restrict g = L.g + at;
  T* __restrict m = L.m + at;
  T* __restrict v = L.v + at;
  T* __restrict vmax = kAmsgrad ? L.vmax + at : nullptr;
  // local copies: the stores below cannot alias them, so they stay in registers
  const T grad_sign = L.grad_sign, decay = L.decay, lerp_coeff = L.lerp_coeff, beta2 = L.beta2;
  const T sq_coeff = L.sq_coeff, bc2_sqrt = L.bc2_sqrt, eps = L.eps, neg_step = L.neg_step;
  const T threshold = L.threshold;
  // the lerp's base, m0 for a small weight and grad otherwise, as exact FMAs with s ∈ {1, 0}:
  // a loop-invariant bool select would keep the loop from vectorising
  const T s = L.lerp_small ? T(1) : T(0);
  for (int64_t i = 0; i < n; ++i) {
    const T grad = g[i] * grad_sign;
    const T param = p[i] * decay;  // param.mul_(1 - lr·wd)
    const T m0 = m[i];
    // exp_avg.lerp_(grad, 1 - β₁), as ATen's vectorised lerp
    const T m1 = std::fma(lerp_coeff, grad - m0, std::fma(s, m0, std::fma(-s, grad, grad)));
    // exp_avg_sq.mul_(β₂).addcmul_(grad, grad, value=1 - β₂), contracted as ATen's is
    const T v1 = std::fma(sq_coeff * grad, grad, v[i] * beta2);
    T vv = v1;
    if constexpr (kAmsgrad) {
      vv = maximum(vmax[i], v1);
      vmax[i] = vv;
    }
    m[i] = m1;
    v[i] = v1;
    const T root = std::sqrt(vv);
    const T denom = root / bc2_sqrt + eps;
    const T step = neg_step * m1;
    T z, t = threshold;
    if constexpr (kMetric == kAdaptive) {
      // d = denom: its reciprocal makes both the step and the prox's t/d = (1/d)·t, one
      // division fewer than step / denom, a difference far below z's last bit
      const T inv_d = T(1) / denom;
      z = param + step * inv_d;
      t = inv_d * threshold;
    } else {
      z = param + step / denom;  // param.addcdiv_(exp_avg, denom, value=-step_size)
      if constexpr (kMetric == kUncorrected) {
        t = T(1) / (root + eps) * threshold;
      }
    }
    if constexpr (kPenalty == kL1) {  // sign(z)·max(|z| − t, 0)
      const T sign = z > T(0) ? T(1) : (z < T(0) ? T(-1) : T(0));
      p[i] = sign * clamp_min(std::abs(z) - t, T(0));
    } else {
      p[i] = z;
      if constexpr (kStoreC) {
        c[i] = t;
      }
    }
  }
}

template <typename T, int64_t kPenalty, int64_t kMetric>
ALWAYS_INLINE void adam_pass(const Layer<T>& L, int64_t at, int64_t n, T* c) {
  if (L.vmax != nullptr) {
    adam_pass<T, true, kPenalty, kMetric>(L, at, n, c);
  } else {
    adam_pass<T, false, kPenalty, kMetric>(L, at, n, c);
  }
}

// Row sums in kLanes fixed partial sums, so that they add up in the same order on every CPU:
// Σ z² and (kWithC) Σ z²·c, for the group norm and the Newton start
template <typename T, bool kWithC>
ALWAYS_INLINE void row_q_sums(const T* __restrict z, const T* __restrict c, int64_t n, T& q_sum,
                              T& qc_sum) {
  T a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const T q = z[i + k] * z[i + k];
      a[k] += q;
      if constexpr (kWithC) {
        b[k] += q * c[i + k];
      }
    }
  }
  for (; i < n; ++i) {
    const T q = z[i] * z[i];
    a[0] += q;
    if constexpr (kWithC) {
      b[0] += q * c[i];
    }
  }
  q_sum = a[0];
  qc_sum = b[0];
  for (int k = 1; k < kLanes; ++k) {
    q_sum += a[k];
    qc_sum += b[k];
  }
}

// S(θ) = Σ z²/(θ+c)² and Σ z²/(θ+c)³ of one row, as `row_q_sums` adds
template <typename T>
ALWAYS_INLINE void row_newton_sums(const T* __restrict z, const T* __restrict c, T theta,
                                   int64_t n, T& s, T& t3) {
  T a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const T r = T(1) / (c[i + k] + theta);
      const T u = z[i + k] * z[i + k] * r * r;
      a[k] += u;
      b[k] += u * r;
    }
  }
  for (; i < n; ++i) {
    const T r = T(1) / (c[i] + theta);
    const T u = z[i] * z[i] * r * r;
    a[0] += u;
    b[0] += u * r;
  }
  s = a[0];
  t3 = b[0];
  for (int k = 1; k < kLanes; ++k) {
    s += a[k];
    t3 += b[k];
  }
}

// θ₀ = max(0, √Σq − Σqc/Σq): the Newton start of `group_lasso_adaptive_`
template <typename T>
ALWAYS_INLINE T newton_start(const Layer<T>& L, T q_sum, T qc_sum) {
  return clamp_min(std::sqrt(q_sum) - qc_sum / clamp_min(q_sum, L.tiny), T(0));
}

// One Newton step on h(θ) = S^(−1/2): θ + (S^(3/2) − S)/Σq/(θ+c)³, S = Σ q/(θ+c)²
template <typename T>
ALWAYS_INLINE T newton_step(const Layer<T>& L, T theta, T s, T t3) {
  return clamp_min(theta + (s * std::sqrt(s) - s) / clamp_min(t3, L.tiny), T(0));
}

// Euclidean group scale max(0, 1 − t/‖z‖), 0 for an all-zero group, NaN kept
template <typename T>
ALWAYS_INLINE T euclidean_scale(const Layer<T>& L, T q_sum) {
  if (q_sum == T(0)) {
    return T(0);
  }
  return clamp_min(T(1) - T(1) / std::sqrt(q_sum) * L.threshold, T(0));
}

// Per-group totals of per-column sums (a group is `kernel` adjacent columns)
template <typename T>
ALWAYS_INLINE void group_totals(const T* at, int64_t groups, int64_t kernel, T* out) {
  for (int64_t j = 0; j < groups; ++j) {
    T sum = at[j * kernel];
    for (int64_t k = 1; k < kernel; ++k) {
      sum += at[j * kernel + k];
    }
    out[j] = sum;
  }
}

// Input-channel groups: columns [c0, c0 + w) of every row. Sums run over the rows at each
// column, then over the kernel positions of a group: the order of the eager matrix-vector
// group sum. The Newton iterations of all groups of the block run together, until every one
// has converged (as the eager solver does per block).
template <typename T, int64_t kPenalty, int64_t kMetric>
ALWAYS_INLINE void in_channel_block(const Layer<T>& L, const Block& b, Scratch<T>& S) {
  const int64_t K = L.kernel, c0 = b.begin * K, nb = b.end - b.begin, w = nb * K;
  const int64_t rows = L.rows, stride = L.cols;
  auto row = [&](int64_t o) { return L.p + o * stride + c0; };
  auto adam_row = [&](int64_t o, T* c) {
    adam_pass<T, kPenalty, kMetric>(L, o * stride + c0, w, c);
  };
  S.s_at.assign(w, T(0));
  S.t_at.assign(w, T(0));
  S.theta_at.resize(w);
  S.q_sum.resize(nb);
  S.qc_sum.resize(nb);
  S.theta.resize(nb);
  T* __restrict s_at = S.s_at.data();
  T* __restrict t_at = S.t_at.data();
  T* __restrict theta_at = S.theta_at.data();
  T* __restrict theta = S.theta.data();
  auto spread = [&]() {  // θ of each group at each of its columns
    for (int64_t j = 0; j < w; ++j) {
      theta_at[j] = theta[j / K];
    }
  };
  if constexpr (kMetric == kEuclidean) {
    for (int64_t o = 0; o < rows; ++o) {
      adam_row(o, nullptr);
      const T* __restrict z = row(o);
      for (int64_t j = 0; j < w; ++j) {
        s_at[j] += z[j] * z[j];
      }
    }
    group_totals(s_at, nb, K, S.q_sum.data());
    for (int64_t j = 0; j < nb; ++j) {
      theta[j] = euclidean_scale(L, S.q_sum[j]);  // here θ is the group's scale
    }
    spread();
    for (int64_t o = 0; o < rows; ++o) {
      T* __restrict z = row(o);
      for (int64_t j = 0; j < w; ++j) {
        z[j] = z[j] * theta_at[j];
      }
    }
  } else {
    S.c.resize(rows * w);
    for (int64_t o = 0; o < rows; ++o) {  // the Adam pass, then Σq and Σqc per column
      T* __restrict c = S.c.data() + o * w;
      adam_row(o, c);
      const T* __restrict z = row(o);
      for (int64_t j = 0; j < w; ++j) {
        const T q = z[j] * z[j];
        s_at[j] += q;
        t_at[j] += q * c[j];
      }
    }
    group_totals(s_at, nb, K, S.q_sum.data());
    group_totals(t_at, nb, K, S.qc_sum.data());
    for (int64_t j = 0; j < nb; ++j) {
      theta[j] = newton_start(L, S.q_sum[j], S.qc_sum[j]);
    }
    for (int64_t step = 0; step < L.max_newton; ++step) {
      spread();
      std::fill(s_at, s_at + w, T(0));
      std::fill(t_at, t_at + w, T(0));
      for (int64_t o = 0; o < rows; ++o) {
        const T* __restrict z = row(o);
        const T* __restrict c = S.c.data() + o * w;
        for (int64_t j = 0; j < w; ++j) {  // S(θ) = Σ q/(θ+c)², Σ q/(θ+c)³
          const T r = T(1) / (c[j] + theta_at[j]);
          const T u = z[j] * z[j] * r * r;
          s_at[j] += u;
          t_at[j] += u * r;
        }
      }
      group_totals(s_at, nb, K, S.q_sum.data());
      group_totals(t_at, nb, K, S.qc_sum.data());
      bool converged = true;
      for (int64_t j = 0; j < nb; ++j) {
        const T next = newton_step(L, theta[j], S.q_sum[j], S.qc_sum[j]);
        converged &= std::abs(next - theta[j]) <= L.tolerance * next;
        theta[j] = next;
      }
      if (converged) {
        break;
      }
    }
    spread();
    for (int64_t o = 0; o < rows; ++o) {
      T* __restrict z = row(o);
      const T* __restrict c = S.c.data() + o * w;
      for (int64_t j = 0; j < w; ++j) {  // z·θ/(θ + c)
        z[j] = z[j] * (T(1) / (c[j] + theta_at[j]) * theta_at[j]);
      }
    }
  }
}

// Whole rows [r0, r1): the elementwise l1 in one pass, or output-channel groups one row at a
// time (the Adam pass of a row, then its solver while the row is in L1/L2).
template <typename T, int64_t kPenalty, int64_t kMetric>
ALWAYS_INLINE void row_block(const Layer<T>& L, const Block& b, Scratch<T>& S) {
  const int64_t n = L.cols;
  if constexpr (kPenalty == kL1) {
    adam_pass<T, kPenalty, kMetric>(L, b.begin * n, (b.end - b.begin) * n, nullptr);
    return;
  }
  S.c.resize(kMetric == kEuclidean ? 0 : n);
  for (int64_t row = b.begin; row < b.end; ++row) {
    adam_pass<T, kPenalty, kMetric>(L, row * n, n, S.c.data());
    T* __restrict z = L.p + row * n;
    const T* __restrict c = S.c.data();
    T q_sum, qc_sum;
    if constexpr (kMetric == kEuclidean) {
      row_q_sums<T, false>(z, c, n, q_sum, qc_sum);
      const T scale = euclidean_scale(L, q_sum);
      for (int64_t i = 0; i < n; ++i) {
        z[i] = z[i] * scale;
      }
      continue;
    }
    row_q_sums<T, true>(z, c, n, q_sum, qc_sum);
    T theta = newton_start(L, q_sum, qc_sum);
    for (int64_t step = 0; step < L.max_newton; ++step) {
      T s, t3;
      row_newton_sums<T>(z, c, theta, n, s, t3);
      const T next = newton_step(L, theta, s, t3);
      const bool converged = std::abs(next - theta) <= L.tolerance * next;
      theta = next;
      if (converged) {
        break;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      z[i] = z[i] * (T(1) / (c[i] + theta) * theta);
    }
  }
}

template <typename T, int64_t kPenalty, int64_t kMetric>
ALWAYS_INLINE void run_block(const Layer<T>& L, const Block& b, Scratch<T>& S) {
  if constexpr (kPenalty == kGroupLasso) {
    if (L.group_by == kInChannel) {
      in_channel_block<T, kPenalty, kMetric>(L, b, S);
      return;
    }
  }
  row_block<T, kPenalty, kMetric>(L, b, S);
}

template <typename T, int64_t kPenalty>
ALWAYS_INLINE void run_block(const Layer<T>& L, const Block& b, Scratch<T>& S) {
  if (L.metric == kEuclidean) {
    run_block<T, kPenalty, kEuclidean>(L, b, S);
  } else if (L.metric == kAdaptive) {
    run_block<T, kPenalty, kAdaptive>(L, b, S);
  } else {
    run_block<T, kPenalty, kUncorrected>(L, b, S);
  }
}

template <typename T>
ALWAYS_INLINE void run_block(const Layer<T>& L, const Block& b, Scratch<T>& S) {
  if (L.penalty == kL1) {
    run_block<T, kL1>(L, b, S);
  } else {
    run_block<T, kGroupLasso>(L, b, S);
  }
}

// One definition per dtype, compiled for AVX-512, AVX2+FMA and baseline x86-64; the loader
// picks the clone the CPU supports when the library loads.
CLONES void run_block_float(const Layer<float>& L, const Block& b, Scratch<float>& S) {
  run_block(L, b, S);
}
CLONES void run_block_double(const Layer<double>& L, const Block& b, Scratch<double>& S) {
  run_block(L, b, S);
}
void run(const Layer<float>& L, const Block& b, Scratch<float>& S) {
  run_block_float(L, b, S);
}
void run(const Layer<double>& L, const Block& b, Scratch<double>& S) {
  run_block_double(L, b, S);
}

// Blocks of whole groups (input channels; rows for output channels and the elementwise l1) of
// about `elements` each.
void add_blocks(int64_t layer, int64_t rows, int64_t cols, int64_t kernel, bool in,
                int64_t elements, std::vector<Block>& blocks) {
  const int64_t groups = in ? cols / kernel : rows;
  const int64_t per_group = in ? rows * kernel : cols;
  const int64_t per_block = std::max<int64_t>(1, elements / per_group);
  for (int64_t g = 0; g < groups; g += per_block) {
    const int64_t end = std::min(groups, g + per_block);
    blocks.push_back({layer, g, end, (end - g) * per_group});
  }
}

template <typename T>
void step_group(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                at::TensorList steps, double lr, double beta1, double beta2, double weight_decay,
                double eps, bool maximize, int64_t penalty, int64_t metric, int64_t group_by,
                double lambda, int64_t max_newton, at::IntArrayRef group_sizes) {
  const bool amsgrad = !max_exp_avg_sqs.empty();
  std::vector<Layer<T>> layers;
  std::vector<Block> blocks;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& step_t = steps[i];
    // state["step"] += 1, then the bias corrections in double, as torch's AdamW
    double step;
    if (step_t.scalar_type() == at::kFloat) {
      step = double(++*step_t.data_ptr<float>());
    } else {
      step = ++*step_t.data_ptr<double>();
    }
    if (p.numel() == 0) {
      continue;
    }
    const double bias_correction1 = 1 - std::pow(beta1, step);
    const double bias_correction2 = 1 - std::pow(beta2, step);
    const double lerp_weight = 1 - beta1;
    const int64_t rows = p.size(0), cols = p.numel() / rows;
    const int64_t kernel = p.size(2) * p.size(3);
    // the group lasso's weight √p_g: of the weight's own groups, or as `group_sizes` says
    const int64_t own_size = group_by == kInChannel ? rows * kernel : cols;
    const int64_t group_size = group_sizes.empty() ? own_size : group_sizes[i];
    const double step_size = lr * lambda;
    Layer<T> L;
    L.p = p.data_ptr<T>();
    L.g = grads[i].data_ptr<T>();
    L.m = exp_avgs[i].data_ptr<T>();
    L.v = exp_avg_sqs[i].data_ptr<T>();
    L.vmax = amsgrad ? max_exp_avg_sqs[i].data_ptr<T>() : nullptr;
    L.rows = rows;
    L.cols = cols;
    L.kernel = kernel;
    L.grad_sign = maximize ? T(-1) : T(1);
    L.decay = T(1 - lr * weight_decay);
    L.lerp_small = std::abs(T(lerp_weight)) < T(0.5);
    L.lerp_coeff = L.lerp_small ? T(lerp_weight) : T(lerp_weight) - T(1);
    L.beta2 = T(beta2);
    L.sq_coeff = T(1 - beta2);
    L.bc2_sqrt = T(std::pow(bias_correction2, 0.5));
    L.eps = T(eps);
    L.neg_step = T(-(lr / bias_correction1));
    L.threshold = T(penalty == kL1 ? step_size : step_size * std::sqrt(double(group_size)));
    L.tolerance = T(std::pow(double(std::numeric_limits<T>::epsilon()), 0.5));
    L.tiny = T(1e-38);
    L.penalty = penalty;
    L.metric = metric;
    L.group_by = group_by;
    L.max_newton = max_newton;
    const int64_t block_arrays = penalty == kGroupLasso && metric != kEuclidean ? 2 : 1;
    add_blocks(int64_t(layers.size()), rows, cols, kernel,
               group_by == kInChannel && penalty == kGroupLasso,
               kBlockBytes / (block_arrays * int64_t(sizeof(T))), blocks);
    layers.push_back(L);
  }
  std::stable_sort(blocks.begin(), blocks.end(),
                   [](const Block& a, const Block& b) { return a.elements > b.elements; });
  std::atomic<int64_t> next{0};
  const int64_t count = int64_t(blocks.size());
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch;
    for (int64_t worker = begin; worker < end; ++worker) {
      for (int64_t i = next++; i < count; i = next++) {
        run(layers[blocks[i].layer], blocks[i], scratch);
      }
    }
  });
}

void check(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n && (max_exp_avg_sqs.empty() || max_exp_avg_sqs.size() == n),
              "adamw_prox_: every list needs one tensor per param");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.dim() == 4, "adamw_prox_: params must be 4-D");
    TORCH_CHECK(
        p.device().is_cpu() && p.is_contiguous() && p.scalar_type() == params[0].scalar_type(),
        "adamw_prox_: params must be contiguous CPU tensors of one dtype");
    for (const at::Tensor* t : {&grads[i], &exp_avgs[i], &exp_avg_sqs[i]}) {
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->sizes() == p.sizes() &&
                      t->scalar_type() == p.scalar_type() && t->layout() == at::kStrided,
                  "adamw_prox_: gradients and state must be contiguous like their param");
    }
    if (!max_exp_avg_sqs.empty()) {
      const at::Tensor& t = max_exp_avg_sqs[i];
      TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.sizes() == p.sizes() &&
                      t.scalar_type() == p.scalar_type(),
                  "adamw_prox_: max_exp_avg_sq must be contiguous like its param");
    }
    const at::Tensor& s = steps[i];
    TORCH_CHECK(s.device().is_cpu() && s.numel() == 1 &&
                    (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
                "adamw_prox_: steps must be one-element float CPU tensors");
  }
}

void adamw_prox_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                 at::TensorList steps, double lr, double beta1, double beta2,
                 double weight_decay, double eps, bool maximize, int64_t penalty, int64_t metric,
                 int64_t group_by, double lambda, int64_t max_newton,
                 at::IntArrayRef group_sizes) {
  if (params.empty()) {
    return;
  }
  check(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps);
  TORCH_CHECK(group_sizes.empty() || group_sizes.size() == params.size(),
              "adamw_prox_: group_sizes needs one size per param, or none");
  TORCH_CHECK(penalty == kGroupLasso || penalty == kL1, "adamw_prox_: unknown penalty");
  TORCH_CHECK(metric >= kEuclidean && metric <= kUncorrected, "adamw_prox_: unknown metric");
  TORCH_CHECK(group_by == kInChannel || group_by == kOutChannel, "adamw_prox_: unknown group_by");
  if (params[0].scalar_type() == at::kFloat) {
    step_group<float>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                      beta2, weight_decay, eps, maximize, penalty, metric, group_by, lambda,
                      max_newton, group_sizes);
  } else {
    TORCH_CHECK(params[0].scalar_type() == at::kDouble, "adamw_prox_: float32 or float64 only");
    step_group<double>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                       beta2, weight_decay, eps, maximize, penalty, metric, group_by, lambda,
                       max_newton, group_sizes);
  }
}

}  // namespace

TORCH_LIBRARY(lightning_mtl, m) {
  m.def(
      "adamw_prox_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, float lr, "
      "float beta1, float beta2, float weight_decay, float eps, bool maximize, int penalty, "
      "int metric, int group_by, float lambda_, int max_newton_steps, int[] group_sizes) -> ()",
      &adamw_prox_);
}
