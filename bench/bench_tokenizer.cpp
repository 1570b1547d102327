// Tokenizer benchmark (lm/tokenizer.h): GPT-2 byte-level BPE encoding of English prose, with the
// test fixture's 4,096-token vocabulary (tests/ref/tokenizer/, from the source tree):
//   BM_TokenizerEncode/cold   a fresh tokenizer per pass (an empty word cache; loading not timed)
//   BM_TokenizerEncode/warm   one tokenizer, its cache filled by the passes before
// The text: the fixture's sentences of 20 bytes or more without markup, repeated to about 2 MB.
// bytes_per_second is the encode rate. docs/tokenizer.md "Speed" quotes it.
#include <benchmark/benchmark.h>

#include <fstream>
#include <optional>
#include <string>

#include "io/json.h"
#include "lm/tokenizer.h"

using namespace sae;

namespace {

std::string fixture(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/tokenizer/" + name; }

const std::string& english_text() {
  static const std::string text = [] {
    std::ifstream in(fixture("cases.jsonl"), std::ios::binary);
    if (!in) throw Error("bench_tokenizer: cannot open " + fixture("cases.jsonl"));
    std::string out, line;
    while (std::getline(in, line)) {
      const std::string t = Json::parse(line).at("text").as_string();
      if (t.size() >= 20 && t.find('<') == std::string::npos) out += t + "\n";
    }
    const size_t unique_bytes = out.size();
    while (out.size() < 2'000'000) out += out.substr(0, unique_bytes);
    return out;
  }();
  return text;
}

void BM_TokenizerEncode(benchmark::State& state) {
  const bool cold = state.range(0) == 0;
  const std::string& text = english_text();
  std::optional<BpeTokenizer> tokenizer(BpeTokenizer::from_tokenizer_json(fixture("tokenizer.json")));
  if (!cold) benchmark::DoNotOptimize(tokenizer->encode(text).size());  // fills the cache
  size_t tokens = 0;
  for (auto _ : state) {
    if (cold) {  // a fresh tokenizer; loading it (and dropping the last one) is not timed
      state.PauseTiming();
      tokenizer.reset();
      tokenizer.emplace(BpeTokenizer::from_tokenizer_json(fixture("tokenizer.json")));
      state.ResumeTiming();
    }
    tokens = tokenizer->encode(text).size();
    benchmark::DoNotOptimize(tokens);
  }
  if (tokens < text.size() / 8) state.SkipWithError("fewer tokens than expected: the text was not encoded");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(text.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.SetLabel(cold ? "cold cache" : "warm cache");
}

}  // namespace

BENCHMARK(BM_TokenizerEncode)->ArgName("warm")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
