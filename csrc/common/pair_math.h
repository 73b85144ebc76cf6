// Per-pair arithmetic of the MI-UE objective, shared by the CPU and CUDA row kernels so that
// both devices run the same formulas (the CPU tests then cover the CUDA arithmetic too).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MIUE_HD __host__ __device__ __forceinline__
#else
#define MIUE_HD inline
#endif

namespace miue {

constexpr double kNormFloor = 1e-8;  // docs/method.md: feature norms are clamped at 1e-8
constexpr double kExpOffset = 1e-8;  // docs/method.md: e_ij = exp(c_ij / t) + 1e-8
// Distances come from the cosine, |f_i - f_j|^2 = n_i^2 + n_j^2 - 2 n_i n_j c_ij, which cancels
// badly for near-duplicate rows; below this fraction of max(n_i, n_j)^2 the pair is recomputed
// from the features (exact zero for identical rows, so their gradient is 0 and not NaN).
constexpr double kRecomputeBelow = 1e-2;
// The most B x B entries the CPU's collapsed-class blocks may hold at once (class_blocks.cpp).
constexpr int64_t kTileElements = int64_t(1) << 24;

// Raw-pointer view of one mi_ue_loss problem; all floating data is in the accumulator type.
template <typename acc_t>
struct LossView {
  const acc_t* features;  // [B, D] raw features, contiguous
  const acc_t* norms;     // [B] |f_i| (not clamped)
  const int64_t* labels;  // [B]
  int64_t B;
  int64_t D;
  acc_t inv_t;        // 1 / temperature
  acc_t sim_weight;   // weight of L_sim
  acc_t dist_weight;  // weight of L_dist
};

// Layout of the per-row statistics saved by the forward pass for the backward pass.
// kDistSlope is dL/dS_i = zeta / (B (D + S_i)) with S_i = sum_{same class} |f_i - f_j|.
enum RowStat : int64_t { kShift = 0, kSameSum = 1, kAllSum = 2, kDistSlope = 3, kNumRowStats = 4 };

template <typename T>
MIUE_HD bool is_finite(T v) {
  return v == v && v - v == T(0);  // NaN fails the first test, +-inf the second
}

template <typename T>
MIUE_HD T abs_value(T v) {
  return v < T(0) ? -v : v;
}

template <typename acc_t>
MIUE_HD acc_t clamped_norm(acc_t n) {
  return n > acc_t(kNormFloor) ? n : (n != n ? n : acc_t(kNormFloor));
}

// Shift m_i for the log-sum-exp of row i: the largest value c_ij / t can take is |z_i| / t
// (|z_j| <= 1), and |z_i| = 1 unless the norm was clamped. The diagonal term then contributes
// exp((|z_i|^2 - |z_i|) / t) >= exp(-0.25 / t), so the sums never underflow for t >= 0.01.
template <typename acc_t>
MIUE_HD acc_t row_shift(acc_t n, acc_t inv_t) {
  const acc_t unit = n / clamped_norm(n);
  return (unit < acc_t(1) ? unit : acc_t(1)) * inv_t;
}

template <typename acc_t>
MIUE_HD acc_t sqrt_acc(acc_t v) {
  return std::sqrt(v);
}

// |f| from the row's largest magnitude and its sum of squares scaled by that magnitude (so huge
// features do not overflow); a NaN anywhere in the row gives NaN, an infinity gives +inf.
template <typename acc_t>
MIUE_HD acc_t norm_from_scaled(acc_t biggest, acc_t scaled_square_sum) {
  if (biggest != biggest) return biggest;
  if (!is_finite(biggest)) return biggest;
  return biggest * sqrt_acc(scaled_square_sum);
}

// |f_i - f_j| computed directly, scaled by s so that huge features do not overflow. The
// generic loop (float64 on the CPU); the CPU float32 path and the CUDA kernels have their own
// vectorised / block-cooperative versions of the same formula.
template <typename acc_t>
MIUE_HD acc_t exact_distance(const acc_t* fi, const acc_t* fj, int64_t D, acc_t s) {
  const acc_t inv_s = acc_t(1) / s;
  acc_t sum = 0;
  for (int64_t k = 0; k < D; ++k) {
    const acc_t d = (fi[k] - fj[k]) * inv_s;
    sum += d * d;
  }
  return s * sqrt_acc(sum);
}

template <typename acc_t>
struct PairDistance {
  acc_t r;      // |f_i - f_j| when !exact
  bool exact;   // near-duplicate: r must be recomputed from the features (exact_distance) ...
  acc_t scale;  // ... with this scale
};

// |f_i - f_j| from the cosine c_ij of the Gram matrix, or the verdict that the pair is a
// near-duplicate whose distance the Gram identity cannot give (it cancels), in which case the
// caller computes it from the rows. Callers handle near-duplicates in their own way: the CPU
// inline per row, the CUDA kernels cooperatively per block after the pass over the row (so
// that every D-long loop is coalesced and every output element has one writer).
template <typename acc_t>
MIUE_HD PairDistance<acc_t> pair_distance(const LossView<acc_t>& v, int64_t i, int64_t j, acc_t c_ij) {
  const acc_t n_i = v.norms[i], n_j = v.norms[j];
  const acc_t nc_i = clamped_norm(n_i), nc_j = clamped_norm(n_j);
  const acc_t s = nc_i > nc_j ? nc_i : nc_j;
  const acc_t inv_s = acc_t(1) / s;
  const acc_t a = n_i * inv_s, b = n_j * inv_s;
  const acc_t q = (a - b) * (a - b) + acc_t(2) * (a * b - (nc_i * inv_s) * (nc_j * inv_s) * c_ij);
  if (!(q >= acc_t(kRecomputeBelow))) return {acc_t(0), true, s};
  return {s * sqrt_acc(q), false, s};
}

// Forward contribution of pair (i, j) to row i's sums (shifted by m_i). A near-duplicate
// same-class pair adds nothing here; on_exact(j, scale) is called for it instead.
template <typename acc_t, typename OnExact>
MIUE_HD void forward_pair(const LossView<acc_t>& v, int64_t i, int64_t j, acc_t c_ij, acc_t m_i, acc_t offset_i,
                          acc_t& same_sum, acc_t& all_sum, acc_t& dist_sum, OnExact on_exact) {
  const bool same = v.labels[i] == v.labels[j];
  if (v.sim_weight != acc_t(0)) {
    const acc_t e = std::exp(c_ij * v.inv_t - m_i) + offset_i;
    all_sum += e;
    if (same) same_sum += e;
  }
  if (v.dist_weight != acc_t(0) && same && j != i) {
    const PairDistance<acc_t> d = pair_distance(v, i, j, c_ij);
    if (d.exact) {
      on_exact(j, d.scale);
    } else {
      dist_sum += d.r;
    }
  }
}

template <typename acc_t>
MIUE_HD acc_t distance_slope(const LossView<acc_t>& v, acc_t dist_sum) {
  return v.dist_weight / (acc_t(v.B) * (acc_t(v.D) + dist_sum));
}

// Row i's share of the loss, from its finished sums.
template <typename acc_t>
MIUE_HD acc_t finish_row_loss(const LossView<acc_t>& v, acc_t same_sum, acc_t all_sum, acc_t dist_sum) {
  acc_t out = 0;
  if (v.sim_weight != acc_t(0)) out += v.sim_weight * (std::log(all_sum) - std::log(same_sum));
  if (v.dist_weight != acc_t(0)) out += v.dist_weight * std::log1p(dist_sum / acc_t(v.D));
  return out / acc_t(v.B);
}

// Backward of both terms folds into one product dF = M Z with Z the unit rows (f_j = nc_j z_j):
//   M_ij = g * (H_ij / nc_i - W_ij nc_j),  H_ij = dL/dc_ij + dL/dc_ji,
//   W_ij = [y_i = y_j] (w_i + w_j) / |f_i - f_j|,  w_i = zeta / (B (D + S_i)),
// and a row correction (normalisation backward and the f_i side of the distances) that lands
// on the diagonal: M_ii += g * (nc_i sum_j W_ij - [n_i >= 1e-8] sum_j H_ij c_ij / nc_i).
// For near-duplicate pairs W_ij (f_i - f_j) would cancel catastrophically inside M Z, so those
// pairs are left out of M and their g W_ij (f_i - f_j) is added to row i of the output directly
// (exact_pair_weight gives g (w_i + w_j); the caller recomputes |f_i - f_j| and divides by it).
// Returns M_ij without g and adds the pair's share of the two row sums (w_sum holds nc_i W_ij).
template <typename acc_t>
MIUE_HD acc_t backward_pair_similarity(const LossView<acc_t>& v, const acc_t* stats, int64_t i, int64_t j, acc_t c_ij,
                                       acc_t& hc_sum) {
  const bool same = v.labels[i] == v.labels[j];
  const acc_t* si = stats + i * kNumRowStats;
  const acc_t* sj = stats + j * kNumRowStats;
  const acc_t s = c_ij * v.inv_t;
  const acc_t e_i = std::exp(s - si[kShift]);
  const acc_t e_j = sj[kShift] == si[kShift] ? e_i : std::exp(s - sj[kShift]);
  const acc_t scale = -v.sim_weight * v.inv_t / acc_t(v.B);
  const acc_t g_ij = scale * ((same ? e_i / si[kSameSum] : acc_t(0)) - e_i / si[kAllSum]);
  const acc_t g_ji = scale * ((same ? e_j / sj[kSameSum] : acc_t(0)) - e_j / sj[kAllSum]);
  const acc_t h = g_ij + g_ji;
  hc_sum += h * c_ij;
  return h / clamped_norm(v.norms[i]);
}

// g (w_i + w_j) for a near-duplicate pair: row i's gradient gets g (w_i + w_j) (f_i - f_j) / r
// once the caller has recomputed r = |f_i - f_j|. The caller divides the difference by r
// (both are huge or tiny together), never the weight: (w_i + w_j) / r underflows for huge
// features. At r = 0 the pair adds nothing (gradient 0 there, docs/method.md); a NaN r propagates.
template <typename acc_t>
MIUE_HD acc_t exact_pair_weight(const acc_t* stats, int64_t i, int64_t j, acc_t upstream) {
  const acc_t w_i = stats[i * kNumRowStats + kDistSlope];
  const acc_t w_j = stats[j * kNumRowStats + kDistSlope];
  return upstream * (w_i + w_j);
}

// For a same-class pair j != i: its share of M_ij (without g). A near-duplicate pair has none;
// on_exact(j, scale) is called for it instead.
template <typename acc_t, typename OnExact>
MIUE_HD acc_t backward_pair_distance(const LossView<acc_t>& v, const acc_t* stats, int64_t i, int64_t j, acc_t c_ij,
                                     acc_t& w_sum, OnExact on_exact) {
  const PairDistance<acc_t> d = pair_distance(v, i, j, c_ij);
  if (d.exact) {
    on_exact(j, d.scale);
    return acc_t(0);
  }
  if (d.r == acc_t(0)) return acc_t(0);  // gradient 0 at distance 0; NaN propagates
  const acc_t w_i = stats[i * kNumRowStats + kDistSlope];
  const acc_t w_j = stats[j * kNumRowStats + kDistSlope];
  // norm / r first: W_ij = (w_i + w_j) / r alone underflows for huge features
  const acc_t inv_r = acc_t(1) / d.r;
  w_sum += (w_i + w_j) * (clamped_norm(v.norms[i]) * inv_r);
  return -(w_i + w_j) * (clamped_norm(v.norms[j]) * inv_r);
}

template <typename acc_t, typename OnExact>
MIUE_HD acc_t backward_pair(const LossView<acc_t>& v, const acc_t* stats, int64_t i, int64_t j, acc_t c_ij,
                            acc_t& w_sum, acc_t& hc_sum, OnExact on_exact) {
  acc_t m_ij = 0;
  if (v.sim_weight != acc_t(0)) m_ij += backward_pair_similarity(v, stats, i, j, c_ij, hc_sum);
  if (v.dist_weight != acc_t(0) && j != i && v.labels[i] == v.labels[j])
    m_ij += backward_pair_distance(v, stats, i, j, c_ij, w_sum, on_exact);
  return m_ij;
}

template <typename acc_t>
MIUE_HD acc_t backward_diagonal_correction(const LossView<acc_t>& v, int64_t i, acc_t w_sum, acc_t hc_sum) {
  const acc_t n_i = v.norms[i];
  const acc_t nc_i = clamped_norm(n_i);
  // clamp_min passes the gradient where n >= floor, as torch.clamp_min does
  const acc_t normalisation = n_i >= acc_t(kNormFloor) ? hc_sum / nc_i : acc_t(0);
  return w_sum - normalisation;
}

// In-place projected sign step of docs/method.md, in the formula's order of operations and in the
// storage type (each operation rounds like the eager PyTorch expression does).
// min then max, each written so that a NaN in v survives the comparison (and so that x86
// compilers can use one minps / maxps each): the result of torch.clamp for lo <= hi.
template <typename T>
MIUE_HD T clamp_like_torch(T v, T lo, T hi) {
  const T below_hi = hi < v ? hi : v;
  return lo > below_hi ? lo : below_hi;
}

template <typename T>
MIUE_HD T pgd_step(T delta, T x, T grad, T alpha, T eps) {
  const T sign = grad > T(0) ? T(1) : (grad < T(0) ? T(-1) : (grad != grad ? grad : T(0)));
  const T step = alpha * sign;
  const T moved = delta - step;
  const T bounded = clamp_like_torch(moved, T(-eps), eps);
  const T image = x + bounded;
  const T valid = clamp_like_torch(image, T(0), T(1));
  return valid - x;
}

}  // namespace miue
