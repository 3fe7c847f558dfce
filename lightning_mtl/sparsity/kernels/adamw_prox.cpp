// The AdamW step and the sparsity prox of 4-D conv weights in one pass over memory (CPU).
//
// `lightning_mtl::adamw_prox_` takes the params of one ProxAdamW param group (contiguous
// [O, I, kh, kw] float32 or float64 weights, their gradients and torch AdamW's state) and
// applies, per weight, torch's AdamW update followed by the prox of `penalty` (group lasso or
// l1) in the metric `metric`, exactly as the eager path does (sparsity/optimizer.py and
// sparsity/operators/), with the same operation order so results agree to float rounding.
// The options are named as ProxAdamW names them (penalty="l1", metric="adaptive", ...); the
// names are mapped to this file's codes here only.
//
// A weight is a matrix [O, C] (C = I·kh·kw). It is cut into blocks of whole groups (columns
// of input channels, or rows of output channels) of about kBlockBytes of solver data: pass 1
// streams the block from memory once (Adam update; z written to the weight, the metric's
// c = t/d to scratch), the group sums and the Newton iterations of the adaptive prox then
// re-read the block from the CPU cache, and the last pass scales z in place. Blocks are
// independent and go to threads dynamically; their results do not depend on the number of
// threads.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

namespace {

enum Penalty : int64_t { kGroupLasso, kL1 };
enum Metric : int64_t { kEuclidean, kAdaptive, kUncorrected };
enum GroupBy : int64_t { kInChannel, kOutChannel };

// An option's value by the name ProxAdamW gives it
template <typename Code>
struct Named {
  const char* name;
  Code code;
};
constexpr Named<Penalty> kPenalties[] = {{"group_lasso", kGroupLasso}, {"l1", kL1}};
constexpr Named<Metric> kMetrics[] = {
    {"euclidean", kEuclidean}, {"adaptive", kAdaptive}, {"uncorrected", kUncorrected}};
constexpr Named<GroupBy> kGroupBys[] = {{"in_channel", kInChannel}, {"out_channel", kOutChannel}};

// The code of `option`'s value `name`; an unknown name is an error listing the allowed ones.
template <typename Code, size_t N>
Code code_of(const char* option, c10::string_view name, const Named<Code> (&names)[N]) {
  const Named<Code>* match =
      std::find_if(std::begin(names), std::end(names),
                   [&](const Named<Code>& known) { return name == known.name; });
  if (match == std::end(names)) {
    std::string allowed;
    for (const Named<Code>& known : names) {
      allowed += (allowed.empty() ? "'" : ", '") + std::string(known.name) + "'";
    }
    TORCH_CHECK(false, "adamw_prox_: unknown ", option, " '", name, "'; allowed: ", allowed);
  }
  return match->code;
}

// The scalar options of one call, as the param group sets them
struct Options {
  double lr, beta1, beta2, weight_decay, eps;
  bool maximize;
  Penalty penalty;
  Metric metric;
  GroupBy group_by;
  double lambda;
  int64_t max_newton;
};

// One param group's tensors, gathered as torch's AdamW gathers them, and the group sizes
struct Group {
  at::TensorList params, grads, exp_avgs, exp_avg_sqs;
  at::TensorList max_exp_avg_sqs;  // empty without amsgrad
  at::TensorList steps;
  at::IntArrayRef group_sizes;  // one p_g per param, or empty: each weight's own
};

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
  Penalty penalty;
  Metric metric;
  GroupBy group_by;
  int64_t max_newton;
};

struct Block {
  int64_t layer, begin, end;  // input-channel columns [begin, end)·kernel, or rows [begin, end)
  int64_t elements;
};

// A thread's buffers, reused from block to block. Input-channel blocks sum per column (`_at`),
// then per group (`_sum`, a group being `kernel` adjacent columns).
template <typename T>
struct Scratch {
  std::vector<T> c;  // the metric's c = t/d of each element
  std::vector<T> q_at, q_sum;  // Σ z²
  std::vector<T> qc_at, qc_sum;  // Σ z²·c
  std::vector<T> s_at, s_sum;  // a Newton step's S(θ) = Σ z²/(θ+c)²
  std::vector<T> t3_at, t3_sum;  // a Newton step's Σ z²/(θ+c)³
  std::vector<T> theta, theta_at;  // the adaptive prox's θ per group and at each column
  std::vector<T> scale, scale_at;  // the euclidean prox's scale per group and at each column
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

// A per-group value at each of its group's `kernel` columns
template <typename T>
ALWAYS_INLINE void spread(const T* per_group, int64_t columns, int64_t kernel, T* at) {
  for (int64_t j = 0; j < columns; ++j) {
    at[j] = per_group[j / kernel];
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
  S.q_at.assign(w, T(0));
  S.q_sum.resize(nb);
  T* __restrict q_at = S.q_at.data();
  if constexpr (kMetric == kEuclidean) {
    for (int64_t o = 0; o < rows; ++o) {
      adam_row(o, nullptr);
      const T* __restrict z = row(o);
      for (int64_t j = 0; j < w; ++j) {
        q_at[j] += z[j] * z[j];
      }
    }
    group_totals(q_at, nb, K, S.q_sum.data());
    S.scale.resize(nb);
    S.scale_at.resize(w);
    for (int64_t j = 0; j < nb; ++j) {
      S.scale[j] = euclidean_scale(L, S.q_sum[j]);
    }
    spread(S.scale.data(), w, K, S.scale_at.data());
    const T* __restrict scale_at = S.scale_at.data();
    for (int64_t o = 0; o < rows; ++o) {
      T* __restrict z = row(o);
      for (int64_t j = 0; j < w; ++j) {
        z[j] = z[j] * scale_at[j];
      }
    }
  } else {
    S.c.resize(rows * w);
    S.qc_at.assign(w, T(0));
    S.qc_sum.resize(nb);
    S.s_at.resize(w);
    S.s_sum.resize(nb);
    S.t3_at.resize(w);
    S.t3_sum.resize(nb);
    S.theta.resize(nb);
    S.theta_at.resize(w);
    T* __restrict qc_at = S.qc_at.data();
    T* __restrict s_at = S.s_at.data();
    T* __restrict t3_at = S.t3_at.data();
    T* __restrict theta = S.theta.data();
    T* __restrict theta_at = S.theta_at.data();
    for (int64_t o = 0; o < rows; ++o) {  // the Adam pass, then Σq and Σqc per column
      T* __restrict c = S.c.data() + o * w;
      adam_row(o, c);
      const T* __restrict z = row(o);
      for (int64_t j = 0; j < w; ++j) {
        const T q = z[j] * z[j];
        q_at[j] += q;
        qc_at[j] += q * c[j];
      }
    }
    group_totals(q_at, nb, K, S.q_sum.data());
    group_totals(qc_at, nb, K, S.qc_sum.data());
    for (int64_t j = 0; j < nb; ++j) {
      theta[j] = newton_start(L, S.q_sum[j], S.qc_sum[j]);
    }
    for (int64_t step = 0; step < L.max_newton; ++step) {
      spread(theta, w, K, theta_at);
      std::fill(s_at, s_at + w, T(0));
      std::fill(t3_at, t3_at + w, T(0));
      for (int64_t o = 0; o < rows; ++o) {
        const T* __restrict z = row(o);
        const T* __restrict c = S.c.data() + o * w;
        for (int64_t j = 0; j < w; ++j) {  // S(θ) = Σ q/(θ+c)², Σ q/(θ+c)³
          const T r = T(1) / (c[j] + theta_at[j]);
          const T u = z[j] * z[j] * r * r;
          s_at[j] += u;
          t3_at[j] += u * r;
        }
      }
      group_totals(s_at, nb, K, S.s_sum.data());
      group_totals(t3_at, nb, K, S.t3_sum.data());
      bool converged = true;
      for (int64_t j = 0; j < nb; ++j) {
        const T next = newton_step(L, theta[j], S.s_sum[j], S.t3_sum[j]);
        converged &= std::abs(next - theta[j]) <= L.tolerance * next;
        theta[j] = next;
      }
      if (converged) {
        break;
      }
    }
    spread(theta, w, K, theta_at);
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
void step_group(const Group& group, const Options& options) {
  const bool amsgrad = !group.max_exp_avg_sqs.empty();
  std::vector<Layer<T>> layers;
  std::vector<Block> blocks;
  for (size_t i = 0; i < group.params.size(); ++i) {
    const at::Tensor& p = group.params[i];
    const at::Tensor& step_t = group.steps[i];
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
    const double lr = options.lr, beta1 = options.beta1, beta2 = options.beta2;
    const double bias_correction1 = 1 - std::pow(beta1, step);
    const double bias_correction2 = 1 - std::pow(beta2, step);
    const double lerp_weight = 1 - beta1;
    const int64_t rows = p.size(0), cols = p.numel() / rows;
    const int64_t kernel = p.size(2) * p.size(3);
    // the group lasso's weight √p_g: of the weight's own groups, or as `group_sizes` says
    const int64_t own_size = options.group_by == kInChannel ? rows * kernel : cols;
    const int64_t group_size = group.group_sizes.empty() ? own_size : group.group_sizes[i];
    const double step_size = lr * options.lambda;
    Layer<T> L;
    L.p = p.data_ptr<T>();
    L.g = group.grads[i].data_ptr<T>();
    L.m = group.exp_avgs[i].data_ptr<T>();
    L.v = group.exp_avg_sqs[i].data_ptr<T>();
    L.vmax = amsgrad ? group.max_exp_avg_sqs[i].data_ptr<T>() : nullptr;
    L.rows = rows;
    L.cols = cols;
    L.kernel = kernel;
    L.grad_sign = options.maximize ? T(-1) : T(1);
    L.decay = T(1 - lr * options.weight_decay);
    L.lerp_small = std::abs(T(lerp_weight)) < T(0.5);
    L.lerp_coeff = L.lerp_small ? T(lerp_weight) : T(lerp_weight) - T(1);
    L.beta2 = T(beta2);
    L.sq_coeff = T(1 - beta2);
    L.bc2_sqrt = T(std::pow(bias_correction2, 0.5));
    L.eps = T(options.eps);
    L.neg_step = T(-(lr / bias_correction1));
    L.threshold = T(options.penalty == kL1 ? step_size : step_size * std::sqrt(double(group_size)));
    L.tolerance = T(std::pow(double(std::numeric_limits<T>::epsilon()), 0.5));
    L.tiny = T(1e-38);
    L.penalty = options.penalty;
    L.metric = options.metric;
    L.group_by = options.group_by;
    L.max_newton = options.max_newton;
    const int64_t block_arrays = L.penalty == kGroupLasso && L.metric != kEuclidean ? 2 : 1;
    add_blocks(int64_t(layers.size()), rows, cols, kernel,
               L.group_by == kInChannel && L.penalty == kGroupLasso,
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

void check(const Group& group) {
  const at::TensorList params = group.params;
  const size_t n = params.size();
  TORCH_CHECK(group.grads.size() == n && group.exp_avgs.size() == n &&
                  group.exp_avg_sqs.size() == n && group.steps.size() == n &&
                  (group.max_exp_avg_sqs.empty() || group.max_exp_avg_sqs.size() == n),
              "adamw_prox_: every list needs one tensor per param");
  TORCH_CHECK(group.group_sizes.empty() || group.group_sizes.size() == n,
              "adamw_prox_: group_sizes needs one size per param, or none");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.dim() == 4, "adamw_prox_: params must be 4-D");
    TORCH_CHECK(
        p.device().is_cpu() && p.is_contiguous() && p.scalar_type() == params[0].scalar_type(),
        "adamw_prox_: params must be contiguous CPU tensors of one dtype");
    for (const at::Tensor* t : {&group.grads[i], &group.exp_avgs[i], &group.exp_avg_sqs[i]}) {
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->sizes() == p.sizes() &&
                      t->scalar_type() == p.scalar_type() && t->layout() == at::kStrided,
                  "adamw_prox_: gradients and state must be contiguous like their param");
    }
    if (!group.max_exp_avg_sqs.empty()) {
      const at::Tensor& t = group.max_exp_avg_sqs[i];
      TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.sizes() == p.sizes() &&
                      t.scalar_type() == p.scalar_type(),
                  "adamw_prox_: max_exp_avg_sq must be contiguous like its param");
    }
    const at::Tensor& s = group.steps[i];
    TORCH_CHECK(s.device().is_cpu() && s.numel() == 1 &&
                    (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
                "adamw_prox_: steps must be one-element float CPU tensors");
  }
}

void adamw_prox_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                 double lr, double beta1, double beta2, double weight_decay, double eps,
                 bool maximize, c10::string_view penalty, c10::string_view metric,
                 c10::string_view group_by, double lambda, int64_t max_newton,
                 at::IntArrayRef group_sizes) {
  const Penalty penalty_code = code_of("penalty", penalty, kPenalties);
  const Metric metric_code = code_of("metric", metric, kMetrics);
  const GroupBy group_by_code = code_of("group_by", group_by, kGroupBys);
  const Options options{lr,           beta1,       beta2,         weight_decay, eps,       maximize,
                        penalty_code, metric_code, group_by_code, lambda,       max_newton};
  const Group group{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, group_sizes};
  if (params.empty()) {
    return;
  }
  check(group);
  AT_DISPATCH_FLOATING_TYPES(params[0].scalar_type(), "adamw_prox_",
                             [&] { step_group<scalar_t>(group, options); });
}

}  // namespace

TORCH_LIBRARY(lightning_mtl, m) {
  m.def(
      "adamw_prox_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, float lr, "
      "float beta1, float beta2, float weight_decay, float eps, bool maximize, str penalty, "
      "str metric, str group_by, float lambda_, int max_newton_steps, int[] group_sizes) -> ()",
      &adamw_prox_);
}
