// The checks the tokenizer harnesses make on a loaded BpeTokenizer (lm/tokenizer.h) and a text:
// encode accepts exactly the valid UTF-8 texts (check_utf8), its ids are tokens of the vocabulary,
// decode(encode(text)) == text (for an NFC tokenizer: the same up to canonical equivalence,
// nfc(decode(encode(text))) == nfc(text)), the pre-tokenizer's pieces cover the text, and ids that
// name no token are refused by decode.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "lm/tokenizer.h"
#include "lm/unicode_nfc.h"
#include "tensor/error.h"

namespace sae::fuzz {

// Returns the ids of text (empty when it is not valid UTF-8).
inline std::vector<int32_t> check_encode(const BpeTokenizer& tokenizer, std::string_view text) {
  const bool valid = attempt([&] { check_utf8(text, "fuzz text"); });
  std::vector<int32_t> ids;
  const bool encoded = attempt([&] { ids = tokenizer.encode(text, "fuzz text"); });
  require(valid == encoded, cat("encode ", encoded ? "accepted" : "refused", " a text that check_utf8 ", valid ? "accepts" : "refuses",
                                ": \"", escaped(text), "\""));
  if (!encoded) return {};
  for (int32_t id : ids) require(id >= 0 && id < tokenizer.vocab_size(), cat("encode gave id ", id, " outside the vocabulary"));
  std::string back;
  require(attempt([&] { back = tokenizer.decode(ids); }), "decode refused the ids encode gave");
  if (tokenizer.normalizes_nfc())
    require(unicode::nfc(back) == unicode::nfc(text),
            cat("decode(encode(text)) is not canonically equivalent to \"", escaped(text), "\": got \"", escaped(back), "\""));
  else
    require(back == text, cat("decode(encode(text)) != text for \"", escaped(text), "\": got \"", escaped(back), "\""));

  std::string joined;
  std::vector<std::string_view> pieces;
  pre_tokenize(tokenizer.pattern(), text, pieces);
  for (std::string_view piece : pieces) {
    require(!piece.empty(), "the pre-tokenizer gave an empty piece");
    joined += piece;
  }
  require(joined == text, cat("the pre-tokenizer's pieces do not cover \"", escaped(text), "\""));
  return ids;
}

// A loaded tokenizer, on the given texts and a few fixed ones.
inline void check_tokenizer(const BpeTokenizer& tokenizer, const std::vector<std::string_view>& texts) {
  require(tokenizer.eot_id() >= -1 && tokenizer.eot_id() < tokenizer.vocab_size(), "the end-of-text id is outside the vocabulary");
  for (int32_t id : tokenizer.bos_prefix())
    require(id >= 0 && id < tokenizer.vocab_size(), "the post-processor's BOS is outside the vocabulary");
  for (std::string_view text : texts) check_encode(tokenizer, text);
  for (const char* text : {"Once upon a time, there was a little dog named Max.", " <|endoftext|> Hello\n\n  world's 2024!",
                           "caf\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x98\x80\t\r\n", ""})
    check_encode(tokenizer, text);
  require(!attempt([&] { (void)tokenizer.decode({static_cast<int32_t>(tokenizer.vocab_size())}); }),
          "decode accepted an id past the vocabulary");
  require(!attempt([&] { (void)tokenizer.decode({-1}); }), "decode accepted id -1");
}

}  // namespace sae::fuzz
