// FeatureStats (sae/train/feature_stats.h) against a brute-force pass over the same batches (every
// story's largest value per feature, sorted, with its context looked up in its batch), for dense f and
// sparse entry lists, stories spread over batches, repeated and unknown; the file saved, loaded and
// continued giving the same bytes as an uninterrupted pass, and the same bytes on any thread count;
// hostile files refused with one line naming the file. And in training (sae/train/run_feature_stats.h):
// statistics change nothing of the run, cover exactly the last --feature-stats-steps steps, resume
// bit-exactly, carry the right token ids around each top activation on text, and bad option values
// are refused.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "io/csv.h"
#include "io/safetensors.h"
#include "lm/text_data.h"
#include "lm/tokenizer.h"
#include "sae/train/options.h"
#include "sae/data/synthetic.h"
#include "sae/step/feature_stats_math.h"
#include "sae/train/checkpoint.h"
#include "sae/train/feature_stats.h"
#include "sae/train/trainer.h"
#include "tensor/cuda/backend.h"
#include "tests/util/gpu.h"
#include "tensor/rng.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::small_synthetic_config;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kFeatures = 23, kRadius = 2;

struct Batch {
  Tensor f;  // [N, F]
  BatchOrigins origins;
  int64_t step;
};

// Batches of stretches of stories (consecutive positions, so neighbours are known), stories drawn
// from a small pool so they repeat across batches, some rows of no known story; f with ties.
std::vector<Batch> random_batches(int count, uint64_t seed, int64_t features = kFeatures) {
  Rng rng(seed);
  std::vector<Batch> out;
  for (int b = 0; b < count; ++b) {
    Batch batch;
    batch.step = 100 + 3 * b;
    std::vector<int64_t> story, position;
    while (story.size() < 30) {
      const int64_t s = rng.uniform() < 0.15 ? -1 : static_cast<int64_t>(rng.below(9));
      const int64_t start = static_cast<int64_t>(rng.below(20)), length = 1 + static_cast<int64_t>(rng.below(8));
      for (int64_t i = 0; i < length; ++i) {
        story.push_back(s);
        position.push_back(s < 0 ? 5000 * b + static_cast<int64_t>(story.size()) : start + i);
      }
    }
    const int64_t n = static_cast<int64_t>(story.size());
    batch.origins.resize(n, kRadius);
    batch.origins.has_token_ids = true;
    for (int64_t r = 0; r < n; ++r) {
      batch.origins.story[r] = story[r];
      batch.origins.position[r] = position[r];
      for (int64_t k = 0; k < batch.origins.width(); ++k)
        batch.origins.context[r * batch.origins.width() + k] = static_cast<int32_t>(rng.below(50)) - 1;
    }
    std::vector<double> f(n * features);
    for (double& v : f) {
      const double u = rng.uniform();
      v = u < 0.6 ? 0.0 : (u < 0.68 ? 1.25 : std::exp2(-6.0 + 10.0 * rng.uniform()));
    }
    batch.f = Tensor::from_vector(f, Shape{n, features});
    out.push_back(std::move(batch));
  }
  return out;
}

StepFeatures dense_features(const Batch& b) {
  StepFeatures s;
  s.tokens = b.f.size(0);
  s.dense = b.f;
  return s;
}

// The by-feature entry lists of f (what a sparse step holds).
StepFeatures sparse_features(const Batch& b) {
  const int64_t n = b.f.size(0), features = b.f.size(1);
  const std::vector<double> f = b.f.to_vector();
  std::vector<double> col_ptr(1, 0), rows, vals;
  for (int64_t j = 0; j < features; ++j) {
    for (int64_t r = 0; r < n; ++r)
      if (f[r * features + j] > 0) {
        rows.push_back(double(r));
        vals.push_back(f[r * features + j]);
      }
    col_ptr.push_back(double(rows.size()));
  }
  StepFeatures s;
  s.tokens = n;
  s.sparse = true;
  s.lists.col_ptr = Tensor::from_vector(col_ptr, Shape{features + 1}, DType::I32);
  s.lists.rows = Tensor::from_vector(rows, Shape{static_cast<int64_t>(rows.size())}, DType::I32);
  s.lists.vals = Tensor::from_vector(vals, Shape{static_cast<int64_t>(vals.size())});
  return s;
}

// The brute-force answer: per feature, per story (rows of no known story each alone) its largest
// value (of equal ones the first seen), ordered by value then by when it was seen.
struct Seen {
  double value;
  int64_t order;  // batch * 1000 + row
  int b, r;
};
std::vector<std::vector<Seen>> brute_force_tops(const std::vector<Batch>& batches, int64_t k) {
  const int64_t features = batches.front().f.size(1);
  std::vector<std::vector<double>> fs;
  for (const Batch& batch : batches) fs.push_back(batch.f.to_vector());
  std::vector<std::vector<Seen>> out(features);
  for (int64_t j = 0; j < features; ++j) {
    std::map<int64_t, Seen> best;
    for (int b = 0; b < static_cast<int>(batches.size()); ++b) {
      const std::vector<double>& f = fs[b];
      for (int64_t r = 0; r < batches[b].f.size(0); ++r) {
        const double v = f[r * features + j];
        if (!(v > 0)) continue;
        const int64_t story = batches[b].origins.story[r];
        const int64_t key = story >= 0 ? story : -(1 + b * 1000 + r);
        auto it = best.find(key);
        if (it == best.end() || v > it->second.value) best[key] = Seen{v, b * 1000 + r, b, static_cast<int>(r)};
      }
    }
    for (const auto& [key, seen] : best) out[j].push_back(seen);
    std::sort(out[j].begin(), out[j].end(), [](const Seen& a, const Seen& c) {
      return a.value != c.value ? a.value > c.value : a.order < c.order;
    });
    if (static_cast<int64_t>(out[j].size()) > k) out[j].resize(k);
  }
  return out;
}

void expect_equals_brute_force(const FeatureStats& stats, const std::vector<Batch>& batches, const std::string& what) {
  const auto tops = brute_force_tops(batches, stats.k());
  const int64_t features = stats.features();
  std::vector<std::vector<double>> fs;
  for (const Batch& batch : batches) fs.push_back(batch.f.to_vector());
  for (int64_t j = 0; j < features; ++j) {
    ASSERT_EQ(stats.top_count(j), static_cast<int32_t>(tops[j].size())) << what << " feature " << j;
    for (int32_t rank = 0; rank < stats.top_count(j); ++rank) {
      const Seen& want = tops[j][rank];
      const Batch& batch = batches[want.b];
      const BatchOrigins& o = batch.origins;
      const FeatureTop got = stats.top(j, rank);
      const std::string where = cat(what, " feature ", j, " rank ", rank);
      ASSERT_EQ(got.value, float(want.value)) << where;
      EXPECT_EQ(got.story, o.story[want.r]) << where;
      EXPECT_EQ(got.position, o.position[want.r]) << where;
      EXPECT_EQ(got.step, batch.step) << where;
      const std::vector<double>& f = fs[want.b];
      for (int64_t k = -kRadius; k <= kRadius; ++k) {
        EXPECT_EQ(got.tokens[k + kRadius], o.context[want.r * o.width() + k + kRadius]) << where;
        const int64_t t = want.r + k;
        const bool neighbour = t >= 0 && t < batch.f.size(0) && o.story[t] == o.story[want.r] &&
                               o.position[t] == o.position[want.r] + k;
        if (neighbour)
          EXPECT_EQ(got.values[k + kRadius], float(f[t * features + j])) << where << " offset " << k;
        else
          EXPECT_TRUE(std::isnan(got.values[k + kRadius])) << where << " offset " << k;
      }
    }
  }
  // Histograms and counts.
  std::vector<double> histogram(features * kHistogramBins, 0.0), counts(features, 0.0);
  int64_t tokens = 0;
  for (const Batch& b : batches) {
    const std::vector<double> f = b.f.to_vector();
    tokens += b.f.size(0);
    for (int64_t r = 0; r < b.f.size(0); ++r)
      for (int64_t j = 0; j < features; ++j)
        if (f[r * features + j] > 0) {
          histogram[j * kHistogramBins + histogram_bin(float(f[r * features + j]))] += 1;
          counts[j] += 1;
        }
  }
  EXPECT_EQ(stats.histogram(), histogram) << what;
  EXPECT_EQ(stats.counts(), counts) << what;
  EXPECT_EQ(stats.tokens(), tokens) << what;
  EXPECT_EQ(stats.steps(), static_cast<int64_t>(batches.size())) << what;
  EXPECT_EQ(stats.first_step(), batches.front().step);
  EXPECT_EQ(stats.last_step(), batches.back().step);
}

// The tensors and metadata of a safetensors file, to write back altered.
struct FileParts {
  std::vector<RawTensor> tensors;
  std::map<std::string, std::string> metadata;
};
FileParts read_parts(const std::string& path) {
  SafetensorsFile file = SafetensorsFile::open(path);
  FileParts parts;
  parts.metadata = file.metadata();
  for (const std::string& name : file.names()) {
    const SafetensorsEntry& e = file.entry(name);
    parts.tensors.push_back({name, e.dtype, e.shape, std::string(static_cast<const char*>(e.data), e.bytes)});
  }
  return parts;
}
RawTensor& part(FileParts& parts, const std::string& name) {
  for (RawTensor& t : parts.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

std::string load_error(const std::string& path) {
  try {
    FeatureStats::load(path);
  } catch (const DataError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(FeatureStats, EqualsBruteForceOnDenseAndSparseFeatures) {
  for (int64_t k : {1, 4, 9}) {
    const std::vector<Batch> batches = random_batches(12, 7 + k);
    FeatureStats dense(kFeatures, FeatureStatsOptions{k, kRadius}), sparse(kFeatures, FeatureStatsOptions{k, kRadius});
    for (const Batch& b : batches) {
      dense.add(dense_features(b), b.origins, b.step);
      sparse.add(sparse_features(b), b.origins, b.step);
    }
    expect_equals_brute_force(dense, batches, cat("dense k ", k));
    expect_equals_brute_force(sparse, batches, cat("sparse k ", k));
  }
}

TEST(FeatureStats, ManyFeaturesGiveTheSameFileOnAnyThreadCount) {
  // Enough features (and context look-ups) for the merge and the look-ups to split over threads:
  // 1, 2 and 3 threads write the same bytes, and the brute force agrees.
  constexpr int64_t kMany = 2500;
  const std::vector<Batch> batches = random_batches(6, 404, kMany);
  TempDir dir("stats_threads");
  const int threads_before = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    FeatureStats stats(kMany, FeatureStatsOptions{7, kRadius});
    for (size_t i = 0; i < batches.size(); ++i)
      stats.add(i % 2 ? sparse_features(batches[i]) : dense_features(batches[i]), batches[i].origins, batches[i].step);
    stats.save(dir.str(cat(threads, ".safetensors")));
    if (threads == 2) expect_equals_brute_force(stats, batches, "2 threads");
  }
  omp_set_num_threads(threads_before);
  EXPECT_EQ(read_file(dir.str("2.safetensors")), read_file(dir.str("1.safetensors")));
  EXPECT_EQ(read_file(dir.str("3.safetensors")), read_file(dir.str("1.safetensors")));
}

TEST(FeatureStats, UnknownOriginsKeepEveryRowApart) {
  // Origins that do not describe the batch (a smaller radius): no stories, no tokens, no neighbours.
  std::vector<Batch> batches = random_batches(4, 99);
  FeatureStats stats(kFeatures, FeatureStatsOptions{5, kRadius});
  BatchOrigins wrong;
  wrong.resize(batches[0].f.size(0), kRadius - 1);
  for (Batch& b : batches) {
    stats.add(dense_features(b), wrong, b.step);
    b.origins.resize(b.f.size(0), kRadius);  // story -1 everywhere: what the statistics must assume
    for (int64_t r = 0; r < b.f.size(0); ++r) b.origins.position[r] = -1 - 1000 * r;  // never neighbours
  }
  const auto tops = brute_force_tops(batches, 5);
  for (int64_t j = 0; j < kFeatures; ++j) {
    ASSERT_EQ(stats.top_count(j), static_cast<int32_t>(tops[j].size()));
    for (int32_t rank = 0; rank < stats.top_count(j); ++rank) {
      const FeatureTop t = stats.top(j, rank);
      EXPECT_EQ(t.value, float(tops[j][rank].value));
      EXPECT_EQ(t.story, -1);
      EXPECT_EQ(t.position, -1);
      EXPECT_EQ(t.tokens[kRadius], -1);
      EXPECT_EQ(t.values[kRadius], t.value);  // the centre is always known
      EXPECT_TRUE(std::isnan(t.values[0]));
    }
  }
}

TEST(FeatureStats, TokensOfDataWithoutStoriesAreListedOnceOverEpochs) {
  // A .npy without story boundaries: each row is story -1 at its token's index. Seen again in a
  // later epoch, a token keeps one entry (its largest value; of equal ones the first seen): every
  // top list had held each token once per epoch.
  const int64_t n = 12, features = 3, k = 5;
  BatchOrigins origins;
  origins.resize(n, kRadius);
  for (int64_t r = 0; r < n; ++r) origins.position[r] = 1000 + r;  // story -1: a token of the file
  for (const bool sparse : {false, true}) {
    std::vector<double> f(n * features);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < features; ++j) f[r * features + j] = 1.0 + double((r * 7 + j * 5) % n);
    FeatureStats stats(features, FeatureStatsOptions{k, kRadius});
    Batch b{Tensor::from_vector(f, Shape{n, features}), origins, 0};
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      b.step = 10 + epoch;
      if (epoch == 2) f[4 * features + 0] = 100.0, b.f = Tensor::from_vector(f, Shape{n, features});  // grown
      stats.add(sparse ? sparse_features(b) : dense_features(b), b.origins, b.step);
    }
    for (int64_t j = 0; j < features; ++j) {
      ASSERT_EQ(stats.top_count(j), k);
      std::vector<std::pair<double, int64_t>> want;  // (the token's largest value, its index), largest first
      for (int64_t r = 0; r < n; ++r) want.push_back({f[r * features + j], 1000 + r});
      std::sort(want.begin(), want.end(), [](auto& a, auto& c) { return a.first > c.first; });
      for (int32_t rank = 0; rank < k; ++rank) {
        const FeatureTop t = stats.top(j, rank);
        EXPECT_EQ(t.value, float(want[rank].first)) << "feature " << j << " rank " << rank;
        EXPECT_EQ(t.position, want[rank].second) << "feature " << j << " rank " << rank;
        EXPECT_EQ(t.step, j == 0 && t.position == 1004 ? 12 : 10) << "feature " << j << " rank " << rank;
      }
    }
  }
}

TEST(FeatureStats, WiderOriginsGiveTheirMiddle) {
  // The same batches with origins of radius kRadius + 3 (the outer ids random): the same statistics.
  const std::vector<Batch> batches = random_batches(6, 31);
  FeatureStats plain(kFeatures, FeatureStatsOptions{4, kRadius}), wide(kFeatures, FeatureStatsOptions{4, kRadius});
  Rng rng(8);
  for (const Batch& b : batches) {
    BatchOrigins wider = b.origins;
    wider.resize(b.f.size(0), kRadius + 3);
    wider.story = b.origins.story;
    wider.position = b.origins.position;
    for (int64_t r = 0; r < b.f.size(0); ++r)
      for (int64_t k = 0; k < wider.width(); ++k) {
        const int64_t inner = k - 3;
        wider.context[r * wider.width() + k] = inner >= 0 && inner < b.origins.width()
                                                   ? b.origins.context[r * b.origins.width() + inner]
                                                   : static_cast<int32_t>(rng.below(100));
      }
    plain.add(dense_features(b), b.origins, b.step);
    wide.add(dense_features(b), wider, b.step);
  }
  TempDir dir("stats_wide");
  plain.save(dir.str("plain.safetensors"));
  wide.save(dir.str("wide.safetensors"));
  EXPECT_EQ(read_file(dir.str("plain.safetensors")), read_file(dir.str("wide.safetensors")));
}

TEST(FeatureStats, SavedLoadedAndContinuedIsTheUninterruptedFile) {
  TempDir dir("stats_file");
  const std::vector<Batch> batches = random_batches(10, 5);
  FeatureStats whole(kFeatures, FeatureStatsOptions{6, kRadius});
  whole.source()["note"] = "whole";
  for (const Batch& b : batches) whole.add(dense_features(b), b.origins, b.step);
  whole.save(dir.str("whole.safetensors"));

  FeatureStats first(kFeatures, FeatureStatsOptions{6, kRadius});
  first.source()["note"] = "whole";
  for (int i = 0; i < 4; ++i) first.add(dense_features(batches[i]), batches[i].origins, batches[i].step);
  first.save(dir.str("first.safetensors"));
  FeatureStats rest = FeatureStats::load(dir.str("first.safetensors"));
  rest.save(dir.str("again.safetensors"));
  EXPECT_EQ(read_file(dir.str("first.safetensors")), read_file(dir.str("again.safetensors")));
  for (int i = 4; i < 10; ++i) rest.add(sparse_features(batches[i]), batches[i].origins, batches[i].step);
  rest.save(dir.str("rest.safetensors"));
  EXPECT_EQ(read_file(dir.str("whole.safetensors")), read_file(dir.str("rest.safetensors")));
  expect_equals_brute_force(FeatureStats::load(dir.str("rest.safetensors")), batches, "loaded");
  EXPECT_EQ(FeatureStats::load(dir.str("rest.safetensors")).source().at("note").as_string(), "whole");
}

TEST(FeatureStats, OnCudaTheSameFileAsOnCpu) {
  SKIP_WITHOUT_GPU();
  TempDir dir("stats_cuda");
  const std::vector<Batch> batches = random_batches(10, 77);
  FeatureStats cpu(kFeatures, FeatureStatsOptions{5, kRadius}), gpu(kFeatures, FeatureStatsOptions{5, kRadius}, Device::CUDA);
  for (size_t i = 0; i < batches.size(); ++i) {
    const Batch& b = batches[i];
    StepFeatures host = i % 2 ? sparse_features(b) : dense_features(b), device = host;
    device.dense = host.dense.defined() ? host.dense.to(Device::CUDA) : Tensor();
    if (host.sparse) {
      device.lists.col_ptr = host.lists.col_ptr.to(Device::CUDA);
      device.lists.rows = host.lists.rows.to(Device::CUDA);
      device.lists.vals = host.lists.vals.to(Device::CUDA);
    }
    cpu.add(host, b.origins, b.step);
    gpu.add(device, b.origins, b.step);
  }
  cpu.save(dir.str("cpu.safetensors"));
  gpu.save(dir.str("gpu.safetensors"));
  EXPECT_EQ(read_file(dir.str("cpu.safetensors")), read_file(dir.str("gpu.safetensors")));
  // The host copy (sae_features reads its entries from one): the same file, on the CPU, and it goes on
  // as the device's would.
  FeatureStats host = gpu.on_host();
  EXPECT_EQ(host.device(), Device::CPU);
  host.save(dir.str("host.safetensors"));
  EXPECT_EQ(read_file(dir.str("cpu.safetensors")), read_file(dir.str("host.safetensors")));
}

TEST(FeatureStats, AHostCopyIsTheSameStatisticsAndGoesOnAlike) {
  TempDir dir("stats_on_host");
  const std::vector<Batch> batches = random_batches(10, 5);
  FeatureStats stats(kFeatures, FeatureStatsOptions{6, kRadius});
  stats.source()["note"] = "copied";
  for (int i = 0; i < 5; ++i) stats.add(dense_features(batches[i]), batches[i].origins, batches[i].step);
  FeatureStats copy = stats.on_host();
  stats.save(dir.str("a.safetensors"));
  copy.save(dir.str("b.safetensors"));
  EXPECT_EQ(read_file(dir.str("a.safetensors")), read_file(dir.str("b.safetensors")));
  for (int i = 5; i < 10; ++i) {
    stats.add(sparse_features(batches[i]), batches[i].origins, batches[i].step);
    if (i == 5) {  // its own storage: adding to one leaves the other as it was
      copy.save(dir.str("c.safetensors"));
      EXPECT_EQ(read_file(dir.str("b.safetensors")), read_file(dir.str("c.safetensors")));
    }
    copy.add(sparse_features(batches[i]), batches[i].origins, batches[i].step);
  }
  stats.save(dir.str("a.safetensors"));
  copy.save(dir.str("b.safetensors"));
  EXPECT_EQ(read_file(dir.str("a.safetensors")), read_file(dir.str("b.safetensors")));
  expect_equals_brute_force(copy, batches, "host copy");
}

TEST(FeatureStats, HostileFilesAreRefusedNamingTheFile) {
  TempDir dir("stats_hostile");
  const std::vector<Batch> batches = random_batches(5, 11);
  FeatureStats stats(kFeatures, FeatureStatsOptions{4, kRadius});
  for (const Batch& b : batches) stats.add(dense_features(b), b.origins, b.step);
  const std::string good = dir.str("good.safetensors");
  stats.save(good);
  ASSERT_EQ(load_error(good), "no error");
  int64_t j = 0;  // a feature with two top activations: the entries spoiled below are its
  while (stats.top_count(j) < 2) ++j;
  const size_t k = 4, w = 2 * kRadius + 1;
  int cases = 0;
  auto expect_refused = [&](const std::function<void(FileParts&)>& spoil, const std::string& words) {
    FileParts parts = read_parts(good);
    spoil(parts);
    const std::string path = dir.str(cat("bad", cases++, ".safetensors"));
    write_safetensors_raw(path, parts.tensors, parts.metadata);
    const std::string error = load_error(path);
    EXPECT_NE(error.find(path), std::string::npos) << error;
    EXPECT_NE(error.find(words), std::string::npos) << "wanted '" << words << "' in: " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  };
  expect_refused([](FileParts& p) { p.metadata.clear(); }, "no feature_stats metadata");
  expect_refused([](FileParts& p) { p.metadata["feature_stats"] = "{\"format\": 3}"; }, "feature_stats metadata");
  expect_refused([](FileParts& p) { p.metadata["feature_stats"] = "[1, 2"; }, "feature_stats metadata");
  expect_refused([&](FileParts& p) {
    Json info = Json::parse(p.metadata["feature_stats"]);
    info["k"] = 100000;
    p.metadata["feature_stats"] = info.dump();
  }, "feature-stats-k");
  expect_refused([](FileParts& p) { part(p, "top_count").dtype = "F32"; }, "top_count should be I32");
  expect_refused([&](FileParts& p) {
    RawTensor& values = part(p, "top_value");  // rank 1 above rank 0
    float v[2];
    std::memcpy(v, values.bytes.data() + 4 * j * k, 8);
    v[1] = v[0] * 2;
    std::memcpy(values.bytes.data() + 4 * j * k, v, 8);
  }, "decreasing order");
  expect_refused([](FileParts& p) {
    RawTensor& counts = part(p, "counts");
    double c;
    std::memcpy(&c, counts.bytes.data(), 8);
    c += 1;
    std::memcpy(counts.bytes.data(), &c, 8);
  }, "row sum");
  expect_refused([](FileParts& p) {
    RawTensor& h = part(p, "histogram");
    const double nan = std::nan("");
    std::memcpy(h.bytes.data() + 16, &nan, 8);
  }, "not a count");
  expect_refused([&](FileParts& p) {
    RawTensor& steps = part(p, "top_step");
    const int64_t far = 1 << 30;
    std::memcpy(steps.bytes.data() + 8 * j * k, &far, 8);
  }, "outside the window");
  expect_refused([&](FileParts& p) {
    RawTensor& tokens = part(p, "top_tokens");
    const int32_t bad = -7;
    std::memcpy(tokens.bytes.data() + 4 * j * k * w, &bad, 4);
  }, "top_tokens");
  expect_refused([&](FileParts& p) {
    RawTensor& values = part(p, "top_values");
    const float bad = -1.0f;
    std::memcpy(values.bytes.data() + 4 * (j * k * w + kRadius), &bad, 4);
  }, "top_values");
  expect_refused([&](FileParts& p) {
    RawTensor& stories = part(p, "top_story");  // rank 1 the same story as rank 0
    std::memcpy(stories.bytes.data() + 8 * (j * k + 1), stories.bytes.data() + 8 * j * k, 8);
    int64_t story;
    std::memcpy(&story, stories.bytes.data() + 8 * j * k, 8);
    if (story < 0) {  // make both a known story
      story = 3;
      std::memcpy(stories.bytes.data() + 8 * j * k, &story, 8);
      std::memcpy(stories.bytes.data() + 8 * (j * k + 1), &story, 8);
    }
  }, "twice");
  expect_refused([](FileParts& p) {
    RawTensor& e = part(p, "histogram_edges");
    const double bad = 3.0;
    std::memcpy(e.bytes.data() + 8, &bad, 8);
  }, "histogram_edges");
  // A truncated file.
  const std::string bytes = read_file(good);
  {
    std::ofstream out(dir.str("truncated.safetensors"), std::ios::binary);
    out << bytes.substr(0, bytes.size() / 2);
  }
  EXPECT_NE(load_error(dir.str("truncated.safetensors")).find("truncated.safetensors"), std::string::npos);
}

// ---------------------------------------------------------------- in training

namespace {
TrainConfig stats_run(const std::string& out) {
  TrainConfig c = small_synthetic_config(out);
  c.features = 40;
  c.lr = 3e-3;
  c.l1 = 0.5;
  c.steps = 30;
  c.log_every = 1;
  c.checkpoint_every = 10;
  c.feature_stats_steps = 18;
  c.feature_stats_k = 5;
  c.feature_stats_context = 3;
  return c;
}

std::string stats_bytes(const std::string& dir) { return read_file(dir + "/feature_stats.safetensors"); }

TrainConfig resumed(const TrainConfig& c, const std::string& run) {
  TrainConfig r;
  r.resume = run;
  give_every_control(r);
  r.steps = c.steps;
  r.checkpoint_every = c.checkpoint_every;
  r.log_every = c.log_every;
  r.progress = ProgressMode::None;
  r.device = DeviceChoice::Cpu;
  return r;
}
}  // namespace

TEST(FeatureStatsTraining, GatheringChangesNothingOfTheRun) {
  TempDir dir("stats_same_run");
  std::vector<TrainConfig> kinds;
  kinds.push_back(stats_run(""));  // token batches, --sparse auto
  kinds.push_back(stats_run(""));
  kinds.back().batch_tokens = 0;
  kinds.back().normalize = Normalization::Story;
  kinds.back().arch.set("sparse", Json("off"));
  kinds.push_back(stats_run(""));
  kinds.back().architecture = "topk";
  kinds.back().arch.set("k", Json(4));
  kinds.back().l1 = 0;
  kinds.push_back(stats_run(""));
  kinds.back().architecture = "jumprelu";
  for (size_t i = 0; i < kinds.size(); ++i) {
    TrainConfig with = kinds[i], without = kinds[i];
    with.out = dir.str(cat("with", i));
    without.out = dir.str(cat("without", i));
    without.feature_stats_steps = 0;
    train(with);
    train(without);
    EXPECT_EQ(read_file(with.out + "/sae/sae_weights.safetensors"), read_file(without.out + "/sae/sae_weights.safetensors"))
        << i;
    EXPECT_EQ(read_file(with.out + "/metrics.csv"), read_file(without.out + "/metrics.csv")) << i;
    EXPECT_TRUE(fs::exists(with.out + "/sae/feature_stats.safetensors")) << i;
    EXPECT_FALSE(fs::exists(without.out + "/sae/feature_stats.safetensors")) << i;
  }
}

TEST(FeatureStatsTraining, CoverTheLastStepsAndResumeBitExactly) {
  TempDir dir("stats_resume");
  for (const bool stories : {false, true}) {
    TrainConfig c = stats_run(dir.str(stories ? "full_story" : "full_tokens"));
    if (stories) {
      c.batch_tokens = 0;
      c.normalize = Normalization::Story;
    }
    train(c);
    // The window: steps 13 .. 30; checkpoint 10 is before it, 20 inside.
    EXPECT_FALSE(fs::exists(c.out + "/checkpoints/step_10/feature_stats.safetensors"));
    ASSERT_TRUE(fs::exists(c.out + "/checkpoints/step_20/feature_stats.safetensors"));
    const FeatureStats stats = FeatureStats::load(c.out + "/sae/feature_stats.safetensors");
    EXPECT_EQ(stats.first_step(), 13);
    EXPECT_EQ(stats.last_step(), 30);
    EXPECT_EQ(stats.steps(), 18);
    const CsvNumbers metrics = read_csv_numbers(c.out + "/metrics.csv");
    const std::vector<double> tokens = metrics.column("tokens");
    EXPECT_EQ(stats.tokens(), int64_t(tokens[29] - tokens[11]));
    // SAELens's sparsity.safetensors beside them (and in checkpoint 20): log10(count / tokens + 1e-10).
    ASSERT_TRUE(fs::exists(c.out + "/checkpoints/step_20/sparsity.safetensors"));
    EXPECT_FALSE(fs::exists(c.out + "/checkpoints/step_10/sparsity.safetensors"));
    const SafetensorsFile sparsity_file = SafetensorsFile::open(c.out + "/sae/sparsity.safetensors");
    EXPECT_EQ(sparsity_file.names(), std::vector<std::string>{"sparsity"});
    EXPECT_EQ(sparsity_file.entry("sparsity").dtype, "F32");
    const std::vector<double> sparsity = sparsity_file.read_f32("sparsity").to_vector(), counts = stats.counts();
    ASSERT_EQ(sparsity.size(), counts.size());
    int64_t never = 0;
    for (size_t j = 0; j < counts.size(); ++j) {
      EXPECT_NEAR(sparsity[j], std::log10(counts[j] / double(tokens[29] - tokens[11]) + 1e-10), 1e-6) << j;
      never += counts[j] == 0;
    }
    if (never > 0) {
      EXPECT_EQ(*std::min_element(sparsity.begin(), sparsity.end()), -10.0f);
    }
    // In story batches the neighbours are in the batch: every known context value sits inside the
    // story (whose length the generator knows), and the ids are -2 (no ids) inside, -1 outside.
    const SyntheticSource source(c.synthetic);
    int64_t checked = 0;
    for (int64_t j = 0; j < stats.features(); ++j)
      for (int32_t r = 0; r < stats.top_count(j); ++r) {
        const FeatureTop t = stats.top(j, r);
        EXPECT_GE(t.step, 13);
        EXPECT_EQ(t.values[3], t.value);
        if (!stories) continue;
        for (int64_t k = -3; k <= 3; ++k) {
          const bool inside = t.position + k >= 0 && t.position + k < source.story_length(t.story);
          EXPECT_EQ(t.tokens[k + 3], inside ? -2 : -1);
          EXPECT_EQ(!std::isnan(t.values[k + 3]), inside);
          ++checked;
        }
      }
    if (stories) {
      EXPECT_GT(checked, 100);
    }
    // Resume from before the window and from inside it.
    for (int64_t cut : {int64_t(10), int64_t(20)}) {
      TrainConfig first = c;
      first.out = dir.str(cat(stories ? "story_cut" : "tokens_cut", cut));
      first.steps = 30;
      train(first);
      fs::remove_all(first.out + "/sae");
      for (const auto& entry : fs::directory_iterator(first.out + "/checkpoints"))
        if (entry.path().filename().string() != cat("step_", cut)) fs::remove_all(entry.path());
      train(resumed(c, first.out));
      EXPECT_EQ(stats_bytes(c.out + "/sae"), stats_bytes(first.out + "/sae")) << "cut at " << cut;
      EXPECT_EQ(read_file(c.out + "/sae/sae_weights.safetensors"), read_file(first.out + "/sae/sae_weights.safetensors"));
    }
  }
  // A finished 25-step run (window 8 .. 25) extended to 30 steps (window 13 .. 30): its statistics
  // began before the new window and cannot be cut back, so they start again at step 26 (they had
  // covered steps 8 .. 30, 23 steps of an 18-step window).
  TrainConfig shorter = stats_run(dir.str("extended"));
  shorter.steps = 25;
  train(shorter);
  EXPECT_EQ(FeatureStats::load(shorter.out + "/sae/feature_stats.safetensors").first_step(), 8);
  train(resumed(stats_run(""), shorter.out));
  const FeatureStats extended = FeatureStats::load(shorter.out + "/sae/feature_stats.safetensors");
  EXPECT_EQ(extended.first_step(), 26);
  EXPECT_EQ(extended.last_step(), 30);
  EXPECT_EQ(extended.steps(), 5);
}

TEST(FeatureStatsTraining, TextRunsKeepTheStoriesTokensAroundEachTopActivation) {
  TempDir dir("stats_text");
  const std::string model = std::string(SAE_SOURCE_DIR) + "/tests/ref/text_train/model";
  const std::string text = std::string(SAE_SOURCE_DIR) + "/tests/ref/text_train/stories.txt";
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(model);
  std::vector<std::vector<int32_t>> ids;
  StoryReader reader(text);
  TextStory story;
  while (reader.next(story)) ids.push_back(tokenizer.encode(story.text, story.where));
  for (int64_t batch : {int64_t(0), int64_t(64)}) {
    TrainConfig c;
    c.data = "text";
    c.model = model;
    c.text = text;
    c.features = 48;
    c.lr = 3e-3;
    c.l1 = 0.5;
    c.steps = 20;
    c.batch_tokens = batch;
    c.normalize = batch ? Normalization::Dataset : Normalization::Story;
    if (batch > 0) c.text_chunk_tokens = 200;  // (story batches have no chunks)
    c.progress = ProgressMode::None;
    c.device = DeviceChoice::Cpu;
    c.feature_stats_steps = 20;
    c.feature_stats_context = 4;
    c.out = dir.str(cat("run", batch));
    train(c);
    const FeatureStats stats = FeatureStats::load(c.out + "/sae/feature_stats.safetensors");
    EXPECT_TRUE(stats.has_token_ids());
    int64_t checked = 0;
    for (int64_t j = 0; j < stats.features(); ++j)
      for (int32_t r = 0; r < stats.top_count(j); ++r) {
        const FeatureTop t = stats.top(j, r);
        ASSERT_TRUE(t.story >= 0 && t.story < static_cast<int64_t>(ids.size()));
        const std::vector<int32_t>& s = ids[t.story];
        for (int64_t k = -4; k <= 4; ++k) {
          const int64_t p = t.position + k;
          const int32_t got = t.tokens[k + 4];
          if (batch == 0 || got != -1) {
            ASSERT_EQ(got, p >= 0 && p < static_cast<int64_t>(s.size()) ? s[p] : -1)
                << "batch " << batch << " feature " << j << " rank " << r << " offset " << k;
            ++checked;
          }
        }
      }
    EXPECT_GT(checked, 200) << batch;
  }
}

TEST(FeatureStatsTraining, TheirMemoryLimitAppliesOnlyWhenTheyAreGathered) {
  // 5M features need 8.9 GiB of lists at the defaults: refused with statistics, fine without.
  TrainConfig c = stats_run("unused");
  c.features = 5'000'000;
  c.feature_stats_k = 20;
  c.feature_stats_context = 32;
  EXPECT_THROW(c.validate(), UsageError);
  c.feature_stats_steps = 0;
  EXPECT_NO_THROW(c.validate());
}

TEST(FeatureStatsTraining, BadOptionValuesAreRefused) {
  TempDir dir("stats_options");
  // The case's options come last: they win over the base's --features 16.
  const std::string base = " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
                           " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16"
                           " --steps 3 --progress none --device cpu --out " + dir.str("run") + " ";
  const std::pair<std::string, std::string> cases[] = {
      {"--feature-stats-k 0", "--feature-stats-k"},
      {"--feature-stats-k 1001", "--feature-stats-k"},
      {"--feature-stats-k x", "--feature-stats-k"},
      {"--feature-stats-context -1", "--feature-stats-context"},
      {"--feature-stats-context 257", "--feature-stats-context"},
      {"--feature-stats-steps -2", "--feature-stats-steps"},
      {"--features 10000000 --feature-stats-k 1000 --feature-stats-context 256", "GiB"},
  };
  for (const auto& [option, words] : cases) {
    const sae::testing::CommandResult r = run_binary("sae_train", base + option, dir);
    EXPECT_EQ(r.exit_code, 2) << option << ": " << r.err;
    EXPECT_NE(r.err.find(words), std::string::npos) << option << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(dir.str("run"))) << "a refused run wrote its folder";
  const sae::testing::CommandResult ok = run_binary("sae_train", base + "--feature-stats-steps 0", dir);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_FALSE(fs::exists(dir.str("run/sae/feature_stats.safetensors")));
}

TEST(FeatureStats, AFileOfMoreFeaturesThanASaveBlockReadsBackAsGathered) {
  // save writes the lists 65536 features at a time (at 2^20 features a whole [F, K, W] tensor is
  // 713 MB): 131077 features are three blocks, the last of 5. The file read back equals brute force
  // over every feature, and writes the same bytes again.
  TempDir dir("stats_blocks");
  const int64_t features = 2 * 65536 + 5;
  const std::vector<Batch> batches = random_batches(3, 41, features);
  FeatureStats stats(features, FeatureStatsOptions{3, kRadius});
  for (const Batch& b : batches) stats.add(dense_features(b), b.origins, b.step);
  stats.save(dir.str("blocks.safetensors"));
  const FeatureStats loaded = FeatureStats::load(dir.str("blocks.safetensors"));
  expect_equals_brute_force(loaded, batches, "loaded");
  loaded.save(dir.str("again.safetensors"));
  EXPECT_EQ(read_file(dir.str("blocks.safetensors")), read_file(dir.str("again.safetensors")));
}
