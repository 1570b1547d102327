// The architecture units' fused steps (SaeStep) and the shared kernels against the autograd
// reference and brute force, on random problems larger than the fixture's: the TopK, AuxK and
// BatchTopK selections (ties included) into entry lists, the by-feature lists, every gradient in
// float64 and float32, one Adam step with the unit-norm decoder against the same step done by hand,
// what forward() leaves alone, a non-finite loss, and BatchTopK's first threshold.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "tensor/half.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tests/sae/arch/arch_problem.h"
#include "tests/util/standard_sae.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"
#include "tests/util/random_inputs.h"

using namespace sae;
using sae::testing::arch_margin;
using sae::testing::ArchProblem;
using sae::testing::expect_bitwise_equal;
using sae::testing::expect_close_to_scale;
using sae::testing::max_abs;
using sae::testing::quantized_cpu;
using sae::testing::random_cpu;
using sae::testing::unit_settings;
using sae::testing::well_conditioned_problem;

namespace {

// By-token lists with room for `capacity` entries over `rows` rows.
SparseFeatures token_lists(int64_t rows, int64_t features, int64_t capacity, DType dtype) {
  SparseFeatures s;
  auto ints = [](int64_t n) { return Tensor::from_vector(std::vector<double>(n, -7.0), Shape{n}, DType::I32); };
  s.col_ptr = ints(features + 1);
  s.row_ptr = ints(rows + 1);
  s.rows = ints(capacity);
  s.cols = ints(capacity);
  s.vals = Tensor::full(Shape{capacity}, NAN, dtype);
  s.row_vals = Tensor::full(Shape{capacity}, NAN, dtype);
  return s;
}

// Dense [rows, F] from by-token lists rows row0.. (and a check that each row's features increase).
std::vector<double> dense_rows(const SparseFeatures& s, int64_t row0, int64_t rows, int64_t features) {
  const std::vector<double> ptr = s.row_ptr.to_vector(), cols = s.cols.to_vector(), vals = s.row_vals.to_vector();
  std::vector<double> out(rows * features, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = int64_t(ptr[row0 + r]); e < int64_t(ptr[row0 + r + 1]); ++e) {
      if (e > int64_t(ptr[row0 + r])) {
        EXPECT_LT(cols[e - 1], cols[e]) << "row " << r << " not in feature order";
      }
      EXPECT_GT(vals[e], 0.0);
      out[r * features + int64_t(cols[e])] = vals[e];
    }
  return out;
}

// The brute force: sort every candidate (value, index) by value down and index up, keep the
// first k (per row, among the allowed features) or `total` (over the whole batch, index row-major),
// and of those the ones > 0. Returns the kept values in a dense [rows, F].
std::vector<double> kept_by_sorting(const std::vector<double>& P, int64_t rows, int64_t features, int64_t k,
                                    const std::vector<uint8_t>* allowed = nullptr) {
  std::vector<double> out(P.size(), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<std::pair<double, int64_t>> candidates;
    for (int64_t i = 0; i < features; ++i)
      if (!allowed || (*allowed)[i]) candidates.push_back({-P[r * features + i], i});
    std::sort(candidates.begin(), candidates.end());  // -value up = value down; ties: index up
    for (int64_t q = 0; q < std::min<int64_t>(k, int64_t(candidates.size())); ++q) {
      const int64_t i = candidates[q].second;
      if (P[r * features + i] > 0) out[r * features + i] = P[r * features + i];
    }
  }
  return out;
}
std::vector<double> kept_flat_by_sorting(const std::vector<double>& P, int64_t total) {
  std::vector<std::pair<double, int64_t>> candidates;
  for (int64_t e = 0; e < int64_t(P.size()); ++e) candidates.push_back({-P[e], e});
  std::sort(candidates.begin(), candidates.end());
  std::vector<double> out(P.size(), 0.0);
  for (int64_t q = 0; q < std::min<int64_t>(total, int64_t(candidates.size())); ++q) {
    const int64_t e = candidates[q].second;
    if (P[e] > 0) out[e] = P[e];
  }
  return out;
}

void expect_same_values(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i] && ++bad <= 5) ADD_FAILURE() << what << ": index " << i << ": got " << got[i] << ", want " << want[i];
  EXPECT_EQ(bad, 0) << what;
}

SaeParams grads_like(const SaeParams& p) {
  SaeParams g = SaeParams::zeros_like(p);
  for (const auto& [name, t] : g.present()) fill_(*t, NAN);  // the step must write every value
  return g;
}

}  // namespace

TEST(ArchKernels, TopKSelectionMatchesBruteForceWithTies) {
  const int64_t n = 37, f = 70;
  for (DType dtype : {DType::F32, DType::F64})
    for (bool ties : {false, true})
      for (int64_t k : {int64_t(1), int64_t(5), int64_t(33), f}) {
        SCOPED_TRACE(cat(dtype_name(dtype), " ties ", ties, " k ", k));
        Rng rng(k + 100 * ties);
        const Tensor pre = ties ? quantized_cpu(Shape{n, f}, dtype, rng) : random_cpu(Shape{n, f}, dtype, rng);
        const Tensor bias = ties ? quantized_cpu(Shape{f}, dtype, rng) : random_cpu(Shape{f}, dtype, rng);
        const std::vector<double> P = add(pre, bias).to_vector();
        // All features; then the allowed ones in rows n .. 2n-1 of the same lists (AuxK's use).
        SparseFeatures s = token_lists(2 * n, f, 2 * n * k, dtype);
        topk_select_(s, pre, bias, Tensor(), k, 0);
        expect_same_values(dense_rows(s, 0, n, f), kept_by_sorting(P, n, f, k), "all features");
        std::vector<uint8_t> allowed(f);
        for (int64_t i = 0; i < f; ++i) allowed[i] = rng.below(3) == 0;
        const Tensor mask = Tensor::from_vector(std::vector<double>(allowed.begin(), allowed.end()), Shape{f}, dtype);
        topk_select_(s, pre, bias, mask, k, n);
        expect_same_values(dense_rows(s, n, n, f), kept_by_sorting(P, n, f, k, &allowed), "allowed features");
      }
}

TEST(ArchKernels, BatchTopKSelectionMatchesBruteForceWithTies) {
  const int64_t n = 23, f = 41;
  for (DType dtype : {DType::F32, DType::F64})
    for (bool ties : {false, true})
      for (int64_t total : {int64_t(1), int64_t(40), int64_t(300), n * f}) {
        SCOPED_TRACE(cat(dtype_name(dtype), " ties ", ties, " total ", total));
        Rng rng(total + 7 * ties);
        const Tensor pre = ties ? quantized_cpu(Shape{n, f}, dtype, rng) : random_cpu(Shape{n, f}, dtype, rng);
        const Tensor bias = random_cpu(Shape{f}, dtype, rng, -0.5, 0.5, false);
        const Tensor P = add(pre, bias);
        SparseFeatures s = token_lists(n, f, total, dtype);
        batchtopk_select_(s, pre, bias, total);
        expect_same_values(dense_rows(s, 0, n, f), kept_flat_by_sorting(P.to_vector(), total), "batch top k");
      }
}

TEST(ArchKernels, SelectionsReadBf16PreActivationsWidened) {
  // The TopK family's pre-activations at --precision bf16: pre bf16, bias and the lists float32.
  // P = widen(pre) + bias in float32, then the brute force; and the lists equal those of the same
  // selection on the widened float32 copy, bit for bit. Sizes cover the CPU kernel's 8-wide path
  // (F = 70: eight blocks of 8 and a tail) and ties (quantized values are exact in bf16).
  const int64_t n = 37, f = 70;
  for (bool ties : {false, true}) {
    Rng rng(5 + ties);
    const Tensor pre16 = (ties ? quantized_cpu(Shape{n, f}, DType::F32, rng) : random_cpu(Shape{n, f}, DType::F32, rng))
                             .to(DType::BF16);
    const Tensor bias = random_cpu(Shape{f}, DType::F32, rng, -0.5, 0.5, false);
    const Tensor widened = pre16.to(DType::F32);
    const std::vector<double> P = add(widened, bias).to_vector();
    for (int64_t k : {int64_t(1), int64_t(5), int64_t(33), f}) {
      SCOPED_TRACE(cat("ties ", ties, " k ", k));
      SparseFeatures s = token_lists(2 * n, f, 2 * n * k, DType::F32), want = token_lists(2 * n, f, 2 * n * k, DType::F32);
      topk_select_(s, pre16, bias, Tensor(), k, 0);
      topk_select_(want, widened, bias, Tensor(), k, 0);
      expect_same_values(dense_rows(s, 0, n, f), kept_by_sorting(P, n, f, k), "topk");
      std::vector<uint8_t> allowed(f);
      for (int64_t i = 0; i < f; ++i) allowed[i] = rng.below(3) == 0;
      const Tensor mask = Tensor::from_vector(std::vector<double>(allowed.begin(), allowed.end()), Shape{f});
      topk_select_(s, pre16, bias, mask, k, n);
      topk_select_(want, widened, bias, mask, k, n);
      expect_same_values(dense_rows(s, n, n, f), kept_by_sorting(P, n, f, k, &allowed), "topk allowed");
      const int64_t used = int64_t(want.row_ptr.to_vector()[2 * n]);
      expect_bitwise_equal(s.row_ptr, want.row_ptr, "row_ptr");
      expect_bitwise_equal(s.cols.slice_rows(0, used), want.cols.slice_rows(0, used), "cols");
      expect_bitwise_equal(s.row_vals.slice_rows(0, used), want.row_vals.slice_rows(0, used), "row_vals");
    }
    for (int64_t total : {int64_t(1), int64_t(300), n * f}) {
      SCOPED_TRACE(cat("ties ", ties, " total ", total));
      SparseFeatures s = token_lists(n, f, total, DType::F32);
      batchtopk_select_(s, pre16, bias, total);
      expect_same_values(dense_rows(s, 0, n, f), kept_flat_by_sorting(P, total), "batch top k");
    }
  }
  // A bf16 pre needs a float32 bias; a bf16 bias is refused.
  SparseFeatures s = token_lists(2, 4, 8, DType::F32);
  EXPECT_THROW(topk_select_(s, Tensor::zeros(Shape{2, 4}).to(DType::BF16), Tensor::zeros(Shape{4}).to(DType::BF16),
                            Tensor(), 1, 0),
               Error);
  EXPECT_THROW(topk_select_(s, Tensor::zeros(Shape{2, 4}).to(DType::BF16), Tensor::zeros(Shape{4}, DType::F64),
                            Tensor(), 1, 0),
               Error);
}

TEST(ArchKernels, ByFeatureListsFromTokenLists) {
  const int64_t n = 19, f = 27;
  Rng rng(3);
  const Tensor pre = random_cpu(Shape{n, f}, DType::F32, rng);
  const Tensor bias = Tensor::zeros(Shape{f});
  SparseFeatures s = token_lists(n, f, n * 6, DType::F32);
  topk_select_(s, pre, bias, Tensor(), 6, 0);
  Tensor col_sum = Tensor::full(Shape{f}, NAN), col_count = Tensor::full(Shape{f}, NAN);
  sparse_by_feature_(s, col_sum, col_count);
  const std::vector<double> dense = dense_rows(s, 0, n, f);
  const std::vector<double> ptr = s.col_ptr.to_vector(), rows = s.rows.to_vector(), vals = s.vals.to_vector();
  const std::vector<double> sums = col_sum.to_vector(), counts = col_count.to_vector();
  for (int64_t i = 0; i < f; ++i) {
    double sum = 0;
    int64_t count = 0, e = int64_t(ptr[i]);
    for (int64_t t = 0; t < n; ++t)
      if (dense[t * f + i] > 0) {
        ASSERT_LT(e, int64_t(ptr[i + 1])) << "feature " << i;
        EXPECT_EQ(rows[e], t);
        EXPECT_EQ(vals[e], dense[t * f + i]);
        ++e;
        sum += dense[t * f + i];
        ++count;
      }
    EXPECT_EQ(e, int64_t(ptr[i + 1])) << "feature " << i;
    EXPECT_EQ(counts[i], count);
    EXPECT_NEAR(sums[i], sum, 1e-5);
  }
}

// TopK at 2048 tokens x 2^20 latents: N F = 2^31 cells, more than int32 counts, while the lists hold 2
// N entries. The list kernels index [F, D] and [N, D] in int64 and take the lists as long as their
// entries, rows and features fit int32 (the front-ends refused N F >= 2^31 before). The by-token lists
// (two entries per token, at the far corners of both axes), then sparse_by_feature, sparse_decode and
// sparse_encoder_backward's gradients, on `device`, read back.
struct ManyLatentsRun {
  static constexpr int64_t n = 2048, f = int64_t(1) << 20, d = 2, per = 2;
  std::vector<double> cols, vals;                          // the by-token lists
  std::vector<double> ptr, rows, col_sum, col_count;       // by feature
  std::vector<double> W_dec, b_dec, x, dpre, x_hat, dW, db;  // inputs and outputs
};
ManyLatentsRun run_many_latents(Device device) {
  ManyLatentsRun r;
  const int64_t n = r.n, f = r.f, d = r.d, per = r.per;
  std::vector<double> row_ptr(n + 1, 0.0);
  r.cols.resize(n * per);
  r.vals.resize(n * per);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t a = (t * 40503) % (f / 2), b = f - 1 - t;  // a < f/2 <= b: increasing in each row
    row_ptr[t + 1] = double((t + 1) * per);
    r.cols[t * per] = double(a);
    r.cols[t * per + 1] = double(b);
    r.vals[t * per] = 0.5 + 0.001 * double(t % 97);
    r.vals[t * per + 1] = 1.5 - 0.001 * double(t % 89);
  }
  SparseFeatures s = token_lists(n, f, n * per, DType::F32);
  s.row_ptr = Tensor::from_vector(row_ptr, Shape{n + 1}, DType::I32);
  s.cols = Tensor::from_vector(r.cols, Shape{n * per}, DType::I32);
  s.row_vals = Tensor::from_vector(r.vals, Shape{n * per});
  for (Tensor* t : {&s.col_ptr, &s.rows, &s.vals, &s.row_ptr, &s.cols, &s.row_vals}) *t = t->to(device);
  Tensor col_sum = Tensor::full(Shape{f}, NAN, DType::F32, device), col_count = col_sum.clone();
  sparse_by_feature_(s, col_sum, col_count);

  Rng rng(11);
  const Tensor W_dec = random_cpu(Shape{f, d}, DType::F32, rng), b_dec = random_cpu(Shape{d}, DType::F32, rng);
  const Tensor x = random_cpu(Shape{n, d}, DType::F32, rng), dpre = random_cpu(Shape{n * per}, DType::F32, rng);
  Tensor x_hat = Tensor::full(Shape{n, d}, NAN, DType::F32, device);
  sparse_decode_(x_hat, s, W_dec.to(device), b_dec.to(device));
  // dW_enc[:, i] = sum_e x[rows[e], :] dpre[e], db_enc[i] = sum_e dpre[e] (dpre: one value per entry).
  ParamUpdate W_enc, b_enc;  // gradients written, no Adam
  W_enc.param = Tensor::zeros(Shape{d, f}, DType::F32, device);
  W_enc.grad = Tensor::full(Shape{d, f}, NAN, DType::F32, device);
  b_enc.param = Tensor::zeros(Shape{f}, DType::F32, device);
  b_enc.grad = Tensor::full(Shape{f}, NAN, DType::F32, device);
  sparse_encoder_backward_(W_enc, b_enc, x.to(device), s, dpre.to(device));

  r.ptr = s.col_ptr.to_vector();
  r.rows = s.rows.to_vector();
  r.col_sum = col_sum.to_vector();
  r.col_count = col_count.to_vector();
  r.W_dec = W_dec.to_vector();
  r.b_dec = b_dec.to_vector();
  r.x = x.to_vector();
  r.dpre = dpre.to_vector();
  r.x_hat = x_hat.to_vector();
  r.dW = W_enc.grad.to_vector();
  r.db = b_enc.grad.to_vector();
  return r;
}

// The latents the checks look at: both ends of both halves.
const int64_t kManyLatentsChecked[] = {0, ManyLatentsRun::f / 2 - 1, ManyLatentsRun::f - ManyLatentsRun::n,
                                       ManyLatentsRun::f - 1};

TEST(ArchKernels, ListsOfManyTokensAndLatentsIndexBeyondInt32Cells) {
  // Values against brute force from the by-token lists.
  const ManyLatentsRun r = run_many_latents(Device::CPU);
  const int64_t n = r.n, f = r.f, d = r.d, per = r.per;
  EXPECT_EQ(r.ptr[f], double(n * per));
  ASSERT_EQ(r.ptr[f] - r.ptr[f - 1], 1.0);  // the last latent: token 0's second entry
  EXPECT_EQ(r.rows[int64_t(r.ptr[f - 1])], 0.0);
  EXPECT_EQ(r.col_count[f - n], 1.0);  // token n - 1's second entry
  EXPECT_EQ(r.col_sum[f - n], r.vals[(n - 1) * per + 1]);
  for (int64_t t : {int64_t(0), int64_t(1), n / 2, n - 1})
    for (int64_t c = 0; c < d; ++c) {
      double want = r.b_dec[c];
      for (int64_t k = t * per; k < (t + 1) * per; ++k) want += r.vals[k] * r.W_dec[int64_t(r.cols[k]) * d + c];
      EXPECT_NEAR(r.x_hat[t * d + c], want, 1e-5) << "token " << t << " column " << c;
    }
  for (int64_t i : kManyLatentsChecked) {
    double want_b = 0, want_w[d] = {0, 0};
    for (int64_t e = int64_t(r.ptr[i]); e < int64_t(r.ptr[i + 1]); ++e) {
      want_b += r.dpre[e];
      for (int64_t c = 0; c < d; ++c) want_w[c] += r.x[int64_t(r.rows[e]) * d + c] * r.dpre[e];
    }
    EXPECT_NEAR(r.db[i], want_b, 1e-5) << "latent " << i;
    for (int64_t c = 0; c < d; ++c) EXPECT_NEAR(r.dW[c * f + i], want_w[c], 1e-5) << "latent " << i;
  }
}

TEST(CudaArch, ListsOfManyTokensAndLatentsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  const ManyLatentsRun cpu = run_many_latents(Device::CPU), gpu = run_many_latents(Device::CUDA);
  EXPECT_EQ(gpu.ptr, cpu.ptr);
  EXPECT_EQ(gpu.rows, cpu.rows);  // stable by token in each feature, as on the CPU
  EXPECT_EQ(gpu.col_count, cpu.col_count);
  EXPECT_EQ(gpu.col_sum, cpu.col_sum);
  for (size_t i = 0; i < cpu.x_hat.size(); ++i) ASSERT_NEAR(gpu.x_hat[i], cpu.x_hat[i], 1e-5) << "x_hat " << i;
  for (int64_t i : kManyLatentsChecked) {
    EXPECT_NEAR(gpu.db[i], cpu.db[i], 1e-5) << "latent " << i;
    for (int64_t c = 0; c < cpu.d; ++c)
      EXPECT_NEAR(gpu.dW[c * cpu.f + i], cpu.dW[c * cpu.f + i], 1e-5) << "latent " << i;
  }
  EXPECT_EQ(gpu.db.size(), cpu.db.size());
}

namespace {
// The BatchTopK selection over more than 2^31 cells: bf16 pre-activations [2056, 2^20] (4.3 GB), all
// -1 but 24 planted values in the first, middle and last rows (the last rows' cells lie past 2^31),
// ties at the threshold; a float32 bias lifts the last column. Returns the lists read back.
struct ManyCellsSelection {
  static constexpr int64_t n = 2056, f = int64_t(1) << 20, total = 14;
  struct Cell {
    int64_t row, col;
    double value;  // pre-activation + bias, exact in bf16 and float32
  };
  std::vector<Cell> planted;
  std::vector<double> row_ptr, cols, vals;
};
ManyCellsSelection select_many_cells(Device device) {
  using S = ManyCellsSelection;
  S r;
  const int64_t n = S::n, f = S::f;
  const int64_t rows[] = {0, 1, n / 2, 2047, 2048, n - 1};
  const int64_t cols[] = {0, 77, f - 2, f - 1};
  const double values[] = {0.5, 1.25, 2.0, 1.25, 0.75, 1.25};  // each row's values: rotated per row
  for (size_t a = 0; a < std::size(rows); ++a)
    for (size_t b = 0; b < std::size(cols); ++b) r.planted.push_back({rows[a], cols[b], values[(a + b) % std::size(values)]});
  const double lift = 0.25;  // bias[f - 1]
  Tensor pre = Tensor::empty(Shape{n, f}, DType::BF16);
  BFloat16* p = pre.data<BFloat16>();
  std::fill(p, p + n * f, to_bfloat16(-1.0f));
  for (const S::Cell& c : r.planted)
    p[c.row * f + c.col] = to_bfloat16(static_cast<float>(c.value - (c.col == f - 1 ? lift : 0.0)));
  Tensor bias = Tensor::zeros(Shape{f});
  bias.data<float>()[f - 1] = static_cast<float>(lift);
  SparseFeatures s = token_lists(n, f, S::total, DType::F32);
  for (Tensor* t : {&s.col_ptr, &s.rows, &s.vals, &s.row_ptr, &s.cols, &s.row_vals}) *t = t->to(device);
  batchtopk_select_(s, pre.to(device), bias.to(device), S::total);
  r.row_ptr = s.row_ptr.to_vector();
  r.cols = s.cols.to_vector();
  r.vals = s.row_vals.to_vector();
  return r;
}
}  // namespace

TEST(ArchKernels, BatchTopKSelectsAmongMoreThanInt32Cells) {
  // Brute force from the planted cells: the `total` largest, ties at the threshold to the rows in
  // order and in a row to the columns in order (the kernels' rule), as by-token lists.
  using S = ManyCellsSelection;
  const S r = select_many_cells(Device::CPU);
  std::vector<double> sorted;
  for (const S::Cell& c : r.planted) sorted.push_back(c.value);
  std::sort(sorted.rbegin(), sorted.rend());
  const double threshold = sorted[S::total - 1];
  int64_t ties = S::total;
  for (double v : sorted) ties -= v > threshold;
  ASSERT_GT(ties, 0);
  ASSERT_LT(ties, std::count(sorted.begin(), sorted.end(), threshold));  // some ties are left out
  std::vector<double> want_ptr(S::n + 1, 0.0), want_cols, want_vals;
  for (const S::Cell& c : r.planted)  // planted in row order, then column order
    if (c.value > threshold || (c.value == threshold && ties-- > 0)) {
      want_cols.push_back(double(c.col));
      want_vals.push_back(c.value);
      for (int64_t t = c.row + 1; t <= S::n; ++t) ++want_ptr[t];
    }
  ASSERT_EQ(r.row_ptr.size(), want_ptr.size());
  EXPECT_EQ(r.row_ptr, want_ptr);
  EXPECT_EQ(std::vector<double>(r.cols.begin(), r.cols.begin() + S::total), want_cols);
  EXPECT_EQ(std::vector<double>(r.vals.begin(), r.vals.begin() + S::total), want_vals);
  EXPECT_GT(want_ptr[S::n] - want_ptr[2048], 0.0);  // entries from past 2^31 cells
}

TEST(CudaArch, BatchTopKSelectsAmongMoreThanInt32CellsAsTheCpu) {
  SKIP_WITHOUT_GPU();
  const ManyCellsSelection cpu = select_many_cells(Device::CPU), gpu = select_many_cells(Device::CUDA);
  EXPECT_EQ(gpu.row_ptr, cpu.row_ptr);
  EXPECT_EQ(gpu.cols, cpu.cols);
  EXPECT_EQ(gpu.vals, cpu.vals);
}

namespace {
struct Setting {
  const char* unit;
  bool auxk = false;
  const char* penalty = "step";
  bool unit_norm = false;
  const char* name;
  int64_t encoder_chunk = 0;  // topk: tokens per encoder GEMM (0: the whole batch of kN here)
};

// The chunked topk settings select chunk by chunk (kN = 40 tokens: 6 chunks of 7 and a last of 5; 40
// of 1) and, with AuxK, compute each chunk's pre-activations again for the dead latents.
const Setting kSettings[] = {
    {"topk", false, "step", false, "topk"},
    {"topk", true, "step", true, "topk auxk unit-norm"},
    {"topk", true, "step", true, "topk auxk unit-norm encoder-chunk 7", 7},
    {"topk", false, "step", false, "topk encoder-chunk 1", 1},
    {"batchtopk", true, "step", false, "batchtopk auxk"},
    {"jumprelu", false, "step", true, "jumprelu step unit-norm"},
    {"jumprelu", false, "tanh", false, "jumprelu tanh"},
    {"gated", false, "step", true, "gated unit-norm"},
};

constexpr int64_t kN = 40, kD = 12, kF = 30, kK = 4, kAuxK = 3, kDeadTokens = 50;
constexpr double kLambda = 0.3;

ArchSettings settings_of(const Setting& s) {
  const std::string unit = s.unit;
  std::vector<std::pair<std::string, Json>> given = {{"unit-norm-decoder", Json(s.unit_norm ? "on" : "off")}};
  if (unit == "topk" || unit == "batchtopk") {
    given.push_back({"k", Json(kK)});
    given.push_back({"auxk-coefficient", Json(s.auxk ? 0.5 : 0.0)});
    given.push_back({"auxk-k", Json(kAuxK)});
  }
  if (s.encoder_chunk > 0) given.push_back({"encoder-chunk", Json(s.encoder_chunk)});
  if (unit == "jumprelu") {
    given.push_back({"jumprelu-penalty", Json(s.penalty)});
    given.push_back({"jumprelu-bandwidth", Json(0.5)});
    given.push_back({"jumprelu-tanh-c", Json(2.0)});
    given.push_back({"jumprelu-pre-act", Json(0.1)});
  }
  return unit_settings(unit, given, kDeadTokens);
}

SaeStep step_of(const Setting& s, DType dtype) {
  return SaeStep(arch_unit(s.unit), settings_of(s), kN, kD, kF, dtype, Device::CPU);
}

TopKFamilyStep& topk_step(SaeStep& step) { return dynamic_cast<TopKFamilyStep&>(step.unit_step()); }

// The clock of a step with AuxK: the odd latents have been quiet long enough to be dead.
std::vector<int64_t> half_dead_clock() {
  std::vector<int64_t> clock(kF);
  for (int64_t i = 0; i < kF; ++i) clock[i] = i % 2 ? 60 : 0;
  return clock;
}

// A problem for the setting; with AuxK, the odd latents' encoder bias lowered so that most of them
// fire on no token of the batch (and stay dead), while some of their pre-activations are still > 0.
ArchProblem problem_for(const Setting& setting, uint64_t seed, double margin = 1e-3) {
  if (!setting.auxk) return well_conditioned_problem(setting.unit, kN, kD, kF, kK, seed, margin, 0.5);
  auto lower_odd = [](ArchProblem& prob) {
    std::vector<double> b = prob.params.b_enc.to_vector();
    for (size_t i = 1; i < b.size(); i += 2) b[i] -= 1.2;
    prob.params.b_enc = Tensor::from_vector(b, Shape{kF}, DType::F64);
  };
  const ArchSettings settings = settings_of(setting);
  auto enough_dead = [&](const ArchProblem& prob) {
    const ReferenceLoss base = arch_unit(setting.unit).reference_loss(
        settings, ArchVariables::leaves(prob.params, false), prob.x, 0, nullptr, nullptr);
    std::vector<int64_t> clock = half_dead_clock();
    const std::vector<uint8_t> dead = dead_after_batch(clock, base.fired, kN, kDeadTokens);
    int64_t n_dead = 0;
    for (uint8_t d : dead) n_dead += d;
    return n_dead >= 5 && arch_margin(prob, kK, 0.5, &dead, kAuxK) >= 1e-3;
  };
  return well_conditioned_problem(setting.unit, kN, kD, kF, kK, seed, margin, 0.5, nullptr, 0, enough_dead, lower_odd);
}
}  // namespace

namespace {
// The step's gradients `got` against those backward() left in the reference's leaves `v` (float64, on
// the parameters `ref`), W_dec's projected where the step keeps unit-norm rows: each within rel of
// its largest.
void expect_reference_gradients(const SaeParams& got, const ArchVariables& v, const SaeParams& ref, bool unit_norm,
                                double rel) {
  SaeParams want = v.grads(ref);
  if (unit_norm) decoder_project_(want.W_dec, ref.W_dec, norm2(ref.W_dec, 1));
  const auto got_grads = got.present();
  const auto want_grads = want.present();
  ASSERT_EQ(got_grads.size(), want_grads.size());
  for (size_t i = 0; i < got_grads.size(); ++i)
    expect_close_to_scale(got_grads[i].second->to(DType::F64), *want_grads[i].second, rel, "grad " + got_grads[i].first);
}
}  // namespace

TEST(ArchStep, GradientsMatchTheReference) {
  for (const Setting& setting : kSettings) {
    const ArchProblem prob64 = problem_for(setting, 1000);
    for (DType dtype : {DType::F64, DType::F32}) {
      SCOPED_TRACE(cat(setting.name, " ", dtype_name(dtype)));
      const ArchProblem prob = sae::testing::to_dtype(prob64, dtype);
      SaeStep step = step_of(setting, dtype);
      if (setting.auxk) step.set_dead_clock(half_dead_clock());
      SaeParams g = grads_like(prob.params);
      const StepSums s = step.forward_backward(prob.params, prob.x, kLambda, g);
      // The reference in float64 on the same (rounded) values, with the step's dead mask.
      const ArchProblem ref = sae::testing::to_dtype(prob, DType::F64);
      const std::vector<uint8_t> dead = setting.auxk ? topk_step(step).dead_mask() : std::vector<uint8_t>();
      if (setting.auxk) {
        int64_t n_dead = 0;
        for (uint8_t d : dead) n_dead += d;
        EXPECT_GT(n_dead, 3);
        EXPECT_GT(s.aux, 0.0);
      }
      const ArchVariables v = ArchVariables::leaves(ref.params);
      ReferenceLoss loss =
          arch_unit(setting.unit).reference_loss(settings_of(setting), v, ref.x, kLambda, setting.auxk ? &dead : nullptr,
                                                 nullptr);
      loss.total.backward();
      const double rel = dtype == DType::F64 ? 1e-11 : 3e-5;
      auto near = [&](double got, double want, const char* what) {
        EXPECT_LE(std::abs(got - want), rel * std::max(1.0, std::abs(want))) << what << ": " << got << " vs " << want;
      };
      near(s.rec, loss.rec.data().item(), "rec");
      near(s.l1, loss.sparsity.data().item(), "sparsity");
      near(s.aux, loss.aux.data().item(), "aux");
      near(s.loss, loss.total.data().item(), "total");
      double active = 0;
      for (double f : loss.f.to_vector()) active += f > 0;
      EXPECT_EQ(s.active, active);
      expect_close_to_scale(step.features().to(DType::F64), loss.f, rel, "f");
      expect_reference_gradients(g, v, ref.params, setting.unit_norm, 10 * rel);
    }
  }
}

TEST(ArchStep, CentredInputGradientsMatchTheReference) {
  // --apply-b-dec-to-input: the step feeds the unit x - b_dec and adds b_dec's encoder-side gradient
  // (minus W_enc g_b_enc; gated: through both of its biases) itself; the reference differentiates
  // (x - b_dec) W_enc + b_enc by autograd. Each problem is a well-conditioned one with the shift
  // taken out of its encoder's biases (b_enc + b_dec W_enc), so that its pre-activations, and so the
  // margins of its selections, are the problem's own.
  struct Centred {
    std::string unit, name;
    ArchSettings settings;
    ArchProblem problem;
    bool auxk = false, unit_norm = false;
  };
  std::vector<Centred> cases;
  for (const Setting& s : kSettings)
    cases.push_back({s.unit, s.name, settings_of(s), problem_for(s, 2000), s.auxk, s.unit_norm});
  for (const char* sparse : {"off", "on"})
    cases.push_back({"standard", cat("standard sparse ", sparse), unit_settings("standard", {{"sparse", Json(sparse)}}),
                     well_conditioned_problem("standard", kN, kD, kF, kK, 2100, 1e-3)});
  cases.push_back({"matryoshka_batchtopk", "matryoshka",
                   unit_settings("matryoshka_batchtopk", {{"k", Json(kK)}, {"matryoshka-widths", Json::parse("[5, 15, 30]")},
                                                          {"auxk-coefficient", Json(0.0)}}),
                   well_conditioned_problem("matryoshka_batchtopk", kN, kD, kF, kK, 2200, 1e-3), false,
                   /*unit_norm: the family's default*/ true});
  for (Centred& c : cases) {
    const ArchUnit& unit = arch_unit(c.unit);
    SaeParams& p = c.problem.params;
    ASSERT_GT(max_abs(p.b_dec), 0.01) << c.name;  // a shift that matters
    unit.fold_input_shift(p, mul_scalar(matmul(p.b_dec.reshape(Shape{1, kD}), p.W_enc).reshape(Shape{kF}), -1.0));
    for (DType dtype : {DType::F64, DType::F32}) {
      SCOPED_TRACE(cat(c.name, " ", dtype_name(dtype)));
      const ArchProblem prob = sae::testing::to_dtype(c.problem, dtype);
      SaeStep step(unit, c.settings, kN, kD, kF, dtype, Device::CPU);
      step.set_input_centring(true);
      if (c.auxk) step.set_dead_clock(half_dead_clock());
      SaeParams g = grads_like(prob.params);
      const StepSums s = step.forward_backward(prob.params, prob.x, kLambda, g);
      const ArchProblem ref = sae::testing::to_dtype(prob, DType::F64);
      const std::vector<uint8_t> dead = c.auxk ? topk_step(step).dead_mask() : std::vector<uint8_t>();
      ArchVariables v = ArchVariables::leaves(ref.params);
      v.centred = true;
      ReferenceLoss loss = unit.reference_loss(c.settings, v, ref.x, kLambda, c.auxk ? &dead : nullptr, nullptr);
      loss.total.backward();
      const double rel = dtype == DType::F64 ? 1e-11 : 3e-5;
      EXPECT_LE(std::abs(s.loss - loss.total.data().item()), rel * std::max(1.0, std::abs(loss.total.data().item())));
      if (c.auxk) {
        EXPECT_GT(s.aux, 0.0);
      }
      expect_close_to_scale(step.features().to(DType::F64), loss.f, rel, "f");
      expect_reference_gradients(g, v, ref.params, c.unit_norm, 10 * rel);
      // The encoder-side part is there: b_dec's gradient is not the decoder's alone (sum_t dL/dx_hat).
      if (dtype == DType::F64) {
        SaeStep plain(unit, c.settings, kN, kD, kF, dtype, Device::CPU);
        if (c.auxk) plain.set_dead_clock(half_dead_clock());
        SaeParams g_plain = grads_like(prob.params);
        const Tensor centred_x = sub(prob.x, prob.params.b_dec);
        plain.forward_backward(prob.params, centred_x, prob.x, kLambda, g_plain);
        EXPECT_GT(max_abs(sub(g.b_dec, g_plain.b_dec)), 1e-3 * std::max(1.0, max_abs(g.b_dec)));
        expect_close_to_scale(g.W_enc, g_plain.W_enc, 1e-11, "W_enc as the plain step on x - b_dec");
      }
    }
  }
}

TEST(ArchStep, TopKComputesThePreActivationsInChunksOfEncoderChunkRows) {
  // "encoder-chunk" as given, at most the batch; 0: the whole batch.
  EXPECT_EQ(topk_encoder_rows(7, 40), 7);
  EXPECT_EQ(topk_encoder_rows(100, 40), 40);
  EXPECT_EQ(topk_encoder_rows(0, 4096), 4096);
  // The steps of the settings above hold that many rows (the other tests compare their results).
  for (const Setting& setting : kSettings) {
    if (std::string(setting.unit) != "topk") continue;
    SaeStep step = step_of(setting, DType::F64);
    EXPECT_EQ(topk_step(step).encoder_rows(), setting.encoder_chunk > 0 ? setting.encoder_chunk : kN) << setting.name;
  }
  // A step at a million latents with chunks of 512 holds 512 rows of them (its buffers are not touched).
  const ArchSettings wide = unit_settings("topk", {{"k", Json(32)}, {"encoder-chunk", Json(512)}}, kDeadTokens);
  SaeStep big(arch_unit("topk"), wide, 4096, 8, int64_t(1) << 20, DType::F32, Device::CPU);
  EXPECT_EQ(topk_step(big).encoder_rows(), 512);
  EXPECT_EQ(arch_unit("topk").pre_activation_rows(wide, 4096), 512);
  EXPECT_TRUE(arch_unit("topk").chunks_encoder());
  EXPECT_EQ(arch_unit("batchtopk").pre_activation_rows(wide, 4096), 4096);
  EXPECT_FALSE(arch_unit("batchtopk").chunks_encoder());
}

TEST(ArchStep, TopKFamilyAtBf16SelectsFromBf16PreActivations) {
  // At --precision bf16 a float32 TopK-family step keeps x W_enc in bf16: its features are the
  // selection of P = bf16(x W_enc) + b_enc, where x W_enc is the float32 product of the rounded
  // inputs (this CPU's matmul at bf16) rounded once to bf16, written here. At fp32 nothing is rounded.
  for (const std::string unit : {"topk", "batchtopk"}) {
    SCOPED_TRACE(unit);
    const ArchProblem prob = sae::testing::to_dtype(well_conditioned_problem(unit, kN, kD, kF, kK, 77, 1e-3, 0.5),
                                                    DType::F32);
    const ArchSettings settings = unit_settings(unit, {{"k", Json(kK)}, {"auxk-coefficient", Json(0.0)}}, kDeadTokens);
    auto kept = [&](const Tensor& product) {
      const std::vector<double> P = add(product, prob.params.b_enc).to_vector();
      return unit == "topk" ? kept_by_sorting(P, kN, kF, kK) : kept_flat_by_sorting(P, kK * kN);
    };
    SaeStep step(arch_unit(unit), settings, kN, kD, kF, DType::F32, Device::CPU);
    step.forward(prob.params, prob.x, 0.0);
    const std::vector<double> fp32 = step.features().to_vector();
    expect_same_values(fp32, kept(matmul(prob.x, prob.params.W_enc)), "fp32");
    const ScopedMatmulPrecision scope(Precision::BF16);
    step.forward(prob.params, prob.x, 0.0);  // the same step: its pre-activations change dtype
    const std::vector<double> bf16 = step.features().to_vector();
    expect_same_values(bf16, kept(matmul(prob.x, prob.params.W_enc).to(DType::BF16).to(DType::F32)), "bf16");
    SaeStep fresh(arch_unit(unit), settings, kN, kD, kF, DType::F32, Device::CPU);  // made at bf16
    fresh.forward(prob.params, prob.x, 0.0);
    expect_same_values(fresh.features().to_vector(), bf16, "a step made at bf16");
    if (unit == "topk") {  // in chunks of 7 tokens, which share one bf16 copy of W_enc: the same rounding
      ArchSettings chunked = settings;
      chunked.set("encoder-chunk", Json(7));
      SaeStep in_chunks(arch_unit(unit), chunked, kN, kD, kF, DType::F32, Device::CPU);
      in_chunks.forward(prob.params, prob.x, 0.0);
      expect_same_values(in_chunks.features().to_vector(), bf16, "chunks of 7 at bf16");
    }
    int64_t rounded = 0;  // the values did change (bf16 keeps 8 significant bits)
    for (size_t i = 0; i < bf16.size(); ++i) rounded += bf16[i] != fp32[i];
    EXPECT_GT(rounded, 0);
  }
}

namespace {
// The rest of a training step done by hand after forward_backward's gradients g of q (`step`
// counts from 0): Adam, the unit-norm decoder's renormalisation and BatchTopK's threshold (its
// first minimum, then a 0.01-rate average of the batches' smallest active values).
void finish_step_by_hand(const Setting& setting, const SaeStep& by_hand, SaeParams& q, SaeAdamState& adam_q,
                         SaeParams& g, int step) {
  const AdamScalars scalars = adam_q.next_step(1e-2);
  auto qp = q.present(), qm = adam_q.m.present(), qv = adam_q.v.present(), qg = g.present();
  for (size_t i = 0; i < qp.size(); ++i) adam_step_(*qp[i].second, *qm[i].second, *qv[i].second, *qg[i].second, scalars);
  if (setting.unit_norm) decoder_normalize_(q.W_dec);
  if (std::string(setting.unit) == "batchtopk") {
    double smallest = INFINITY;
    for (double f : by_hand.features().to_vector())
      if (f > 0) smallest = std::min(smallest, f);
    const double before = q.settings.at("threshold").as_number();
    q.settings["threshold"] = step == 0 ? smallest : 0.99 * before + 0.01 * smallest;
  }
}
}  // namespace

TEST(ArchStep, OneAdamStepEqualsTheStepDoneByHand) {
  // train_step (Adam fused into the sparse backward for topk and batchtopk) against
  // forward_backward's gradients put through adam_step_ and the renormalisation by hand.
  for (const Setting& setting : kSettings) {
    SCOPED_TRACE(setting.name);
    const ArchProblem prob = problem_for(setting, 2000);
    SaeStep fused = step_of(setting, DType::F64), by_hand = step_of(setting, DType::F64);
    if (setting.auxk) {
      fused.set_dead_clock(half_dead_clock());
      by_hand.set_dead_clock(half_dead_clock());
    }
    SaeParams p = prob.params.clone(), q = prob.params.clone();
    SaeAdamState adam_p = SaeAdamState::zeros_like(p), adam_q = SaeAdamState::zeros_like(q);
    for (int step = 0; step < 3; ++step) {
      fused.train_step(p, adam_p, prob.x, kLambda, 1e-2);
      SaeParams g = grads_like(q);
      by_hand.forward_backward(q, prob.x, kLambda, g);
      finish_step_by_hand(setting, by_hand, q, adam_q, g, step);
      if (std::string(setting.unit) == "batchtopk") {
        EXPECT_NEAR(p.settings.at("threshold").as_number(), q.settings.at("threshold").as_number(), 1e-15);
      }
    }
    const auto got = p.present();
    const auto want = q.present();
    for (size_t i = 0; i < got.size(); ++i) expect_close_to_scale(*got[i].second, *want[i].second, 1e-12, got[i].first);
    if (setting.unit_norm) {
      for (double n : norm2(p.W_dec, 1).to_vector()) EXPECT_NEAR(n, 1.0, 1e-14);
    }
    if (setting.auxk) {
      EXPECT_EQ(*fused.dead_clock(), *by_hand.dead_clock());
    }
  }
}

TEST(ArchStep, AClippedStepEqualsTheClipDoneByHand) {
  // --max-grad-norm c (SAELens's clip_grad_norm_ of the mean loss's gradient): train_step against
  // forward_backward's gradients scaled by min(1, N c / (||g|| + N 1e-6)), ||g|| over every
  // parameter, then adam_step_ by hand. c small enough that every step is clipped, and large
  // enough that none is (the unclipped step); both to 1e-12 of each tensor's scale (float64).
  for (const Setting& setting : kSettings) {
    SCOPED_TRACE(setting.name);
    const ArchProblem prob = problem_for(setting, 2000);
    const double n = double(prob.x.size(0));
    for (const double max_norm : {1e-3, 1e12}) {
      SaeStep clipped = step_of(setting, DType::F64), by_hand = step_of(setting, DType::F64);
      clipped.set_max_grad_norm(max_norm);
      if (setting.auxk) {
        clipped.set_dead_clock(half_dead_clock());
        by_hand.set_dead_clock(half_dead_clock());
      }
      SaeParams p = prob.params.clone(), q = prob.params.clone();
      SaeAdamState adam_p = SaeAdamState::zeros_like(p), adam_q = SaeAdamState::zeros_like(q);
      int clips = 0;
      for (int step = 0; step < 3; ++step) {
        clipped.train_step(p, adam_p, prob.x, kLambda, 1e-2);
        SaeParams g = grads_like(q);
        by_hand.forward_backward(q, prob.x, kLambda, g);
        double squares = 0;
        for (const auto& [name, t] : g.present())
          for (double v : t->to_vector()) squares += v * v;
        const double scale = n * max_norm / (std::sqrt(squares) + n * 1e-6);
        if (scale < 1) {
          ++clips;
          for (const auto& [name, t] : g.present()) affine_(*t, *t, scale, 0.0);
        }
        finish_step_by_hand(setting, by_hand, q, adam_q, g, step);
      }
      EXPECT_EQ(clips, max_norm < 1 ? 3 : 0);
      const auto got = p.present();
      const auto want = q.present();
      for (size_t i = 0; i < got.size(); ++i)
        expect_close_to_scale(*got[i].second, *want[i].second, 1e-12, got[i].first);
    }
  }
}

TEST(ArchStep, ForwardChangesNothingAndANonFiniteLossUpdatesNothing) {
  const Setting setting = kSettings[1];  // topk with AuxK and the unit-norm decoder
  const ArchProblem prob = problem_for(setting, 3000, 1e-4);
  SaeStep step = step_of(setting, DType::F32);
  step.set_dead_clock(half_dead_clock());
  const ArchProblem f32 = sae::testing::to_dtype(prob, DType::F32);
  step.forward(f32.params, f32.x, 0.0);
  EXPECT_EQ(*step.dead_clock(), half_dead_clock());  // forward alone does not advance the clock
  SaeParams p = f32.params.clone();
  SaeAdamState adam = SaeAdamState::zeros_like(p);
  Tensor x = f32.x.clone();
  x.data<float>()[5] = NAN;
  const StepSums s = step.train_step(p, adam, x, 0.0, 1e-2);
  EXPECT_FALSE(std::isfinite(s.loss));
  EXPECT_EQ(adam.steps, 0);
  EXPECT_EQ(*step.dead_clock(), half_dead_clock());
  const auto after = p.present();
  const auto before = f32.params.present();
  for (size_t i = 0; i < after.size(); ++i) expect_bitwise_equal(*after[i].second, *before[i].second, after[i].first);
}

TEST(ArchStep, SumsLeftOnTheDeviceAreReadBackAsTheStepWouldHaveReturnedThem) {
  // set_sums_on_device (the trainer's --device-data): the standard, gated and JumpReLU steps return
  // pending sums, and read_sums() gives the sums a step without it returns, bit for bit, after the
  // same parameter updates; the TopK family reads values back inside its step anyway and returns
  // complete sums. A pending train_step applies its update (nothing reads the loss first).
  for (const Setting& setting : kSettings) {
    SCOPED_TRACE(setting.name);
    const ArchProblem prob = problem_for(setting, 2100);
    SaeStep plain = step_of(setting, DType::F64), kept = step_of(setting, DType::F64);
    kept.set_sums_on_device(true);
    if (setting.auxk) {
      plain.set_dead_clock(half_dead_clock());
      kept.set_dead_clock(half_dead_clock());
    }
    SaeParams p = prob.params.clone(), q = prob.params.clone();
    SaeAdamState adam_p = SaeAdamState::zeros_like(p), adam_q = SaeAdamState::zeros_like(q);
    const std::string unit = setting.unit;
    const bool can_keep = unit == "standard" || unit == "gated" || unit == "jumprelu";
    for (int step = 0; step < 3; ++step) {
      const StepSums want = plain.train_step(p, adam_p, prob.x, kLambda, 1e-2);
      StepSums got = kept.train_step(q, adam_q, prob.x, kLambda, 1e-2);
      EXPECT_EQ(got.pending, can_keep);
      EXPECT_EQ(got.tokens, want.tokens);
      if (got.pending) got = kept.read_sums();
      EXPECT_FALSE(got.pending);
      EXPECT_EQ(got.loss, want.loss);
      EXPECT_EQ(got.rec, want.rec);
      EXPECT_EQ(got.l1, want.l1);
      EXPECT_EQ(got.aux, want.aux);
      EXPECT_EQ(got.active, want.active);
    }
    EXPECT_EQ(adam_q.steps, 3);
    const auto a = p.present(), b = q.present();
    for (size_t i = 0; i < a.size(); ++i) expect_bitwise_equal(*b[i].second, *a[i].second, a[i].first);
  }
}

TEST(ArchStep, AStepWithPendingSumsNeitherAllocatesNorReadsBackAfterItsFirst) {
  // What lets a GPU step run without waiting for the GPU (docs/performance.md, --device-data): once
  // its buffers exist, a standard (dense), gated or JumpReLU train_step with its sums left on the
  // device makes no tensor and reads nothing back (HostWorkCounter counts the calls that would
  // allocate or wait on a GPU). The TopK family and --sparse auto read values back inside their
  // steps, and a first step makes its buffers: the counter sees both, so it is not blind.
  struct Case {
    std::string unit, name;
    ArchSettings settings;
    bool pending;  // expected: the step leaves its sums on the device
    bool quiet;    // expected: nothing allocated or read after the first step
  };
  std::vector<Case> cases = {
      {"standard", "standard dense", unit_settings("standard", {{"sparse", Json("off")}}), true, true},
      {"standard", "standard sparse auto", unit_settings("standard", {{"sparse", Json("auto")}}), true, false}};
  for (const Setting& setting : kSettings) {
    const std::string unit = setting.unit;
    const bool dense = unit == "gated" || unit == "jumprelu";
    cases.push_back({unit, setting.name, settings_of(setting), dense, dense});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const ArchProblem prob = sae::testing::to_dtype(well_conditioned_problem(c.unit, kN, kD, kF, kK, 2200, 1e-3, 0.5),
                                                    DType::F32);
    SaeStep step(arch_unit(c.unit), c.settings, kN, kD, kF, DType::F32, Device::CPU);
    step.set_sums_on_device(true);
    SaeParams p = prob.params.clone();
    SaeAdamState adam = SaeAdamState::zeros_like(p);
    HostWork first, later;
    {
      HostWorkCounter counter;
      step.train_step(p, adam, prob.x, kLambda, 1e-2);
      first = counter.counted();
    }
    {
      HostWorkCounter counter;
      for (int i = 0; i < 3; ++i) {
        const StepSums sums = step.train_step(p, adam, prob.x, kLambda, 1e-2);
        EXPECT_EQ(sums.pending, c.pending);
      }
      later = counter.counted();
    }
    EXPECT_GT(first.allocations, 0);
    if (c.quiet) {
      EXPECT_EQ(later.allocations, 0);
      EXPECT_EQ(later.reads, 0);
    } else {
      EXPECT_GT(later.reads, 0);
    }
    if (c.pending) {
      EXPECT_TRUE(finite(step.read_sums()));
    }
  }
}

TEST(ArchStep, RejectsMismatchedParametersAndBadSizes) {
  auto topk_settings_k = [](int64_t k) { return unit_settings("topk", {{"k", Json(k)}}); };
  SaeStep step(arch_unit("topk"), topk_settings_k(3), 8, 4, 6, DType::F32, Device::CPU);
  Rng rng(1);
  ArchProblem gated = sae::testing::draw_arch_problem("gated", 8, 4, 6, 0, rng);
  gated = sae::testing::to_dtype(gated, DType::F32);
  EXPECT_THROW(step.forward(gated.params, gated.x, 0.0), Error);  // a gated SAE in a topk step
  EXPECT_THROW(SaeStep(arch_unit("topk"), topk_settings_k(7), 8, 4, 6, DType::F32, Device::CPU), UsageError);  // k > F
  EXPECT_THROW(SaeStep(arch_unit("topk"), topk_settings_k(0), 8, 4, 6, DType::F32, Device::CPU), UsageError);
}
