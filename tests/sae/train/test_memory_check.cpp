// The host-memory refusal (sae/train/memory_check.h): the lower bound's arithmetic, the refusal's
// line, what the machine says it has, cgroup limits, and sae_train refused before it makes anything:
// under ulimit -v (the limit read from RLIMIT_AS; not under AddressSanitizer, whose shadow needs
// terabytes of address space) and with the test's stand-in for the machine's memory, while the same
// run with enough memory trains.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "sae/train/feature_stats.h"
#include "sae/train/memory_check.h"
#include "tests/util/errors.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

// AddressSanitizer (GCC defines __SANITIZE_ADDRESS__, clang 14 answers __has_feature only).
#if defined(__SANITIZE_ADDRESS__)
#define SAE_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SAE_UNDER_ASAN 1
#endif
#endif

using namespace sae;
using sae::testing::error_of;
using sae::testing::run_program;
using sae::testing::TempDir;
namespace fs = std::filesystem;

TEST(MemoryCheck, TheLowerBoundIsTheWeightsAdamAndOnePreActivationArray) {
  const SaeFootprint s{256, 256, 65536, 1024, 4};
  const double parameters = 256.0 * 65536 * 2 + 65536 + 256;
  EXPECT_DOUBLE_EQ(s.lower_bound(), 12 * parameters + 1024.0 * 65536 * 4);
  const SaeFootprint transcoder{64, 32, 1000, 10, 2};  // bf16 cells
  EXPECT_DOUBLE_EQ(transcoder.lower_bound(), 12 * (64.0 * 1000 + 1000 * 32 + 1000 + 32) + 10.0 * 1000 * 2);
}

TEST(MemoryCheck, ARunThatCannotFitIsRefusedInOneLine) {
  const std::vector<SaeFootprint> one = {{256, 256, 65536, 1024, 4}};
  EXPECT_NO_THROW(check_host_memory(one, HostMemory{1e9, "test"}));
  EXPECT_NO_THROW(check_host_memory(one, HostMemory{-1, "unknown"}));  // unknown: nothing refused
  try {
    check_host_memory(one, HostMemory{5e8, "test"});
    FAIL() << "not refused";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "not enough memory for this run: the SAE (F 65536 x d 256) needs at least 672 MB (weights "
                           "and Adam's two moments 404 MB, 1024 x 65536 pre-activations 269 MB) and this process can "
                           "get 500 MB (test): lower --features (--expansion-factor) or --batch, or train on a GPU "
                           "(--device cuda)");
    std::vector<SaeFootprint> topk = one;  // a topk SAE that could hold fewer rows is told how
    topk[0].fewer_rows = true;
    EXPECT_NE(error_of([&] { check_host_memory(topk, HostMemory{5e8, "test"}); }).find("or --batch (topk: --encoder-chunk), or"),
              std::string::npos);
  }
  // With feature statistics: counted, named, and the option that drops them said.
  std::vector<SaeFootprint> stats = one;
  stats[0].stats_bytes = 151.8e6;
  EXPECT_EQ(stats[0].lower_bound(), one[0].lower_bound() + 151.8e6);
  EXPECT_STREQ(error_of([&] { check_host_memory(stats, HostMemory{5e8, "test"}); }).c_str(),
               "not enough memory for this run: the SAE (F 65536 x d 256) needs at least 824 MB (weights and Adam's "
               "two moments 404 MB, 1024 x 65536 pre-activations 269 MB, feature statistics 152 MB) and this process "
               "can get 500 MB (test): lower --features (--expansion-factor) or --batch, gather no feature statistics "
               "(--feature-stats-steps 0), or train on a GPU (--device cuda)");
  // Several SAEs: their sums.
  const std::vector<SaeFootprint> two = {{256, 256, 65536, 1024, 4}, {256, 256, 65536, 1024, 4}};
  EXPECT_NO_THROW(check_host_memory(two, HostMemory{1.4e9, "test"}));
  EXPECT_THROW(check_host_memory(two, HostMemory{1.3e9, "test"}), Error);
}

TEST(MemoryCheck, FeatureStatisticsBytesAreTheirBuffers) {
  // What FeatureStats allocates (sae/step/sae_kernels.h FeatureTopLists, FeatureCandidates, the
  // histogram), tensor by tensor: per feature and rank value 4, key 8, slot 4, story 8, position 8,
  // step 8, pending row 4, W = 2C + 1 token ids 4 W and values 4 W, candidate value, row and group
  // 4 each; per feature count 4, threshold 4, candidates' count 4 and 48 float64 histogram bins.
  for (const FeatureStatsOptions o : {FeatureStatsOptions{10, 8}, FeatureStatsOptions{3, 0}}) {
    const double w = 2.0 * o.context + 1;
    const double per_rank = 4 + 8 + 4 + 8 + 8 + 8 + 4 + 4 * w + 4 * w + 3 * 4;
    const double per_feature = o.k * per_rank + 3 * 4 + 48 * 8;
    EXPECT_EQ(feature_stats_bytes(1000, o), 1000 * per_feature) << o.k << " " << o.context;
  }
  // A million latents at the defaults: 2.4 GB (a 2-step TopK run at 2^20 x d 768 held 2.6 GB more
  // through its steps with statistics on than off, bench/RESULTS.md).
  EXPECT_NEAR(feature_stats_bytes(int64_t{1} << 20, FeatureStatsOptions{}), 2.43e9, 0.01e9);
}

TEST(MemoryCheck, ATopKWithoutEncoderChunkGetsTheRowsThatFit) {
  // Weights and Adam: 12 x (256 x 65536 x 2 + 65536 + 256) = 403,492,608 bytes; a row of
  // pre-activations 65536 x 4 = 262,144 bytes; the whole batch's 1024 rows 268,435,456.
  const SaeFootprint topk{256, 256, 65536, 1024, 4};
  const double weights = 12.0 * (256.0 * 65536 * 2 + 65536 + 256);
  // Counted as the lower bound does (3 copies), down to 1 row.
  auto rows = [&](std::vector<SaeFootprint> saes, std::vector<bool> chunkable, double bytes) {
    return pre_activation_rows_that_fit(saes, chunkable, ChunkBudget{bytes, 3, 1, 0});
  };
  EXPECT_EQ(rows({topk}, {true}, -1), std::vector<int64_t>{1024});                     // unknown: the whole batch
  EXPECT_EQ(rows({topk}, {true}, weights + 1024 * 262144.0), std::vector<int64_t>{1024});  // it fits
  EXPECT_EQ(rows({topk}, {true}, weights + 1023 * 262144.0), std::vector<int64_t>{1023});
  EXPECT_EQ(rows({topk}, {true}, weights + 100.5 * 262144.0), std::vector<int64_t>{100});
  EXPECT_EQ(rows({topk}, {false}, weights + 100.5 * 262144.0), std::vector<int64_t>{1024});  // not chunkable
  EXPECT_EQ(rows({topk}, {true}, weights / 2), std::vector<int64_t>{1});                 // nothing fits: 1 (refused later)
  // Two SAEs, one chunkable: the other's whole share counts first; one standard SAE of F 1000 x d 256.
  const SaeFootprint standard{256, 256, 1000, 1024, 4};
  const double other = standard.lower_bound();
  EXPECT_EQ(rows({topk, standard}, {true, false}, weights + other + 300.9 * 262144.0),
            (std::vector<int64_t>{300, 1024}));
  // Two chunkable SAEs get one row count: what fits of their rows side by side.
  EXPECT_EQ(rows({topk, topk}, {true, true}, 2 * weights + 200.0 * 2 * 262144.0), (std::vector<int64_t>{200, 200}));
  // sae_train's CPU budget: 3.5 copies and 1 GB for the rest of the process, at least 256 rows (or
  // the batch's, when fewer).
  const double copies = 14.0 * (256.0 * 65536 * 2 + 65536 + 256), rest = 1e9;
  EXPECT_EQ(chunk_budget_need(topk, 10, ChunkBudget{}), copies + 10 * 262144.0);
  EXPECT_EQ(pre_activation_rows_that_fit({topk}, {true}, ChunkBudget{rest + copies + 1024 * 262144.0}),
            std::vector<int64_t>{1024});
  EXPECT_EQ(pre_activation_rows_that_fit({topk}, {true}, ChunkBudget{rest + copies + 500.5 * 262144.0}),
            std::vector<int64_t>{500});
  EXPECT_EQ(pre_activation_rows_that_fit({topk}, {true}, ChunkBudget{copies + 500.5 * 262144.0}),
            std::vector<int64_t>{256});  // the 1 GB left out: 3314 rows short, so the floor
  EXPECT_EQ(pre_activation_rows_that_fit({topk}, {true}, ChunkBudget{rest + copies + 100.5 * 262144.0}),
            std::vector<int64_t>{256});
  // A step that keeps every gradient (--max-grad-norm, replicas, --apply-b-dec-to-input) holds one
  // more copy: 4.5 x 4 bytes x the parameters.
  SaeFootprint every_gradient = topk;
  every_gradient.gradient_copies = 1;
  EXPECT_EQ(chunk_budget_need(every_gradient, 10, ChunkBudget{}), 18.0 * (256.0 * 65536 * 2 + 65536 + 256) + 10 * 262144.0);
  EXPECT_EQ(pre_activation_rows_that_fit({every_gradient}, {true}, ChunkBudget{rest + copies + 1024 * 262144.0}),
            std::vector<int64_t>{510});  // the whole batch fitted without the gradients' copy: 1024 rows less
                                         // 4 x 33,620,224 / 262,144 = 513.0
  SaeFootprint short_batch = topk;
  short_batch.tokens = 100;
  EXPECT_EQ(pre_activation_rows_that_fit({short_batch}, {true}, ChunkBudget{copies / 2}), std::vector<int64_t>{100});
  // The measured case (bench/RESULTS.md 2026-12-07): d 768, F 2^19, 4096 tokens on a machine whose
  // process can get 24.7 GB: the whole batch (8.6 GB of pre-activations beside 11.3 GB for 3.5
  // copies and 1 GB; the run peaked at 18.6 GB) where 8 copies had chosen 256-row chunks. At bf16 (4
  // copies, 2-byte cells) too: it peaked at 16.2 GB.
  const SaeFootprint large{768, 768, 524288, 4096, 4};
  EXPECT_EQ(pre_activation_rows_that_fit({large}, {true}, ChunkBudget{0.9 * 24.7e9}), std::vector<int64_t>{4096});
  EXPECT_EQ(pre_activation_rows_that_fit({large}, {true}, ChunkBudget{0.9 * 24.7e9, 8}), std::vector<int64_t>{256});
  const SaeFootprint large_bf16{768, 768, 524288, 4096, 2};
  EXPECT_EQ(pre_activation_rows_that_fit({large_bf16}, {true}, ChunkBudget{0.9 * 24.7e9, 4}), std::vector<int64_t>{4096});
  // At 2^20 latents the parameters alone take 3.5 x 6.4 GB: the floor of 256 rows (the run measured
  // 20.9 GB; check_host_memory's lower bound lets it through).
  const SaeFootprint million{768, 768, 1048576, 4096, 4};
  EXPECT_EQ(pre_activation_rows_that_fit({million}, {true}, ChunkBudget{0.9 * 24.7e9}), std::vector<int64_t>{256});
  EXPECT_NO_THROW(check_host_memory({SaeFootprint{768, 768, 1048576, 256, 4}}, HostMemory{24.7e9, "test"}));
}

TEST(MemoryCheck, TheMachineSaysWhatItHas) {
  const HostMemory m = available_host_memory();
  ASSERT_GT(m.bytes, 0) << m.source;
  double total = 0;
  std::ifstream in("/proc/meminfo");
  for (std::string name; in >> name;) {
    double kb = 0;
    in >> kb;
    if (name == "MemTotal:" || name == "SwapTotal:") total += kb * 1024;
    std::string unit;
    std::getline(in, unit);
  }
  EXPECT_LE(m.bytes, total);
}

TEST(MemoryCheck, SaeTrainIsRefusedBeforeItMakesAnything) {
  TempDir dir("memory_check");
  const std::string run = " --synthetic-d 256 --features 16384 --batch 1024 --normalize dataset --steps 2 "
                          "--progress none --device cpu --feature-stats-steps 0 --out ";
  // The test's stand-in for the machine: refused, and nothing left behind.
  auto refused = run_program("sae_train", run + dir.str("a"), dir, "SAE_TEST_AVAILABLE_MEMORY=150000000");
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(refused.err, "sae_train: error: not enough memory for this run: the SAE (F 16384 x d 256) needs at least "
                         "168 MB (weights and Adam's two moments 101 MB, 1024 x 16384 pre-activations 68 MB) and "
                         "this process can get 150 MB (SAE_TEST_AVAILABLE_MEMORY): lower --features "
                         "(--expansion-factor) or --batch, or train on a GPU (--device cuda)\n");
  EXPECT_FALSE(fs::exists(dir.str("a")));
  // Gathering feature statistics (the default): 16384 x (10 x 192 + 396) bytes more, and said so.
  const std::string with_stats = " --synthetic-d 256 --features 16384 --batch 1024 --normalize dataset --steps 2 "
                                 "--progress none --device cpu --out ";
  // They are made before the count, so what the process could get is what is left plus their 38 MB.
  auto stats = run_program("sae_train", with_stats + dir.str("s"), dir, "SAE_TEST_AVAILABLE_MEMORY=160000000");
  EXPECT_EQ(stats.exit_code, 1);
  EXPECT_NE(stats.err.find("needs at least 206 MB (weights and Adam's two moments 101 MB, 1024 x 16384 pre-activations "
                           "68 MB, feature statistics 38 MB) and this process can get 198 MB (SAE_TEST_AVAILABLE_MEMORY, "
                           "and what the run holds already)"),
            std::string::npos)
      << stats.err;
  auto stats_fit = run_program("sae_train", with_stats + dir.str("t"), dir, "SAE_TEST_AVAILABLE_MEMORY=170000000");
  EXPECT_EQ(stats_fit.exit_code, 0) << stats_fit.err;
  EXPECT_NE(stats.err.find("gather no feature statistics (--feature-stats-steps 0)"), std::string::npos) << stats.err;
  auto fits = run_program("sae_train", run + dir.str("b"), dir, "SAE_TEST_AVAILABLE_MEMORY=200000000");
  EXPECT_EQ(fits.exit_code, 0) << fits.err;
  // Its resume holds the parameters and Adam's moments (101 MB) when it counts: with 100 MB left it
  // could get 201 MB, and goes on (a resume at 2^20 latents was refused so, holding its own 19.3 GB).
  auto resumed = run_program("sae_train", "--resume " + dir.str("b") + " --steps 3 --progress none", dir,
                             "SAE_TEST_AVAILABLE_MEMORY=100000000");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  auto fresh = run_program("sae_train", run + dir.str("b2"), dir, "SAE_TEST_AVAILABLE_MEMORY=100000000");
  EXPECT_EQ(fresh.exit_code, 1) << "a fresh run holds nothing yet";
  // A topk SAE holds --encoder-chunk tokens' pre-activations at once: given the whole batch, it is
  // refused as above (and told of --encoder-chunk); given 64, it fits; left at 0, it counts 1 GB, 3.5
  // copies of its 8,405,248 parameters (118 MB) and the whole batch's 67,108,864 bytes: 1.2 GB, more
  // than 90% of the 150 MB, and no row fits beside them, so it takes the least, 256 rows.
  const std::string topk = " --architecture topk --k 8" + run;
  auto whole = run_program("sae_train", topk + dir.str("c") + " --encoder-chunk 1024", dir,
                           "SAE_TEST_AVAILABLE_MEMORY=150000000");
  EXPECT_EQ(whole.exit_code, 1);
  EXPECT_NE(whole.err.find("1024 x 16384 pre-activations 68 MB) and this process can get 150 MB "
                           "(SAE_TEST_AVAILABLE_MEMORY): lower --features (--expansion-factor) or --batch (topk: "
                           "--encoder-chunk), or"),
            std::string::npos) << whole.err;
  auto chunked = run_program("sae_train", topk + dir.str("d") + " --encoder-chunk 64", dir,
                             "SAE_TEST_AVAILABLE_MEMORY=150000000");
  EXPECT_EQ(chunked.exit_code, 0) << chunked.err;
  EXPECT_EQ(chunked.out.find("chunks of"), std::string::npos) << "given, not chosen: " << chunked.out;
  auto chosen = run_program("sae_train", topk + dir.str("e"), dir, "SAE_TEST_AVAILABLE_MEMORY=150000000");
  EXPECT_EQ(chosen.exit_code, 0) << chosen.err;
  EXPECT_NE(chosen.out.find("  the encoder's pre-activations in chunks of 256 of the batch's 1024 tokens "
                            "(--encoder-chunk 0: with the whole batch's the run would need about 1.2 GB, more than "
                            "90% of the 150 MB this process can get)\n"),
            std::string::npos) << chosen.out;
  auto roomy = run_program("sae_train", topk + dir.str("f"), dir, "SAE_TEST_AVAILABLE_MEMORY=1400000000");
  EXPECT_EQ(roomy.exit_code, 0) << roomy.err;
  EXPECT_EQ(roomy.out.find("chunks of"), std::string::npos) << roomy.out;
}

TEST(MemoryCheck, UlimitVIsTheLimit) {
#ifdef SAE_UNDER_ASAN
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of address space for its shadow: no ulimit -v under it";
#endif
  // ulimit -v: the limit this process runs under, less what it has mapped already.
  TempDir dir("memory_ulimit");
  const std::string limited = std::string("ulimit -v 3000000; ") + SAE_BIN_DIR + "/sae_train --synthetic-d 256 "
                              "--features 262144 --batch 2048 --normalize dataset --steps 2 --progress none --device "
                              "cpu --feature-stats-steps 0 --threads 1 --out " + dir.str("c") + " 2> " + dir.str("c.err");
  const int status = std::system(("bash -c " + sae::testing::shell_quote(limited)).c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  const std::string err = sae::testing::read_file(dir.str("c.err"));
  EXPECT_NE(err.find("needs at least 3.8 GB"), std::string::npos) << err;
  EXPECT_NE(err.find("(ulimit -v (RLIMIT_AS) less this process's address space)"), std::string::npos) << err;
}

TEST(MemoryCheck, CgroupLimitsAreReadUpTheTreeLessTheirReclaimablePages) {
  TempDir dir("memory_cgroup");
  auto write = [&](const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(dir.str(path)).parent_path());
    std::ofstream(dir.str(path)) << text;
  };
  // v2: /a limits to 1e9 with 6e8 in use, 1e8 of it inactive page cache; /a/b has no limit of its own.
  write("v2/a/memory.max", "1000000000\n");
  write("v2/a/memory.current", "600000000\n");
  write("v2/a/memory.stat", "anon 500000000\nfile 100000000\ninactive_file 100000000\n");
  write("v2/a/b/memory.max", "max\n");
  write("v2/a/b/memory.current", "300000000\n");
  write("v2/memory.max", "max\n");
  EXPECT_DOUBLE_EQ(cgroup_headroom("0::/a/b\n", dir.str("v2")), 5e8);
  // A tighter limit below wins.
  write("v2/a/b/memory.max", "400000000\n");
  EXPECT_DOUBLE_EQ(cgroup_headroom("0::/a/b\n", dir.str("v2")), 1e8);
  // v1: the memory controller's line among others; its "no limit" is 2^63 rounded down to pages.
  write("v1/memory/job/memory.limit_in_bytes", "200000000\n");
  write("v1/memory/job/memory.usage_in_bytes", "50000000\n");
  write("v1/memory/job/memory.stat", "cache 0\ntotal_inactive_file 10000000\n");
  write("v1/memory/memory.limit_in_bytes", "9223372036854771712\n");
  write("v1/memory/memory.usage_in_bytes", "9000000000\n");
  EXPECT_DOUBLE_EQ(cgroup_headroom("12:cpu,cpuacct:/job\n4:memory:/job\n", dir.str("v1")), 1.6e8);
  EXPECT_DOUBLE_EQ(cgroup_headroom("0::/\n", dir.str("none")), -1);  // nothing there: no limit
}

// A chunk of token batches from text holds --text-chunk-tokens tokens' activations: a value whose
// chunk is more than half of what the process can get is refused before the model runs (it ran the
// model over the whole chunk, then ran out of memory).
TEST(MemoryCheck, ATextChunkThatCannotFitIsRefused) {
  TempDir dir("memory_check_text_chunk");
  const std::string run = " --model " + sae::testing::ref_path("text_train/model") + " --text " +
                          sae::testing::ref_path("text_train/stories.txt") +
                          " --features 16 --batch 32 --normalize dataset --steps 2 --progress none --device cpu"
                          " --feature-stats-steps 0 --text-chunk-tokens ";
  // 20000 tokens x 32 floats x 4 bytes = 2.56 MB (printed in whole MB: 3 MB) against the 4 MB stand-in.
  auto refused = run_program("sae_train", run + "20000 --out " + dir.str("a"), dir, "SAE_TEST_AVAILABLE_MEMORY=4000000");
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_EQ(refused.err, "sae_train: error: --text-chunk-tokens 20000 holds that many tokens' activations (32 float32 "
                         "each: 3 MB), more than half of the 4 MB this process can get (SAE_TEST_AVAILABLE_MEMORY): "
                         "lower --text-chunk-tokens (see --help)\n");
  EXPECT_FALSE(fs::exists(dir.str("a")));
  auto fits = run_program("sae_train", run + "200 --out " + dir.str("b"), dir);
  EXPECT_EQ(fits.exit_code, 0) << fits.err;
}
