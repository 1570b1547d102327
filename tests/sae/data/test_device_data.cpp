// --device-data: batches made or normalised on the training device and their way there.
//   - the synthetic generator's device split (sae/data/synthetic_math.h: one thread draws, all
//     apply), run on the host, equals SyntheticSource::read_tokens bit for bit, for option sets that
//     reach every branch; its random stream is tensor/rng.h's Rng draw for draw;
//   - normalize_batch_on_device on the CPU equals normalize_batch bit for bit; Batcher::next_on_device
//     gives next()'s batches, positions and origins;
//   - BatchPrefetcher keeps the BatchUpload protocol (a slot is never refilled while handed out) and
//     its device buffers hold the batches; a prefetch error is raised on every later call; told how
//     many batches it will be asked for, it prepares none past them;
//   - batch_metrics on tensors agrees with the host metrics;
//   - a CPU run with --device-data on trains to the same bits as with it off;
//   - on CUDA (skipped without a GPU): the generator, the normalisation and the whole path against
//     the CPU, with the tolerances stated there.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "sae/data/batches.h"
#include "sae/data/prefetch.h"
#include "sae/data/synthetic.h"
#include "sae/data/synthetic_math.h"
#include "sae/train/batch_upload.h"
#include "sae/train/metrics.h"
#include "sae/train/trainer.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::TempDir;

namespace {

SyntheticOptions options_with(int64_t d, int64_t concepts, int64_t story_concepts, int64_t story_active,
                              double active, uint64_t seed) {
  SyntheticOptions o;
  o.d = d;
  o.concepts = concepts;
  o.story_concepts = story_concepts;
  o.story_active = story_active;
  o.stories = 40;
  o.mean_length = 24;
  o.active = active;
  o.seed = seed;
  return o;
}

// Option sets reaching every branch of the split: odd and even widths, no story-level concepts, a
// single token-level concept, no token-level draws (active 0), more than one chunk of draws per
// token (active 300 > 256), many story concepts.
std::vector<SyntheticOptions> option_sets() {
  std::vector<SyntheticOptions> sets = {options_with(24, 60, 8, 2, 3, 7),  options_with(7, 30, 0, 0, 5, 1),
                                        options_with(16, 13, 12, 3, 4, 2), options_with(9, 40, 5, 5, 0, 3),
                                        options_with(6, 500, 10, 4, 300, 4), options_with(33, 700, 600, 400, 2, 5)};
  sets[1].zipf = 0.0;
  sets[4].noise = 0.5;
  return sets;
}

std::vector<float> read_list(SyntheticSource& s, const std::vector<int64_t>& tokens) {
  std::vector<float> out(tokens.size() * s.d());
  s.read_token_list(tokens, out.data());
  return out;
}

}  // namespace

TEST(DeviceData, SyntheticRngIsTheTensorRng) {
  for (uint64_t seed : {0ull, 1ull, 12345ull, 0xFFFFFFFFFFFFFFFFull}) {
    Rng want(seed);
    SyntheticRng got(seed);
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(got.next_u64(), want.next_u64()) << "seed " << seed << " draw " << i;
    for (int i = 0; i < 100; ++i) ASSERT_EQ(got.uniform(0.5, 1.5), want.uniform(0.5, 1.5));
  }
}

TEST(DeviceData, TheGeneratorsDeviceSplitOnTheHostIsTheGenerator) {
  int set = 0;
  for (const SyntheticOptions& o : option_sets()) {
    SyntheticSource source(o);
    ASSERT_TRUE(source.generates_on(Device::CPU));
    // A story's run of tokens and a shuffled list across stories.
    std::vector<int64_t> story_run, shuffled;
    for (int64_t t = source.story_begin(3); t < source.story_begin(3) + source.story_length(3); ++t) story_run.push_back(t);
    Rng rng(set);
    for (int i = 0; i < 50; ++i) shuffled.push_back(static_cast<int64_t>(rng.below(source.num_tokens())));
    for (const auto& tokens : {story_run, shuffled}) {
      const std::vector<float> want = read_list(source, tokens);
      Tensor got = Tensor::full(Shape{int64_t(tokens.size()), o.d}, NAN);
      source.generate_on(tokens, got);
      ASSERT_EQ(std::memcmp(got.data<float>(), want.data(), want.size() * sizeof(float)), 0)
          << "option set " << set << ", " << tokens.size() << " tokens";
    }
    ++set;
  }
  SyntheticSource source(option_sets()[0]);
  Tensor wrong = Tensor::empty(Shape{2, 5});
  EXPECT_THROW(source.generate_on({0, 1}, wrong), Error);
  Tensor out = Tensor::empty(Shape{1, 24});
  EXPECT_THROW(source.generate_on({source.num_tokens()}, out), Error);
}

TEST(DeviceData, NormalizeOnTheDeviceIsNormalizeBatchOnTheCpu) {
  Rng rng(11);
  const int64_t n = 37, d = 13;
  const Tensor raw = normal_tensor(Shape{n, d}, 0.7, 2.5, rng);
  for (Normalization mode : {Normalization::Story, Normalization::Dataset, Normalization::None}) {
    std::vector<float> want(n * d);
    const BatchStats host =
        normalize_batch(raw.data<float>(), want.data(), n, d, mode, 0.37, [](int64_t r) { return r; }, "test");
    Tensor rows = raw.clone(), device_stats = Tensor::zeros(Shape{2}, DType::F64);
    BatchStats stats;
    normalize_batch_on_device(rows, device_stats, mode, 0.37, stats);
    EXPECT_EQ(std::memcmp(rows.data<float>(), want.data(), want.size() * sizeof(float)), 0) << normalization_name(mode);
    read_device_stats(device_stats, stats);
    EXPECT_EQ(stats.raw_mean, host.raw_mean);
    EXPECT_EQ(stats.raw_std, host.raw_std);
    if (mode != Normalization::Story) {
      EXPECT_EQ(stats.norm_shift, host.norm_shift);
      EXPECT_EQ(stats.norm_scale, host.norm_scale);
    }
  }
}

TEST(DeviceData, BatcherOnTheDeviceGivesNextsBatches) {
  const SyntheticOptions o = options_with(24, 60, 8, 2, 3, 7);
  for (int64_t batch : {int64_t(0), int64_t(50)}) {
    SyntheticSource a(o), b(o);
    const Normalization norm = batch == 0 ? Normalization::Story : Normalization::Dataset;
    Batcher host(a, batch, norm, 0.8, 9), device(b, batch, norm, 0.8, 9);
    EXPECT_FALSE(device.generates_on_device(Device::CPU));  // off until asked
    device.set_generate_on_device(true);
    ASSERT_TRUE(device.generates_on_device(Device::CPU));
    host.record_origins(2);
    device.record_origins(2);
    const int64_t max = host.max_batch_tokens();
    std::vector<float> raw(max * o.d), normalized(max * o.d);
    Tensor out = Tensor::empty(Shape{max, o.d}), device_stats;
    for (int step = 0; step < 45; ++step) {  // past the end of the stories (story mode wraps around)
      BatchStats want, got;
      const int64_t n = host.next(raw.data(), normalized.data(), want);
      ASSERT_EQ(device.next_on_device(out, device_stats, got), n);
      ASSERT_EQ(std::memcmp(out.data<float>(), normalized.data(), n * o.d * sizeof(float)), 0) << "step " << step;
      read_device_stats(device_stats, got);
      EXPECT_EQ(got.raw_mean, want.raw_mean);
      EXPECT_EQ(got.raw_std, want.raw_std);
      EXPECT_EQ(device.state(), host.state());
      EXPECT_EQ(device.origins().story, host.origins().story);
      EXPECT_EQ(device.origins().position, host.origins().position);
    }
  }
}

namespace {
// A BatchUpload that copies like HostBatchUpload and records the protocol's calls, checking that a
// slot is never filled while it is handed out and always handed out filled.
class RecordingUpload : public BatchUpload {
 public:
  RecordingUpload(int64_t rows, int64_t d) { for (Tensor& b : buffers_) b = Tensor::empty(Shape{rows, d}); }
  Device device() const override { return Device::CPU; }
  Tensor& device_buffer(int slot) override { return buffers_[slot]; }
  void before_fill(int slot) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (out_[slot]) violations_.push_back(cat("before_fill(", slot, ") while handed out"));
    filled_[slot] = false;
    log_ << "F" << slot;
  }
  void after_fill(int slot, const PreparedBatch& batch) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (out_[slot]) violations_.push_back(cat("after_fill(", slot, ") while handed out"));
    std::memcpy(buffers_[slot].raw(), batch.normalized.raw(), batch.tokens * batch.normalized.size(1) * sizeof(float));
    filled_[slot] = true;
    log_ << "C" << slot;
  }
  void hand_out(int slot) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!filled_[slot]) violations_.push_back(cat("hand_out(", slot, ") before it was filled"));
    if (out_[0] || out_[1]) violations_.push_back(cat("hand_out(", slot, ") with another slot still out"));
    out_[slot] = true;
    log_ << "O" << slot;
  }
  void hand_back(int slot) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!out_[slot]) violations_.push_back(cat("hand_back(", slot, ") of a slot not handed out"));
    out_[slot] = false;
    log_ << "B" << slot;
  }
  void finish() override { finished_ = true; }
  std::vector<std::string> violations_;
  std::ostringstream log_;
  bool finished_ = false;

 private:
  std::mutex mutex_;
  Tensor buffers_[2];
  bool out_[2] = {false, false}, filled_[2] = {false, false};
};
}  // namespace

TEST(DeviceData, PrefetcherKeepsTheUploadProtocolAndFillsTheDeviceBuffers) {
  const SyntheticOptions o = options_with(24, 60, 8, 2, 3, 7);
  for (bool background : {false, true}) {
    SyntheticSource a(o), b(o);
    Batcher reference(a, 32, Normalization::Dataset, 0.8, 4), batcher(b, 32, Normalization::Dataset, 0.8, 4);
    RecordingUpload upload(32, o.d);
    {
      BatchPrefetcher prefetcher(batcher, o.d, background, &upload);
      std::vector<float> raw(32 * o.d), normalized(32 * o.d);
      for (int step = 0; step < 25; ++step) {
        const PreparedBatch& batch = prefetcher.next();
        BatchStats stats;
        ASSERT_EQ(reference.next(raw.data(), normalized.data(), stats), batch.tokens);
        EXPECT_EQ(batch.position, reference.state()) << "step " << step;  // the consumed position, not the worker's
        EXPECT_FALSE(batch.on_device);
        ASSERT_EQ(std::memcmp(batch.device.data<float>(), normalized.data(), normalized.size() * sizeof(float)), 0)
            << "step " << step << (background ? " background" : "");
      }
    }
    EXPECT_TRUE(upload.finished_);
    EXPECT_TRUE(upload.violations_.empty()) << upload.violations_.front() << "\nlog: " << upload.log_.str();
    const std::string log = upload.log_.str();
    EXPECT_EQ(log.substr(0, 6), "F0C0O0") << log;  // the first batch: filled, copied, handed out
  }
}

// A batch that fails (bad data) is the caller's error at that batch, and at every call after it: a
// later next() must not wait for a worker that has stopped.
TEST(DeviceData, APrefetchErrorIsRaisedAgainOnEveryLaterCall) {
  struct FailsAtThird : BatchSource {
    int calls = 0;
    int64_t d() const override { return 4; }
    int64_t max_batch_tokens() const override { return 2; }
    int64_t next(float* raw, float* normalized, BatchStats&) override {
      if (++calls == 3) throw DataError("bad batch 3");
      for (int i = 0; i < 8; ++i) raw[i] = normalized[i] = float(calls);
      return 2;
    }
    Json state() const override { return Json(int64_t(calls)); }
    void restore(const Json&) override {}
  };
  for (bool background : {false, true}) {
    FailsAtThird source;
    BatchPrefetcher prefetcher(source, 4, background);
    EXPECT_EQ(prefetcher.next().tokens, 2);
    EXPECT_EQ(prefetcher.next().tokens, 2);
    for (int again = 0; again < (background ? 3 : 1); ++again)
      EXPECT_THROW(prefetcher.next(), DataError) << (background ? "background, call " : "inline, call ") << again;
  }
}

// Told how many batches it will be asked for, the worker prepares none past the last (at the end of
// a run from text that was a batch run through the language model for nothing).
TEST(DeviceData, APrefetcherToldItsBatchCountPreparesNoneBeyondIt) {
  struct Counts : BatchSource {
    std::atomic<int> calls{0};
    int64_t d() const override { return 4; }
    int64_t max_batch_tokens() const override { return 2; }
    int64_t next(float* raw, float* normalized, BatchStats&) override {
      const int n = ++calls;
      for (int i = 0; i < 8; ++i) raw[i] = normalized[i] = float(n);
      return 2;
    }
    Json state() const override { return Json(int64_t(calls)); }
    void restore(const Json&) override {}
  };
  for (bool background : {false, true}) {
    for (int64_t batches : {0, 3}) {
      Counts source;
      BatchPrefetcher prefetcher(source, 4, background, nullptr, batches);
      for (int64_t i = 0; i < batches; ++i) EXPECT_EQ(prefetcher.next().raw.data<float>()[0], float(i + 1));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // time for a worker to start one more
      EXPECT_EQ(source.calls.load(), batches) << (background ? "background" : "inline");
      EXPECT_THROW(prefetcher.next(), std::logic_error);
    }
  }
  Counts source;  // without a count: always one ahead
  BatchPrefetcher prefetcher(source, 4, /*background=*/true);
  prefetcher.next();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(source.calls.load(), 2);
}

TEST(DeviceData, PrefetcherMakesBatchesOnTheDeviceWhenTheSourceCan) {
  const SyntheticOptions o = options_with(24, 60, 8, 2, 3, 7);
  SyntheticSource a(o), b(o);
  Batcher reference(a, 0, Normalization::Story, 1.0, 4), batcher(b, 0, Normalization::Story, 1.0, 4);
  batcher.set_generate_on_device(true);
  std::unique_ptr<BatchUpload> upload = make_batch_upload(Device::CPU, batcher.max_batch_tokens(), o.d);
  BatchPrefetcher prefetcher(batcher, o.d, /*background=*/true, upload.get());
  std::vector<float> raw(reference.max_batch_tokens() * o.d), normalized(raw.size());
  for (int step = 0; step < 10; ++step) {
    const PreparedBatch& batch = prefetcher.next();
    BatchStats stats;
    const int64_t n = reference.next(raw.data(), normalized.data(), stats);
    ASSERT_EQ(batch.tokens, n);
    EXPECT_TRUE(batch.on_device);
    EXPECT_EQ(batch.normalized.numel(), 0);  // nothing on the host
    ASSERT_EQ(std::memcmp(batch.device.data<float>(), normalized.data(), n * o.d * sizeof(float)), 0) << step;
    BatchStats device_stats = batch.stats;
    read_device_stats(batch.device_stats, device_stats);
    EXPECT_EQ(device_stats.raw_mean, stats.raw_mean);
  }
}

TEST(DeviceData, BatchMetricsFromTensorsAgreeWithTheHost) {
  Rng rng(12);
  const int64_t n = 300, d = 17;
  const Tensor x = normal_tensor(Shape{n, d}, 0.3, 1.2, rng), x_hat = add(x, normal_tensor(Shape{n, d}, 0.1, 0.4, rng));
  const BatchMetrics host = batch_metrics(x.data<float>(), x_hat.data<float>(), n, d);
  const BatchMetrics tensors = batch_metrics(x, x_hat);
  EXPECT_NEAR(tensors.normalized.mean, host.normalized.mean, 1e-12);
  EXPECT_NEAR(tensors.normalized.std, host.normalized.std, 1e-12 * host.normalized.std);
  EXPECT_NEAR(tensors.reconstructed.mean, host.reconstructed.mean, 1e-12);
  EXPECT_NEAR(tensors.reconstructed.std, host.reconstructed.std, 1e-12 * host.reconstructed.std);
  EXPECT_NEAR(tensors.fvu, host.fvu, 1e-12 * host.fvu);
  EXPECT_GT(host.fvu, 0.05);  // a real residual: the test compares something
  // A perfect reconstruction and a constant batch.
  EXPECT_EQ(batch_metrics(x, x).fvu, 0.0);
  const Tensor same = Tensor::full(Shape{4, 3}, 2.0);
  EXPECT_EQ(batch_metrics(same, same).normalized.std, 0.0);
  EXPECT_TRUE(std::isnan(batch_metrics(same, same).fvu));  // no variance to explain, as on the host
}

namespace {
// metrics.csv as rows of cells.
std::vector<std::vector<std::string>> csv_rows(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream row(line);
    std::string cell;
    while (std::getline(row, cell, ',')) cells.push_back(cell);
    rows.push_back(cells);
  }
  return rows;
}
}  // namespace

TEST(DeviceData, CpuRunsWithDeviceDataOnTrainToTheSameBits) {
  // The path a GPU run takes (batches through a BatchUpload or made by the generator's device split,
  // normalised by normalize_batch_on_device, metrics from tensors), run on the CPU: the same weights
  // bit for bit; the metrics' batch columns agree to float64 rounding (their sums run in another
  // order), every other column exactly.
  TempDir dir("device_data");
  // Metrics every step, and every 7th with checkpoints every 10th (the loss sums then stay on the
  // device between reads: sae/train/trainer.cpp).
  for (int64_t batch : {int64_t(0), int64_t(20)}) {
    for (PrefetchMode prefetch : {PrefetchMode::Off, PrefetchMode::On}) {
     for (int64_t log_every : {int64_t(1), int64_t(7)}) {
      const std::string tag = cat(batch, "_", prefetch_mode_name(prefetch), "_", log_every);
      TrainConfig off = sae::testing::tiny_story_run_config(dir.str("off_" + tag));
      off.log_every = log_every;
      off.checkpoint_every = log_every == 1 ? off.checkpoint_every : 10;
      off.batch_tokens = batch;
      off.normalize = batch == 0 ? Normalization::Story : Normalization::Dataset;
      off.prefetch = prefetch;
      off.device_data = DeviceDataMode::Off;
      off.steps = 25;
      train(off);
      TrainConfig on = off;
      on.out = dir.str("on_" + tag);
      on.device_data = DeviceDataMode::On;
      train(on);
      EXPECT_EQ(read_file(dir.str("off_" + tag + "/sae/sae_weights.safetensors")),
                read_file(dir.str("on_" + tag + "/sae/sae_weights.safetensors")))
          << tag;
      const auto a = csv_rows(dir.str("off_" + tag + "/metrics.csv")), b = csv_rows(dir.str("on_" + tag + "/metrics.csv"));
      ASSERT_EQ(a.size(), b.size());
      ASSERT_EQ(a[0], b[0]);
      for (size_t r = 1; r < a.size(); ++r)
        for (size_t c = 0; c < a[0].size(); ++c) {
          const std::string& column = a[0][c];
          if (column == "fvu" || column.rfind("normalized_", 0) == 0 || column.rfind("reconstructed_", 0) == 0) {
            const double want = std::stod(a[r][c]), got = std::stod(b[r][c]);
            EXPECT_NEAR(got, want, 1e-9 * std::abs(want) + 1e-12) << tag << " " << column << " row " << r;
          } else {
            EXPECT_EQ(b[r][c], a[r][c]) << tag << " " << column << " row " << r;
          }
        }
     }
    }
  }
  // An activation file (host batches, HostBatchUpload): the same weights too.
  sae::testing::write_activation_file(dir.str("acts.safetensors"), 16, std::vector<int64_t>(30, 12),
                                      [](int64_t t, int64_t j) { return std::sin(0.37 * t + 1.3 * j) + 0.01 * j; });
  TrainConfig file_off = sae::testing::tiny_story_run_config(dir.str("file_off"));
  file_off.data = dir.str("acts.safetensors");
  file_off.device_data = DeviceDataMode::Off;
  file_off.steps = 20;
  train(file_off);
  TrainConfig file_on = file_off;
  file_on.out = dir.str("file_on");
  file_on.device_data = DeviceDataMode::On;
  train(file_on);
  EXPECT_EQ(read_file(dir.str("file_off/sae/sae_weights.safetensors")),
            read_file(dir.str("file_on/sae/sae_weights.safetensors")));
}

// ---------------------------------------------------------------- CUDA

TEST(CudaDeviceData, TheGeneratorOnTheGpuMatchesTheCpuGenerator) {
  SKIP_WITHOUT_GPU();
  // What may differ: the noise term, where CUDA's double log, cos or sin differ from glibc's in a
  // last bit that survives the cast to float32; that float then goes through the same additions.
  // So: every value within 4 float32 ulps of the CPU's, and at most 1 in 1000 values not equal.
  std::vector<SyntheticOptions> sets = option_sets();
  sets.push_back(SyntheticOptions());  // the defaults: d 768, 4096 concepts
  sets.back().stories = 100;
  int set = 0;
  for (const SyntheticOptions& o : sets) {
    SyntheticSource source(o);
    ASSERT_TRUE(source.generates_on(Device::CUDA)) << set;
    std::vector<int64_t> story_run, shuffled;
    for (int64_t t = source.story_begin(5); t < source.story_begin(5) + source.story_length(5); ++t) story_run.push_back(t);
    Rng rng(set);
    for (int i = 0; i < 300; ++i) shuffled.push_back(static_cast<int64_t>(rng.below(source.num_tokens())));
    for (const auto& tokens : {story_run, shuffled}) {
      const std::vector<float> want = read_list(source, tokens);
      Tensor got = Tensor::full(Shape{int64_t(tokens.size()), o.d}, NAN, DType::F32, Device::CUDA);
      source.generate_on(tokens, got);
      const std::vector<double> g = got.to_vector();
      int64_t differ = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        const float w = want[i], v = static_cast<float>(g[i]);
        if (v == w) continue;
        ++differ;
        ASSERT_LE(std::abs(double(v) - double(w)), 4.0 * (std::nextafter(std::abs(w), INFINITY) - std::abs(w)))
            << "set " << set << " value " << i << ": " << v << " vs " << w;
      }
      EXPECT_LE(differ * 1000, int64_t(want.size())) << "set " << set << ": " << differ << " of " << want.size();
    }
    ++set;
  }
}

TEST(CudaDeviceData, NormalizeOnTheGpuMatchesTheCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(13);
  for (int64_t n : {int64_t(1), int64_t(218), int64_t(4096)}) {
    const Tensor raw = normal_tensor(Shape{n, 768}, 0.7, 2.5, rng);
    for (Normalization mode : {Normalization::Story, Normalization::Dataset, Normalization::None}) {
      if (n == 1 && mode == Normalization::Story) continue;
      Tensor cpu = raw.clone(), cpu_stats = Tensor::zeros(Shape{2}, DType::F64);
      Tensor gpu = raw.to(Device::CUDA), gpu_stats = Tensor::zeros(Shape{2}, DType::F64, Device::CUDA);
      BatchStats a, b;
      normalize_batch_on_device(cpu, cpu_stats, mode, 0.37, a);
      normalize_batch_on_device(gpu, gpu_stats, mode, 0.37, b);
      // float64 sums in another order: the statistics within 1e-12; the normalised values within
      // one float32 rounding (a shift or scale cast may land on the neighbouring float).
      const std::vector<double> s = cpu_stats.to_vector(), t = gpu_stats.to_vector();
      EXPECT_NEAR(t[0], s[0], 1e-12 * std::abs(s[0]) + 1e-15);
      EXPECT_NEAR(t[1], s[1], 1e-12 * s[1]);
      sae::testing::expect_close(gpu, cpu, sae::testing::Tolerance{1e-6, 1e-6}, cat("normalised ", n));
    }
  }
}

TEST(CudaDeviceData, GpuRunsWithDeviceDataFollowTheHostPath) {
  SKIP_WITHOUT_GPU();
  // --device-data on and off on the GPU: the same batches up to the generator's last-bit noise
  // differences (above), the same steps; losses within 1e-4 relative over 60 steps (the CPU-vs-GPU
  // trajectory tolerance of tests/sae/step/test_cuda_sae.cpp), final weights within 1e-4 (Frobenius).
  TempDir dir("cuda_device_data");
  for (int64_t batch : {int64_t(0), int64_t(64)}) {
    TrainConfig off = sae::testing::small_synthetic_config(dir.str(cat("off", batch)));
    off.batch_tokens = batch;
    off.normalize = batch == 0 ? Normalization::Story : Normalization::Dataset;
    off.features = 96;
    off.lr = 1e-3;
    off.l1 = 0.1;
    off.steps = 60;
    off.device = DeviceChoice::Cuda;
    off.device_data = DeviceDataMode::Off;
    const TrainResult a = train(off);
    TrainConfig on = off;
    on.out = dir.str(cat("on", batch));
    on.device_data = DeviceDataMode::On;
    const TrainResult b = train(on);
    EXPECT_NEAR(b.fvu, a.fvu, 1e-4 * a.fvu + 1e-9);
    EXPECT_NEAR(b.l0, a.l0, 0.01 * a.l0 + 0.05);
    sae::testing::expect_same_saved_weights(a.model_dir, b.model_dir, 1e-4);
  }
}
