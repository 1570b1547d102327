// The feature browser (sae/features/browser.h, sae_browser): its data against independent
// computations (densities from the statistics, planted-concept matches by brute-force cosines,
// promoted tokens by brute-force dot products), escaping of hostile text, the program's errors, and
// the page rendered by headless Chromium (Debian's chromium, installed by scripts/install-deps.sh):
// a synthetic run, a text run on the fixture model, and a page whose token text is hostile markup.
// The rendered DOM must hold every feature row, the chosen (or searched) feature's panel, shaded
// tokens, and the script's completion marker, with no error; screenshots are kept in
// build/browser_test/. Without chromium those tests skip, saying so (fail with SAE_REQUIRE_CHROMIUM=1).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <regex>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "lm/gpt_neo.h"
#include "sae/data/synthetic.h"
#include "sae/features/browser.h"
#include "sae/train/checkpoint.h"
#include "sae/train/trainer.h"
#include "tensor/rng.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string ref(const std::string& name) { return sae::testing::ref_path("text_train/" + name); }

TrainConfig synthetic_run(const std::string& out) {
  TrainConfig c = sae::testing::small_synthetic_config(out);
  c.batch_tokens = 0;  // stories: the neighbours of each top activation are known
  c.normalize = Normalization::Story;
  c.features = 48;
  c.lr = 3e-3;
  c.l1 = 0.5;
  c.steps = 60;
  c.checkpoint_every = 1000;
  c.feature_stats_steps = 40;
  return c;
}

TrainConfig text_run(const std::string& out) {
  TrainConfig c;
  c.data = "text";
  c.model = ref("model");
  c.text = ref("stories.txt");
  c.features = 40;
  c.lr = 3e-3;
  c.l1 = 0.5;
  c.steps = 20;
  c.progress = ProgressMode::None;
  c.device = DeviceChoice::Cpu;
  c.feature_stats_steps = 20;
  c.out = out;
  return c;
}

BrowserOptions options_for(const std::string& run) {
  BrowserOptions o;
  o.run = run;
  return o;
}

int64_t count(const std::string& text, const std::string& what) {
  int64_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::string find_chromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
    if (std::system(cat("command -v ", name, " > /dev/null 2>&1").c_str()) == 0) return name;
  return "";
}

bool chromium_required() {
  const char* v = std::getenv("SAE_REQUIRE_CHROMIUM");
  return v && std::string(v) == "1";
}

// Without chromium the test skips, saying so; with SAE_REQUIRE_CHROMIUM=1 in the environment it
// fails instead (as SAE_REQUIRE_GPU=1 does for the CUDA tests, tests/util/gpu.h).
#define SKIP_WITHOUT_CHROMIUM(browser)                                                                  \
  const std::string browser = find_chromium();                                                         \
  if (browser.empty()) {                                                                                \
    if (chromium_required()) FAIL() << "SAE_REQUIRE_CHROMIUM=1 but chromium is not installed";         \
    GTEST_SKIP() << "chromium is not installed (scripts/install-deps.sh installs Debian's chromium): the " \
                    "rendered page is not checked";                                                    \
  }

// The DOM Chromium has after running the page's script, and a 1200x900 screenshot kept under
// build/browser_test/<name>.png.
std::string render(const std::string& browser, const std::string& page, const std::string& fragment,
                   const std::string& name, const TempDir& scratch) {
  const std::string url = "file://" + fs::absolute(page).string() + fragment;
  const std::string flags = cat(" --headless --disable-gpu --no-sandbox --hide-scrollbars --user-data-dir=",
                                scratch.str("profile-" + name), " --virtual-time-budget=10000 ");
  const std::string dom_file = scratch.str(name + ".dom.html");
  const int dom = std::system(cat("timeout 120 ", browser, flags, "--dump-dom '", url, "' > ", dom_file, " 2> ",
                                  scratch.str(name + ".err"))
                                  .c_str());
  EXPECT_EQ(dom, 0) << "chromium --dump-dom failed: " << read_file(scratch.str(name + ".err"));
  const fs::path shots = fs::path(SAE_BIN_DIR).parent_path() / "browser_test";
  fs::create_directories(shots);
  const std::string png = (shots / (name + ".png")).string();
  fs::remove(png);
  const int shot = std::system(cat("timeout 120 ", browser, flags, "--window-size=1200,900 --screenshot=", png, " '",
                                   url, "' > /dev/null 2>&1")
                                   .c_str());
  EXPECT_EQ(shot, 0);
  EXPECT_TRUE(fs::exists(png) && fs::file_size(png) > 10000) << png;
  return read_file(dom_file);
}

// What every rendered page must hold: the completion marker, no error, all feature rows, the
// chosen feature's panel, and tokens shaded by their values.
void expect_rendered(const std::string& dom, int64_t features, int64_t selected, const std::string& what) {
  EXPECT_EQ(dom.find("id=\"browser-error\""), std::string::npos) << what << ": the page reported an error";
  EXPECT_NE(dom.find(cat("id=\"browser-ready\" data-features=\"", features, "\" data-selected=\"", selected, "\"")),
            std::string::npos)
      << what << ": no completion marker for feature " << selected;
  EXPECT_EQ(count(dom, "class=\"feature-row"), features) << what;
  EXPECT_NE(dom.find(cat("id=\"panel\" data-feature=\"", selected, "\"")), std::string::npos) << what;
  EXPECT_NE(dom.find(cat("<h2>Feature #", selected, "</h2>")), std::string::npos) << what;
  EXPECT_GT(count(dom, "background-color: rgba(255, 140, 0"), 0) << what << ": no shaded tokens";
  EXPECT_NE(dom.find("id=\"histogram\""), std::string::npos) << what;
}

}  // namespace

TEST(Browser, JsonForScriptEscapesWhatCouldEndTheScript) {
  Json data = Json::object();
  data["a"] = "</script><script>alert(1)</script> & \xe2\x80\xa8 \xe2\x80\xa9";
  const std::string text = json_for_script(data.dump());
  EXPECT_EQ(text.find('<'), std::string::npos);
  EXPECT_EQ(text.find('>'), std::string::npos);
  EXPECT_EQ(text.find('&'), std::string::npos);
  EXPECT_EQ(text.find("\xe2\x80\xa8"), std::string::npos);
  EXPECT_EQ(Json::parse(text), data);  // the same data once parsed
  // Each feature's text is escaped as it is written, and the pieces make one JSON value.
  const std::string page = browser_html(BrowserData{data, {"{\"x\":\"</script>\"}", "{\"y\":\"\xe2\x80\xa9\"}"}});
  EXPECT_EQ(count(page, "</script>"), 2);  // the page's own two
  EXPECT_EQ(page.find("\xe2\x80\xa9"), std::string::npos);
  const size_t begin = page.find("{\"a\""), end = page.find("</script>", begin);
  ASSERT_NE(begin, std::string::npos);
  Json whole = data;
  whole["features"] = Json::parse("[{\"x\":\"</script>\"},{\"y\":\"\xe2\x80\xa9\"}]");
  EXPECT_EQ(Json::parse(page.substr(begin, end - begin)), whole);
}

TEST(Browser, PromotedTokensAreTheLargestAndSmallestDotProducts) {
  Rng rng(4);
  const int64_t features = 7, d = 5, vocab = 300;
  std::vector<double> dec(features * d), unembed(vocab * d);
  for (double& x : dec) x = rng.normal();
  for (double& x : unembed) x = std::round(rng.normal() * 4) / 4;  // coarse: ties among the logits
  const PromotedTokens got = promoted_tokens(Tensor::from_vector(dec, Shape{features, d}),
                                             Tensor::from_vector(unembed, Shape{vocab, d}), 6);
  ASSERT_EQ(got.promoted.size(), size_t(features));
  for (int64_t i = 0; i < features; ++i) {
    std::vector<std::pair<double, int64_t>> logits;
    for (int64_t v = 0; v < vocab; ++v) {
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += float(dec[i * d + j]) * float(unembed[v * d + j]);
      logits.push_back({dot, v});
    }
    auto check = [&](const std::vector<TokenLogit>& list, bool largest) {
      ASSERT_EQ(list.size(), 6u);
      double previous = largest ? INFINITY : -INFINITY;
      for (size_t r = 0; r < 6; ++r) {
        const int64_t id = list.at(r).id;
        const double value = logits[id].first;
        EXPECT_NEAR(list.at(r).logit, value, 1e-3 * (1 + std::abs(value)));
        EXPECT_TRUE(largest ? value <= previous + 1e-9 : value >= previous - 1e-9);
        previous = value;
        // Nothing left out beats it: at most r others are strictly better.
        int64_t better = 0;
        for (const auto& [other, v] : logits) better += largest ? other > value + 1e-9 : other < value - 1e-9;
        EXPECT_LE(better, static_cast<int64_t>(r)) << "feature " << i << " rank " << r;
      }
    };
    check(got.promoted.at(i), true);
    check(got.suppressed.at(i), false);
  }
  // A zero row moves no logit: it promotes and suppresses nothing (it listed tokens 0-9 at 0). A row
  // whose logits are all above 0 still suppresses its smallest (the logits are not centred: a
  // constant per feature says nothing).
  std::vector<double> rows(2 * d, 0.0);
  rows[d] = 1;  // row 1 along the first axis
  std::vector<double> shifted(vocab * d, 0.0);
  for (int64_t v = 0; v < vocab; ++v) shifted[v * d] = 5 + 0.01 * static_cast<double>(v % 7);
  const PromotedTokens got2 = promoted_tokens(Tensor::from_vector(rows, Shape{2, d}), Tensor::from_vector(shifted, Shape{vocab, d}), 6);
  EXPECT_EQ(got2.promoted.at(0).size(), 0u);
  EXPECT_EQ(got2.suppressed.at(0).size(), 0u);
  ASSERT_EQ(got2.promoted.at(1).size(), 6u);
  ASSERT_EQ(got2.suppressed.at(1).size(), 6u);
  EXPECT_EQ(got2.suppressed.at(1).at(0).id, 0);  // 5.00, the smallest
  EXPECT_EQ(got2.promoted.at(1).at(0).id, 6);    // 5.06, the largest
}

TEST(Browser, DataOfASyntheticRun) {
  TempDir dir("browser_synthetic_data");
  const TrainConfig c = synthetic_run(dir.str("run"));
  train(c);
  const BrowserData data = browser_data(options_for(dir.str("run")));
  const FeatureStats stats = FeatureStats::load(dir.str("run/sae/feature_stats.safetensors"));
  const Checkpoint sae = load_checkpoint(dir.str("run/sae"), Device::CPU, false);
  const SyntheticSource source(c.synthetic);
  const std::vector<double> concepts = source.concepts().to_vector(), dec = sae.params.W_dec.to_vector();
  const int64_t d = c.synthetic.d, n_concepts = c.synthetic.concepts;
  ASSERT_EQ(data.features.size(), size_t(c.features));
  EXPECT_TRUE(data.head.at("has_concepts").as_bool());
  EXPECT_FALSE(data.head.at("has_tokens").as_bool());
  const std::vector<double> counts = stats.counts();
  for (int64_t i = 0; i < c.features; ++i) {
    const Json f = data.feature(i);
    EXPECT_EQ(f.at("n").as_number(), counts[i]);
    EXPECT_NEAR(f.at("d").as_number(), counts[i] / double(stats.tokens()), 1e-3 * counts[i] / double(stats.tokens()));
    EXPECT_EQ(f.at("top").size(), size_t(stats.top_count(i)));
    // The best concept by brute-force cosine.
    double norm = 0;
    for (int64_t j = 0; j < d; ++j) norm += dec[i * d + j] * dec[i * d + j];
    double best = -2;
    int64_t best_concept = -1;
    for (int64_t k = 0; k < n_concepts; ++k) {
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += concepts[k * d + j] * dec[i * d + j];
      if (dot / std::sqrt(norm) > best) {
        best = dot / std::sqrt(norm);
        best_concept = k;
      }
    }
    EXPECT_NEAR(f.at("c").at(1).as_number(), best, 1e-3) << i;
    if (f.at("c").at(0).as_int() != best_concept) {  // only a near-tie may pick another
      double other = 0;
      const int64_t k = f.at("c").at(0).as_int();
      for (int64_t j = 0; j < d; ++j) other += concepts[k * d + j] * dec[i * d + j];
      EXPECT_NEAR(other / std::sqrt(norm), best, 1e-5) << i;
    }
  }
}

// An SAE folder (no run's config.json) with statistics sae_features gathered: the data is what the
// statistics say (it read "(unknown)"); their text is shown escaped, as every other field from a file.
TEST(Browser, TheDataOfStatisticsSaeFeaturesGathered) {
  TempDir dir("browser_gathered_data");
  train(synthetic_run(dir.str("run")));
  FeatureStats stats = FeatureStats::load(dir.str("run/sae/feature_stats.safetensors"));
  Json data = Json::object();
  data["data"] = "acts\u202e.npy";
  stats.source()["data"] = data;
  stats.source()["gathered_by"] = "sae_features\u202e";
  stats.save(dir.str("stats.safetensors"));
  BrowserOptions o = options_for(dir.str("run/sae"));
  o.stats = dir.str("stats.safetensors");
  const Json about = browser_data(o).head.at("about");
  EXPECT_EQ(about.at("data").as_string(), "acts<U+202E>.npy");
  EXPECT_EQ(about.at("gathered_by").as_string(), "sae_features<U+202E>");
  Json text = Json::object();
  text["text"] = "stories.txt";
  text["model"] = "tiny";
  text["hook_name"] = "blocks.2.hook_resid_pre";
  stats.source()["data"] = text;
  stats.save(dir.str("stats.safetensors"));
  EXPECT_EQ(browser_data(o).head.at("about").at("data").as_string(), "stories.txt through tiny at blocks.2.hook_resid_pre");
  // The run's folder (its config.json says synthetic) with those statistics: theirs, not the run's.
  BrowserOptions run = options_for(dir.str("run"));
  run.stats = dir.str("stats.safetensors");
  EXPECT_EQ(browser_data(run).head.at("about").at("data").as_string(), "stories.txt through tiny at blocks.2.hook_resid_pre");
  EXPECT_EQ(browser_data(options_for(dir.str("run"))).head.at("about").at("data").as_string(), "synthetic");
  // A crosscoder's (two models, its hooks).
  text.erase("hook_name");
  text["model_b"] = "tuned";
  Json hooks = Json::array();
  hooks.push_back("blocks.0.hook_resid_post");
  hooks.push_back("blocks.1.hook_resid_post");
  text["crosscoder_hooks"] = hooks;
  stats.source()["data"] = text;
  stats.save(dir.str("stats.safetensors"));
  EXPECT_EQ(browser_data(o).head.at("about").at("data").as_string(),
            "stories.txt through tiny and tuned at blocks.0.hook_resid_post, blocks.1.hook_resid_post");
}

TEST(Browser, ProgramErrors) {
  TempDir dir("browser_errors");
  TrainConfig c = synthetic_run(dir.str("run"));
  c.steps = 5;
  c.feature_stats_steps = 0;
  train(c);
  const std::tuple<std::string, int, std::string> cases[] = {
      {"", 2, "--run DIR is required"},
      {" --run " + dir.str("run") + " --top-tokens 0", 2, "--top-tokens"},
      {" --run " + dir.str("nowhere"), 1, "no such run folder"},
      {" --run " + dir.str("run"), 1, "no feature statistics"},
      {" --run " + dir.str("run") + " --stats " + dir.str("run/sae/cfg.json"), 1, "cfg.json"},
      {" --run " + dir.str("run") + " --model " + dir.str("gone"), 1, "gone"},
      {" --run " + dir.str("run") + " --hook blocks.9.hook_nope", 2, "hook_nope"},  // no model: still a bad name
      {" --run " + dir.str("unfinished"), 1, "the run has no final SAE yet"},  // had said "missing cfg.json"
  };
  fs::create_directories(dir.str("unfinished/checkpoints"));
  fs::copy_file(dir.str("run/config.json"), dir.str("unfinished/config.json"));
  for (const auto& [args, code, words] : cases) {
    const sae::testing::CommandResult r = run_binary("sae_browser", args, dir);
    EXPECT_EQ(r.exit_code, code) << args << ": " << r.err;
    EXPECT_NE(r.err.find(words), std::string::npos) << args << ": " << r.err;
  }
}

// Token ids named by another model's tokenizer, tokens promoted by its unembedding: the page is made
// and the notes say whose weights these are not (as sae_eval, sae_steer and sae_features warn).
TEST(Browser, AModelWithOtherWeightsThanTheRunsIsSaid) {
  TempDir dir("browser_other_model");
  TrainConfig c = text_run(dir.str("run"));
  c.steps = 4;
  train(c);
  fs::copy(ref("model"), dir.str("other"), fs::copy_options::recursive);
  {  // the last float's lowest mantissa byte: still a finite weight, another file
    std::fstream f(dir.str("other/model.safetensors"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-4, std::ios::end);
    const char byte = static_cast<char>(f.get() ^ 1);
    f.seekp(-4, std::ios::end);
    f.put(byte);
  }
  // The run's model is not warned about, the other one is.
  auto expect_warnings = [&](const std::string& when) {
    for (const auto& [model, warned] : {std::pair<std::string, bool>{ref("model"), false}, {dir.str("other"), true}}) {
      BrowserOptions options = options_for(dir.str("run"));
      options.model = model;
      std::string notes;
      browser_data(options, &notes);
      EXPECT_EQ(notes.find(model + ": its weights are not those the SAE was trained on") != std::string::npos, warned)
          << when << model << ": " << notes;
    }
  };
  expect_warnings("");
  // An SAE recorded before the tensors hash (the first and last MiB only) is compared as then:
  // the same model is not warned about, the other one still is.
  Json cfg = read_json_file(dir.str("run/sae/cfg.json"));
  std::string recorded = cfg.at("sae_cpp").at("data").at("model_fingerprint").as_string();
  ASSERT_NE(recorded.find(":tensors="), std::string::npos) << recorded;
  cfg["sae_cpp"]["data"]["model_fingerprint"] = recorded.substr(0, recorded.find(":tensors="));
  std::ofstream(dir.str("run/sae/cfg.json"), std::ios::trunc) << cfg.dump(2);
  expect_warnings("recorded before the tensors hash: ");
}

TEST(BrowserInChromium, SyntheticRun) {
  SKIP_WITHOUT_CHROMIUM(browser);
  TempDir dir("browser_synthetic");
  train(synthetic_run(dir.str("run")));
  const sae::testing::CommandResult r = run_binary("sae_browser", " --run " + dir.str("run"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string page = dir.str("run/features.html");
  const std::string dom = render(browser, page, "#f3", "synthetic", dir);
  expect_rendered(dom, 48, 3, "synthetic #f3");
  EXPECT_NE(dom.find("planted concept"), std::string::npos);
  // Story batches: neighbours known, so some context tokens other than the maximum are shaded.
  EXPECT_GT(count(dom, "data-value=\""), count(dom, "class=\"tok max\""));
  // The search box: #search=7 types 7 into it.
  expect_rendered(render(browser, page, "#search=7", "synthetic_search", dir), 48, 7, "synthetic search 7");
  // A malformed escape, a search that is no number, a feature past the end: said, over a working page
  // ("%" had put "URI malformed" in the error banner; the others had said nothing).
  for (const auto& [hash, said] : {std::pair<std::string, std::string>{"#search=%", "no feature %"},
                                   {"#search=abc", "no feature abc"}, {"#f99999", "no feature 99999"}}) {
    const std::string odd = render(browser, page, hash, "synthetic_odd", dir);
    EXPECT_EQ(odd.find("id=\"browser-error\""), std::string::npos) << hash;
    EXPECT_NE(odd.find("id=\"browser-ready\""), std::string::npos) << hash;
    EXPECT_NE(odd.find(said), std::string::npos) << hash;
  }
}

TEST(BrowserInChromium, TextRunWithTheFixtureModel) {
  SKIP_WITHOUT_CHROMIUM(browser);
  TempDir dir("browser_text");
  train(text_run(dir.str("run")));
  const sae::testing::CommandResult r = run_binary("sae_browser", " --run " + dir.str("run"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const BrowserData data = browser_data(options_for(dir.str("run")));
  EXPECT_TRUE(data.head.at("has_promoted").as_bool());
  EXPECT_TRUE(data.head.at("has_tokens").as_bool());
  // Each feature's first promoted token is the largest W_dec[i] . centred(lm_head[v] x ln_f.weight),
  // the final LayerNorm's weight folded in and each row centred, as TransformerLens's fold_ln does;
  // this model's weights (0.002 .. 0.01) change some features' first token against the raw lm_head.
  const Checkpoint sae = load_checkpoint(dir.str("run/sae"), Device::CPU, false);
  const GptNeo model = GptNeo::load(ref("model"));
  const std::vector<double> dec = sae.params.W_dec.to_vector(), unembed = model.unembedding().to_vector();
  const std::vector<double> ln_f =
      SafetensorsFile::open(ref("model/model.safetensors")).read_f32("transformer.ln_f.weight").to_vector();
  const int64_t d = 32, vocab = model.config().vocab_size, features = sae.params.d_sae();
  int64_t raw_differs = 0;
  for (int64_t i = 0; i < features; ++i) {
    auto logit = [&](int64_t v, bool folded) {
      double dot = 0, mean = 0;
      for (int64_t j = 0; j < d; ++j) mean += unembed[v * d + j] * (folded ? ln_f[j] : 1.0) / d;
      for (int64_t j = 0; j < d; ++j)
        dot += dec[i * d + j] * (folded ? unembed[v * d + j] * ln_f[j] - mean : unembed[v * d + j]);
      return dot;
    };
    int64_t best = 0, best_raw = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (logit(v, true) > logit(best, true)) best = v;
      if (logit(v, false) > logit(best_raw, false)) best_raw = v;
    }
    const int64_t shown = data.feature(i).at("up").at(0).at(0).as_int();
    EXPECT_NEAR(logit(shown, true), logit(best, true), 1e-6 * std::fabs(logit(best, true)))
        << "feature " << i << ": shown token " << shown << ", the largest is " << best;
    raw_differs += best_raw != best;
  }
  EXPECT_GT(raw_differs, 0);
  const std::string dom = render(browser, dir.str("run/features.html"), "#f5", "text", dir);
  expect_rendered(dom, 40, 5, "text #f5");
  EXPECT_NE(dom.find("Promoted tokens"), std::string::npos);
  EXPECT_GE(count(dom, "<td>"), 2 * 2 * 10);  // two tables of ten tokens and logits
}

TEST(BrowserInChromium, HostileTokenTextStaysText) {
  SKIP_WITHOUT_CHROMIUM(browser);
  TempDir dir("browser_hostile");
  train(text_run(dir.str("run")));
  BrowserData data = browser_data(options_for(dir.str("run")));
  // Every token the page names becomes markup, quotes, an entity or control bytes.
  const std::string hostile[] = {"<img id=\"injected\" src=x onerror=\"document.body.setAttribute('data-pwned','1')\">",
                                 "</script><script>document.body.setAttribute('data-pwned','2')</script>",
                                 "&amp; \"quoted\" 'single' \x01\x02\n", "<b id=\"bold\">b</b>\xe2\x80\xa8"};
  Json vocab = Json::object();
  size_t n = 0;
  for (const auto& [id, text] : data.head.at("vocab").items()) vocab[id] = hostile[n++ % 4];
  data.head["vocab"] = vocab;
  data.head["title"] = "<i id=\"title-markup\">run</i>";
  const std::string page = dir.str("hostile.html");
  write_file_atomic(page, browser_html(data));
  const std::string dom = render(browser, page, "#f2", "hostile", dir);
  expect_rendered(dom, 40, 2, "hostile");
  // As text the markup is serialised with &lt; (its quotes stay); as an element it would start with "<".
  EXPECT_EQ(dom.find("<img id=\"injected\""), std::string::npos) << "token text became an element";
  EXPECT_EQ(dom.find("<b id=\"bold\""), std::string::npos);
  EXPECT_EQ(dom.find("<i id=\"title-markup\""), std::string::npos);
  EXPECT_FALSE(std::regex_search(dom, std::regex("<body[^>]*data-pwned"))) << "token text ran as script";
  EXPECT_NE(dom.find("&lt;img id=\"injected\""), std::string::npos) << "the hostile text is shown as text";
  EXPECT_NE(dom.find("&lt;i id=\"title-markup\"&gt;run&lt;/i&gt;"), std::string::npos);
}
