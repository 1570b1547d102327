// Fuzzes the tokenizer's encoder (lm/tokenizer.h) on arbitrary bytes, with the committed test
// tokenizer (tests/ref/tokenizer: a 4097-token byte-level BPE) loaded both from its tokenizer.json
// and from its vocab.json + merges.txt: encode accepts exactly valid UTF-8, decode(encode(x)) == x
// (fuzz_tokenizer_checks.h), and both loads give the same ids.
#include "fuzz_tokenizer_checks.h"

using namespace sae;

namespace {
const BpeTokenizer& from_json() {
  static const BpeTokenizer t = BpeTokenizer::from_tokenizer_json(SAE_SOURCE_DIR "/tests/ref/tokenizer/tokenizer.json");
  return t;
}
const BpeTokenizer& from_pair() {
  static const BpeTokenizer t =
      BpeTokenizer::from_files(SAE_SOURCE_DIR "/tests/ref/tokenizer/vocab.json", SAE_SOURCE_DIR "/tests/ref/tokenizer/merges.txt");
  return t;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = fuzz::check_encode(from_json(), text);
  std::vector<int32_t> other;
  const bool encoded = fuzz::attempt([&] { other = from_pair().encode(text); });
  const bool valid = fuzz::attempt([&] { check_utf8(text); });
  fuzz::require(encoded == valid, "the two loads of one tokenizer disagree on a text's validity");
  fuzz::require(ids == other, "tokenizer.json and vocab.json + merges.txt of one tokenizer give different ids");
  return 0;
}
