// Fuzzes Hugging Face tokenizer.json files (lm/tokenizer.h from_tokenizer_json): the input's
// parts (fuzz_util.h kPartMarker) are tokenizer.json and then texts; a tokenizer that loads is
// checked on the texts (fuzz_tokenizer_checks.h).
#include <algorithm>
#include <optional>

#include "fuzz_tokenizer_checks.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts = fuzz::split_parts(data, size);
  const std::string path = fuzz::write_scratch_file("tokenizer.json", parts[0]);
  std::optional<BpeTokenizer> tokenizer;
  if (!fuzz::attempt([&] { tokenizer.emplace(BpeTokenizer::from_tokenizer_json(path)); })) return 0;
  fuzz::check_tokenizer(*tokenizer, std::vector<std::string_view>(parts.begin() + 1, parts.end()));
  return 0;
}
