// Fuzzes GPT-2's original tokenizer files (lm/tokenizer.h from_files): the input's parts
// (fuzz_util.h kPartMarker) are vocab.json, merges.txt and then texts; a tokenizer that loads is
// checked on the texts (fuzz_tokenizer_checks.h), and <|endoftext|> must encode to its id.
#include <optional>

#include "fuzz_tokenizer_checks.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts = fuzz::split_parts(data, size);
  const std::string vocab = fuzz::write_scratch_file("vocab.json", parts[0]);
  const std::string merges = fuzz::write_scratch_file("merges.txt", parts.size() > 1 ? parts[1] : std::string_view());
  std::optional<BpeTokenizer> tokenizer;
  if (!fuzz::attempt([&] { tokenizer.emplace(BpeTokenizer::from_files(vocab, merges)); })) return 0;

  const std::vector<std::string_view> texts(parts.begin() + std::min<size_t>(parts.size(), 2), parts.end());
  fuzz::check_tokenizer(*tokenizer, texts);
  const std::vector<int32_t> eot = fuzz::check_encode(*tokenizer, "<|endoftext|>");
  fuzz::require(eot.size() == 1 && eot[0] == tokenizer->eot_id(), "<|endoftext|> does not encode to its id");
  return 0;
}
