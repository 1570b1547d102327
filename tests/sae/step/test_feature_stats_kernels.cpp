// The feature-statistics kernels (sae_kernels.h "feature statistics", feature_stats_math.h): the
// histogram bins at their edges and on random values; feature_stats_scan on f and
// feature_stats_scan_sparse on its entry lists (with AuxK-like rows past N that must be skipped)
// against a brute-force pass that sorts every group's best value; the merge into the top lists, its
// context looked up in f and in the entry lists alike, bad candidates flagged; float64; the front-end's
// errors; and the CUDA scans against the CPU, bit for bit (skipped without a GPU; the merge on the GPU:
// FeatureStats.OnCudaTheSameFileAsOnCpu); latent_clock (dead latents) against its rule, and on CUDA.
// Letters: N rows, F features, K candidates per feature.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <vector>

#include "sae/step/feature_stats_math.h"
#include "sae/step/sae_ops.h"
#include "tensor/cuda/backend.h"
#include "tests/util/gpu.h"
#include "tensor/rng.h"

using namespace sae;

namespace {

Tensor i32(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty(Shape{static_cast<int64_t>(v.size())}, DType::I32);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * 4);
  return t;
}

std::vector<int32_t> i32_values(const Tensor& t) {
  const Tensor h = t.to(Device::CPU);
  std::vector<int32_t> out(static_cast<size_t>(h.numel()));
  if (!out.empty()) std::memcpy(out.data(), h.raw(), out.size() * 4);
  return out;
}

FeatureCandidates candidates(int64_t features, int64_t k, DType dtype, Device device = Device::CPU) {
  FeatureCandidates c;
  c.values = Tensor::full(Shape{features, k}, -7.0, dtype).to(device);  // poison: overwritten or ignored
  std::vector<int32_t> poison(static_cast<size_t>(features * k), -99);
  c.rows = i32(poison).reshape(Shape{features, k}).to(device);
  c.groups = i32(poison).reshape(Shape{features, k}).to(device);
  c.count = i32(std::vector<int32_t>(static_cast<size_t>(features), 12345)).to(device);
  return c;
}

// A random f [N, F] with many zeros and repeated values (ties), values spread over many octaves.
Tensor random_f(int64_t n, int64_t features, DType dtype, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> v(static_cast<size_t>(n * features));
  for (double& x : v) {
    const double u = rng.uniform();
    if (u < 0.55)
      x = 0.0;
    else if (u < 0.62)
      x = 0.5;  // ties
    else
      x = std::exp2(-14.0 + 30.0 * rng.uniform());
  }
  return Tensor::from_vector(v, Shape{n, features}, dtype);
}

struct Expected {
  std::vector<double> values;  // [F, K]
  std::vector<int32_t> rows, groups, count;
  std::vector<double> histogram;  // [F, B]
};

// Brute force: per feature, each group's best value (largest; of equal ones the lowest row) among the
// values above max(0, threshold), sorted by value (then row), the first K kept; and the bins.
Expected brute_force(const std::vector<double>& f, int64_t n, int64_t features, const std::vector<double>& threshold,
                     const std::vector<int32_t>& group, int64_t k) {
  Expected e;
  e.values.assign(features * k, 0);
  e.rows.assign(features * k, 0);
  e.groups.assign(features * k, 0);
  e.count.assign(features, 0);
  e.histogram.assign(features * kHistogramBins, 0);
  for (int64_t j = 0; j < features; ++j) {
    std::map<int32_t, std::pair<double, int32_t>> best;  // group -> (value, row)
    for (int64_t r = 0; r < n; ++r) {
      const double v = f[r * features + j];
      if (!(v > 0)) continue;
      e.histogram[j * kHistogramBins + histogram_bin(static_cast<float>(v))] += 1;
      if (!(v > threshold[j])) continue;
      auto it = best.find(group[r]);
      if (it == best.end() || v > it->second.first) best[group[r]] = {v, static_cast<int32_t>(r)};
    }
    std::vector<std::pair<std::pair<double, int32_t>, int32_t>> list;  // ((value, row), group)
    for (const auto& [g, vr] : best) list.push_back({vr, g});
    std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
      return a.first.first != b.first.first ? a.first.first > b.first.first : a.first.second < b.first.second;
    });
    e.count[j] = static_cast<int32_t>(std::min<int64_t>(k, list.size()));
    for (int32_t c = 0; c < e.count[j]; ++c) {
      e.values[j * k + c] = list[c].first.first;
      e.rows[j * k + c] = list[c].first.second;
      e.groups[j * k + c] = list[c].second;
    }
  }
  return e;
}

void expect_matches(const Expected& e, const FeatureCandidates& got, const Tensor& histogram, int64_t features,
                    int64_t k, const std::string& what) {
  const std::vector<int32_t> count = i32_values(got.count), rows = i32_values(got.rows), groups = i32_values(got.groups);
  const std::vector<double> values = got.values.to_vector(), hist = histogram.to_vector();
  for (int64_t j = 0; j < features; ++j) {
    ASSERT_EQ(count[j], e.count[j]) << what << " feature " << j;
    for (int32_t c = 0; c < count[j]; ++c) {
      EXPECT_EQ(values[j * k + c], e.values[j * k + c]) << what << " feature " << j << " rank " << c;
      EXPECT_EQ(rows[j * k + c], e.rows[j * k + c]) << what << " feature " << j << " rank " << c;
      EXPECT_EQ(groups[j * k + c], e.groups[j * k + c]) << what << " feature " << j << " rank " << c;
    }
  }
  for (size_t b = 0; b < hist.size(); ++b) ASSERT_EQ(hist[b], e.histogram[b]) << what << " histogram cell " << b;
}

// The by-feature entry lists of f, built by hand, plus `extra` entries in rows N.. (AuxK's) that the
// scan must skip: they get the largest values of all.
SparseFeatures lists_of(const std::vector<double>& f, int64_t n, int64_t features, DType dtype, int64_t extra_rows) {
  std::vector<int32_t> col_ptr(1, 0), rows;
  std::vector<double> vals;
  for (int64_t j = 0; j < features; ++j) {
    for (int64_t r = 0; r < n; ++r)
      if (f[r * features + j] > 0) {
        rows.push_back(static_cast<int32_t>(r));
        vals.push_back(f[r * features + j]);
      }
    for (int64_t r = 0; r < extra_rows; ++r)
      if ((j + r) % 3 == 0) {
        rows.push_back(static_cast<int32_t>(n + r));
        vals.push_back(1e6);
      }
    col_ptr.push_back(static_cast<int32_t>(rows.size()));
  }
  SparseFeatures s;
  s.col_ptr = i32(col_ptr);
  s.rows = i32(rows);
  s.vals = Tensor::from_vector(vals, Shape{static_cast<int64_t>(vals.size())}, dtype);
  return s;
}

std::vector<int32_t> random_groups(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> g(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) g[r] = static_cast<int32_t>(rng.below(6));  // few groups: many repeats
  return g;
}

std::vector<double> random_thresholds(int64_t features, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> t(static_cast<size_t>(features));
  for (double& x : t) x = rng.uniform() < 0.5 ? 0.0 : std::exp2(-4.0 + 8.0 * rng.uniform());
  return t;
}

}  // namespace

TEST(FeatureStatsKernels, HistogramBinsAtTheirEdges) {
  EXPECT_EQ(histogram_lower_edge(0), 0.0);
  EXPECT_EQ(histogram_lower_edge(1), std::ldexp(1.0, -10));
  EXPECT_EQ(histogram_lower_edge(2), 1.5 * std::ldexp(1.0, -10));
  EXPECT_EQ(histogram_lower_edge(21), 1.0);
  EXPECT_EQ(histogram_lower_edge(22), 1.5);
  EXPECT_EQ(histogram_lower_edge(47), 8192.0);
  EXPECT_EQ(histogram_bin(1.0f), 21);
  EXPECT_EQ(histogram_bin(std::nextafter(1.5f, 0.0f)), 21);
  EXPECT_EQ(histogram_bin(1.5f), 22);
  EXPECT_EQ(histogram_bin(2.0f), 23);
  EXPECT_EQ(histogram_bin(std::ldexp(1.0f, -10)), 1);
  EXPECT_EQ(histogram_bin(std::nextafter(std::ldexp(1.0f, -10), 0.0f)), 0);
  EXPECT_EQ(histogram_bin(1e-30f), 0);
  EXPECT_EQ(histogram_bin(std::numeric_limits<float>::denorm_min()), 0);
  EXPECT_EQ(histogram_bin(8192.0f), 47);
  EXPECT_EQ(histogram_bin(1e30f), 47);
  EXPECT_EQ(histogram_bin(std::numeric_limits<float>::infinity()), 47);
  // Every positive value lies in [edge(b), edge(b+1)) of its bin.
  Rng rng(3);
  for (int i = 0; i < 20000; ++i) {
    const float v = static_cast<float>(std::exp2(-20.0 + 40.0 * rng.uniform()));
    const int b = histogram_bin(v);
    EXPECT_LE(histogram_lower_edge(b), double(v)) << v;
    if (b + 1 < kHistogramBins) {
      EXPECT_LT(double(v), histogram_lower_edge(b + 1)) << v;
    }
  }
}

TEST(FeatureStatsKernels, DenseScanEqualsBruteForce) {
  // 40 x 37: one thread, three tiles of features (16, 16, 5); 300 x 1001: past the size where
  // threads split the tiles (tensor/cpu/parallel.h).
  for (const auto& [n, features] : {std::pair<int64_t, int64_t>{40, 37}, {300, 1001}})
  for (DType dtype : {DType::F32, DType::F64})
    for (int64_t k : {1, 3, 8}) {
      const Tensor f = random_f(n, features, dtype, 10 + k);
      const std::vector<double> fv = f.to_vector(), thresholds = random_thresholds(features, 20 + k);
      const std::vector<int32_t> groups = random_groups(n, 30 + k);
      FeatureCandidates out = candidates(features, k, dtype);
      Tensor histogram = Tensor::full(Shape{features, kHistogramBins}, 2.0, DType::F64);  // accumulates onto this
      const Tensor threshold = Tensor::from_vector(thresholds, Shape{features}, dtype);
      feature_stats_scan_(out, histogram, f, threshold, i32(groups));
      Expected e = brute_force(fv, n, features, thresholds, groups, k);
      for (double& h : e.histogram) h += 2.0;
      expect_matches(e, out, histogram, features, k, cat("dense ", dtype_name(dtype), " k ", k));
    }
}

TEST(FeatureStatsKernels, SparseScanEqualsBruteForceAndSkipsAuxRows) {
  for (DType dtype : {DType::F32, DType::F64}) {
    const int64_t n = 50, features = 29, k = 4;
    const Tensor f = random_f(n, features, dtype, 7);
    const std::vector<double> fv = f.to_vector(), thresholds = random_thresholds(features, 8);
    const std::vector<int32_t> groups = random_groups(n, 9);
    const SparseFeatures lists = lists_of(fv, n, features, dtype, /*extra_rows=*/5);
    FeatureCandidates out = candidates(features, k, dtype);
    Tensor histogram = Tensor::zeros(Shape{features, kHistogramBins}, DType::F64);
    feature_stats_scan_sparse_(out, histogram, lists, n, Tensor::from_vector(thresholds, Shape{features}, dtype),
                               i32(groups));
    expect_matches(brute_force(fv, n, features, thresholds, groups, k), out, histogram, features, k,
                   cat("sparse ", dtype_name(dtype)));
  }
}

TEST(FeatureStatsKernels, EveryRowItsOwnGroupKeepsTheKLargest) {
  // One feature, values 1..10 in a shuffled order, each row its own group, K = 3: 10, 9, 8.
  const std::vector<double> v = {3, 10, 1, 8, 2, 9, 4, 7, 5, 6};
  const Tensor f = Tensor::from_vector(v, Shape{10, 1});
  std::vector<int32_t> groups(10);
  for (int32_t r = 0; r < 10; ++r) groups[r] = r;
  FeatureCandidates out = candidates(1, 3, DType::F32);
  Tensor histogram = Tensor::zeros(Shape{1, kHistogramBins}, DType::F64);
  feature_stats_scan_(out, histogram, f, Tensor::zeros(Shape{1}), i32(groups));
  EXPECT_EQ(out.values.to_vector(), (std::vector<double>{10, 9, 8}));
  EXPECT_EQ(i32_values(out.rows), (std::vector<int32_t>{1, 5, 3}));
  // A threshold of 8.5 leaves 10 and 9; one group for all rows leaves 10 alone.
  feature_stats_scan_(out, histogram, f, Tensor::full(Shape{1}, 8.5), i32(groups));
  EXPECT_EQ(i32_values(out.count), (std::vector<int32_t>{2}));
  feature_stats_scan_(out, histogram, f, Tensor::zeros(Shape{1}), i32(std::vector<int32_t>(10, 4)));
  EXPECT_EQ(i32_values(out.count), (std::vector<int32_t>{1}));
  EXPECT_EQ(out.values.to_vector()[0], 10.0);
  // Three scans: [8, 12) holds 8, 9 and 10 each time, [3, 4) only the 3.
  EXPECT_EQ(histogram.to_vector()[histogram_bin(10.0f)], 9.0);
  EXPECT_EQ(histogram.to_vector()[histogram_bin(3.0f)], 3.0);
}

// The rows of a batch for the merge: stories and positions (int64 in 8-byte elements), the token ids
// around each row.
FeatureStatsRows merge_rows(const std::vector<int64_t>& story, const std::vector<int64_t>& position, int64_t w) {
  const int64_t n = static_cast<int64_t>(story.size());
  FeatureStatsRows rows;
  rows.story = Tensor::empty(Shape{n}, DType::F64);
  rows.position = Tensor::empty(Shape{n}, DType::F64);
  std::memcpy(rows.story.raw(), story.data(), sizeof(int64_t) * n);
  std::memcpy(rows.position.raw(), position.data(), sizeof(int64_t) * n);
  std::vector<int32_t> ids(static_cast<size_t>(n * w));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(100 + i);
  rows.tokens = i32(ids).reshape(Shape{n, w});
  rows.step = 7;
  return rows;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(FeatureStatsKernels, MergeLooksUpContextInFAndInTheListsAlike) {
  // Rows: story 5 at positions 0..2, story 9 at 4..5, a row of no known story. Each feature's best
  // value per story enters its list with its context; the dense merge (values read from f) and the
  // sparse one (read from the lists, absent entries 0) give the same lists, and a neighbour's value
  // is f's.
  const int64_t n = 6, features = 4, k = 3, c = 1, w = 2 * c + 1;
  const std::vector<int64_t> story = {5, 5, 5, 9, 9, -1}, position = {0, 1, 2, 4, 5, 0};
  std::vector<double> fv = random_f(n, features, DType::F32, 77).to_vector();
  fv[1 * features + 0] = 1000.0;  // feature 0's best of story 5 is its middle row
  const Tensor f = Tensor::from_vector(fv, Shape{n, features});
  const SparseFeatures s = lists_of(fv, n, features, DType::F32, 2);
  const Tensor groups = i32({0, 0, 0, 1, 1, 8}), threshold = Tensor::zeros(Shape{features});
  const FeatureStatsRows rows = merge_rows(story, position, w);
  FeatureTopLists dense = empty_top_lists(features, k, c, Device::CPU), sparse = empty_top_lists(features, k, c, Device::CPU);
  FeatureCandidates from_f = candidates(features, k, DType::F32), from_lists = candidates(features, k, DType::F32);
  Tensor h1 = Tensor::zeros(Shape{features, kHistogramBins}, DType::F64), h2 = h1.clone();
  feature_stats_scan_(from_f, h1, f, threshold, groups);
  feature_stats_merge_(dense, from_f, rows, f);
  feature_stats_scan_sparse_(from_lists, h2, s, n, threshold, groups);
  feature_stats_merge_sparse_(sparse, from_lists, rows, s, n);
  for (const auto& [a, b] : std::vector<std::pair<Tensor, Tensor>>{
           {dense.value, sparse.value}, {dense.slot, sparse.slot}, {dense.count, sparse.count},
           {dense.story, sparse.story}, {dense.position, sparse.position}, {dense.tokens, sparse.tokens},
           {dense.values, sparse.values}, {dense.threshold, sparse.threshold}})
    EXPECT_TRUE(same_bytes(a, b));
  const std::vector<int32_t> count = i32_values(dense.count), slot = i32_values(dense.slot);
  const std::vector<double> value = dense.value.to_vector(), values = dense.values.to_vector();
  const int64_t* stories = static_cast<const int64_t*>(dense.story.raw());
  const int64_t* positions = static_cast<const int64_t*>(dense.position.raw());
  int checked = 0;
  for (int64_t j = 0; j < features; ++j)
    for (int32_t rank = 0; rank < count[j]; ++rank) {
      const int64_t p = j * k + slot[j * k + rank];
      EXPECT_EQ(values[p * w + c], value[j * k + rank]);
      if (stories[p] != 5 || positions[p] != 1) continue;  // the middle of story 5: both neighbours held
      EXPECT_EQ(values[p * w], fv[0 * features + j]);
      EXPECT_EQ(values[p * w + 2], fv[2 * features + j]);
      ++checked;
    }
  EXPECT_EQ(i32_values(dense.error), (std::vector<int32_t>{0}));
  // A candidate row outside the batch is flagged, not followed.
  FeatureCandidates bad = candidates(features, k, DType::F32);
  bad.count = i32(std::vector<int32_t>(features, 0));
  bad.count.data<int32_t>()[1] = 1;
  bad.rows.data<int32_t>()[1 * k] = 99;
  bad.values.data<float>()[1 * k] = 1e30f;
  feature_stats_merge_(dense, bad, rows, f);
  EXPECT_EQ(i32_values(dense.error), (std::vector<int32_t>{kStatsBadRow}));
  EXPECT_GE(checked, 1);
}

TEST(FeatureStatsKernels, FrontEndNamesTheOpAndTheOperands) {
  const Tensor f = Tensor::zeros(Shape{4, 3});
  FeatureCandidates out = candidates(3, 2, DType::F32);
  Tensor histogram = Tensor::zeros(Shape{3, kHistogramBins}, DType::F64);
  const Tensor groups = i32({0, 1, 2, 3});
  auto message = [](const std::function<void()>& call) {
    try {
      call();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { feature_stats_scan_(out, histogram, f, Tensor::zeros(Shape{2}), groups); })
                .find("feature_stats_scan: threshold"),
            std::string::npos);
  EXPECT_NE(message([&] { feature_stats_scan_(out, histogram, f, Tensor::zeros(Shape{3}), i32({0, 1})); })
                .find("group"),
            std::string::npos);
  Tensor wrong_hist = Tensor::zeros(Shape{3, 10}, DType::F64);
  EXPECT_NE(message([&] { feature_stats_scan_(out, wrong_hist, f, Tensor::zeros(Shape{3}), groups); }).find("histogram"),
            std::string::npos);
  FeatureCandidates short_out = candidates(2, 2, DType::F32);
  EXPECT_NE(message([&] { feature_stats_scan_(short_out, histogram, f, Tensor::zeros(Shape{3}), groups); })
                .find("candidate values"),
            std::string::npos);
  FeatureTopLists lists = empty_top_lists(3, 2, 1, Device::CPU);
  EXPECT_NE(message([&] { feature_stats_merge_(lists, short_out, FeatureStatsRows{}, f); })
                .find("feature_stats_merge: candidate values"),
            std::string::npos);
  FeatureStatsRows half;
  half.story = Tensor::empty(Shape{4}, DType::F64);
  EXPECT_NE(message([&] { feature_stats_merge_(lists, out, half, f); }).find("together"), std::string::npos);
}

TEST(FeatureStatsKernels, Bf16FeaturesAreReadWidened) {
  // Dense f stored as bf16 (the standard step's f at --precision bf16): the scan equals the brute
  // force on the widened values, and scan + merge give the same bytes as with the widened float32 f.
  const int64_t n = 300, features = 1001, k = 4, c = 1, w = 2 * c + 1;
  const Tensor f = random_f(n, features, DType::F32, 51).to(DType::BF16), wide = f.to(DType::F32);
  const std::vector<double> thresholds = random_thresholds(features, 52);
  const std::vector<int32_t> groups = random_groups(n, 53);
  const Tensor threshold = Tensor::from_vector(thresholds, Shape{features});
  FeatureCandidates from_bf16 = candidates(features, k, DType::F32), from_wide = candidates(features, k, DType::F32);
  Tensor h1 = Tensor::zeros(Shape{features, kHistogramBins}, DType::F64), h2 = h1.clone();
  feature_stats_scan_(from_bf16, h1, f, threshold, i32(groups));
  feature_stats_scan_(from_wide, h2, wide, threshold, i32(groups));
  expect_matches(brute_force(wide.to_vector(), n, features, thresholds, groups, k), from_bf16, h1, features, k, "bf16");
  std::vector<int64_t> story(n), position(n);
  for (int64_t r = 0; r < n; ++r) {
    story[r] = r / 10;
    position[r] = r % 10;
  }
  const FeatureStatsRows rows = merge_rows(story, position, w);
  FeatureTopLists a = empty_top_lists(features, k, c, Device::CPU), b = empty_top_lists(features, k, c, Device::CPU);
  feature_stats_merge_(a, from_bf16, rows, f);
  feature_stats_merge_(b, from_wide, rows, wide);
  for (const auto& [x, y] : std::vector<std::pair<Tensor, Tensor>>{
           {a.value, b.value}, {a.slot, b.slot}, {a.count, b.count}, {a.story, b.story}, {a.position, b.position},
           {a.values, b.values}, {a.threshold, b.threshold}})
    EXPECT_TRUE(same_bytes(x, y));
  EXPECT_GT(i32_values(a.count)[0] + i32_values(a.count)[1], 0);
}

TEST(FeatureStatsKernels, CudaEqualsCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::F32, DType::F64}) {
    const int64_t n = 300, features = 517, k = 5;
    const Tensor f = random_f(n, features, dtype, 41);
    const std::vector<double> fv = f.to_vector(), thresholds = random_thresholds(features, 42);
    const std::vector<int32_t> groups = random_groups(n, 43);
    const Tensor threshold = Tensor::from_vector(thresholds, Shape{features}, dtype);
    const SparseFeatures lists = lists_of(fv, n, features, dtype, 4);
    SparseFeatures lists_gpu = lists;
    lists_gpu.col_ptr = lists.col_ptr.to(Device::CUDA);
    lists_gpu.rows = lists.rows.to(Device::CUDA);
    lists_gpu.vals = lists.vals.to(Device::CUDA);
    for (bool sparse : {false, true}) {
      FeatureCandidates cpu = candidates(features, k, dtype), gpu = candidates(features, k, dtype, Device::CUDA);
      Tensor hist_cpu = Tensor::full(Shape{features, kHistogramBins}, 1.0, DType::F64);
      Tensor hist_gpu = hist_cpu.to(Device::CUDA).clone();
      if (sparse) {
        feature_stats_scan_sparse_(cpu, hist_cpu, lists, n, threshold, i32(groups));
        feature_stats_scan_sparse_(gpu, hist_gpu, lists_gpu, n, threshold.to(Device::CUDA), i32(groups).to(Device::CUDA));
      } else {
        feature_stats_scan_(cpu, hist_cpu, f, threshold, i32(groups));
        feature_stats_scan_(gpu, hist_gpu, f.to(Device::CUDA), threshold.to(Device::CUDA), i32(groups).to(Device::CUDA));
      }
      const std::string what = cat(sparse ? "sparse " : "dense ", dtype_name(dtype));
      EXPECT_EQ(i32_values(cpu.count), i32_values(gpu.count)) << what;
      EXPECT_EQ(i32_values(cpu.rows), i32_values(gpu.rows)) << what;
      EXPECT_EQ(i32_values(cpu.groups), i32_values(gpu.groups)) << what;
      // Only the listed candidates are defined; compare those values.
      const std::vector<int32_t> count = i32_values(cpu.count);
      const std::vector<double> a = cpu.values.to_vector(), b = gpu.values.to_vector();
      for (int64_t j = 0; j < features; ++j)
        for (int32_t c = 0; c < count[j]; ++c) EXPECT_EQ(a[j * k + c], b[j * k + c]) << what;
      EXPECT_EQ(hist_cpu.to_vector(), hist_gpu.to_vector()) << what;
    }
  }
  // Dense bf16 features (widened as read).
  const int64_t n = 300, features = 517, k = 5;
  const Tensor f = random_f(n, features, DType::F32, 44).to(DType::BF16);
  const Tensor threshold = Tensor::from_vector(random_thresholds(features, 45), Shape{features});
  const std::vector<int32_t> groups = random_groups(n, 46);
  FeatureCandidates cpu = candidates(features, k, DType::F32), gpu = candidates(features, k, DType::F32, Device::CUDA);
  Tensor hist_cpu = Tensor::zeros(Shape{features, kHistogramBins}, DType::F64), hist_gpu = hist_cpu.to(Device::CUDA);
  feature_stats_scan_(cpu, hist_cpu, f, threshold, i32(groups));
  feature_stats_scan_(gpu, hist_gpu, f.to(Device::CUDA), threshold.to(Device::CUDA), i32(groups).to(Device::CUDA));
  EXPECT_EQ(i32_values(cpu.count), i32_values(gpu.count)) << "bf16";
  EXPECT_EQ(i32_values(cpu.rows), i32_values(gpu.rows)) << "bf16";
  EXPECT_EQ(hist_cpu.to_vector(), hist_gpu.to_vector()) << "bf16";
}

// latent_clock (dead latents without a read-back) against the rule written here, batch after batch:
// a latent that fired restarts at 0, the others add the batch's tokens; dead where the clock reaches
// dead_tokens. Clocks past 2^24 stay exact (f64); without a dead mask only the clock moves.
TEST(LatentClock, FollowsTheRuleBatchAfterBatch) {
  const int64_t f = 300;
  Rng rng(31);
  for (DType dtype : {DType::F32, DType::F64}) {
    SCOPED_TRACE(dtype_name(dtype));
    std::vector<int64_t> want(f);
    for (int64_t& c : want) c = int64_t(rng.below(40));
    want[7] = (int64_t(1) << 40) + 3;  // a long-dead latent: beyond float32's integers
    Tensor clock = Tensor::from_vector(std::vector<double>(want.begin(), want.end()), Shape{f}, DType::F64);
    Tensor dead = Tensor::full(Shape{f}, 7.0, dtype);
    for (int batch = 0; batch < 6; ++batch) {
      const int64_t tokens = 1 + int64_t(rng.below(20)), dead_tokens = 50;
      std::vector<double> counts(f);
      for (double& c : counts) c = rng.below(4) == 0 ? double(1 + rng.below(5)) : 0.0;
      counts[7] = 0;
      latent_clock_(clock, dead, Tensor::from_vector(counts, Shape{f}, dtype), double(tokens), double(dead_tokens));
      const std::vector<double> got = clock.to_vector(), mask = dead.to_vector();
      for (int64_t i = 0; i < f; ++i) {
        want[i] = counts[i] > 0 ? 0 : want[i] + tokens;
        ASSERT_EQ(got[i], double(want[i])) << "batch " << batch << " latent " << i;
        ASSERT_EQ(mask[i], want[i] >= dead_tokens ? 1.0 : 0.0) << "batch " << batch << " latent " << i;
      }
    }
    Tensor no_mask;
    latent_clock_(clock, no_mask, Tensor::zeros(Shape{f}, dtype), 5.0, 0.0);
    EXPECT_EQ(clock.to_vector()[7], double(want[7] + 5));
  }
  Tensor dead;
  Tensor f32_clock = Tensor::zeros(Shape{f});
  EXPECT_THROW(latent_clock_(f32_clock, dead, Tensor::zeros(Shape{f}), 1.0, 1.0), Error);  // clock must be f64
  Tensor clock = Tensor::zeros(Shape{f}, DType::F64);
  EXPECT_THROW(latent_clock_(clock, dead, Tensor::zeros(Shape{f + 1}), 1.0, 1.0), Error);
  EXPECT_THROW(latent_clock_(clock, dead, Tensor::zeros(Shape{f}), -1.0, 1.0), Error);
}

TEST(LatentClock, CudaEqualsCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t f = 70000;
  Rng rng(32);
  std::vector<double> start(f), counts(f);
  for (double& c : start) c = double(rng.below(100));
  for (double& c : counts) c = rng.below(3) == 0 ? 1.0 : 0.0;
  Tensor cpu_clock = Tensor::from_vector(start, Shape{f}, DType::F64), gpu_clock = cpu_clock.to(Device::CUDA);
  Tensor cpu_dead = Tensor::zeros(Shape{f}), gpu_dead = Tensor::zeros(Shape{f}, DType::F32, Device::CUDA);
  const Tensor fired = Tensor::from_vector(counts, Shape{f});
  latent_clock_(cpu_clock, cpu_dead, fired, 17.0, 60.0);
  latent_clock_(gpu_clock, gpu_dead, fired.to(Device::CUDA), 17.0, 60.0);
  EXPECT_EQ(gpu_clock.to_vector(), cpu_clock.to_vector());
  EXPECT_EQ(gpu_dead.to_vector(), cpu_dead.to_vector());
}
