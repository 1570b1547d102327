// Gpt2Tokenizer: GPT-2's byte-level BPE tokenizer (also GPT-Neo's and TinyStories-33M's), loaded
// from a Hugging Face tokenizer.json or from vocab.json + merges.txt. encode() gives the ids that
// the `tokenizers` package gives: added tokens such as <|endoftext|> are matched literally first,
// the rest is split by GPT-2's pre-tokenisation pattern (implemented by hand, Unicode tables in
// lm/unicode_tables.h), each piece's bytes are mapped to GPT-2's printable byte alphabet and merged
// by merge rank. No BOS is added. See docs/tokenizer.md.
// Bad files and invalid UTF-8 throw DataError with one line naming the file or the text's label.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sae {

// Throws DataError "<label>: invalid UTF-8 at byte <offset>: <reason>" unless `text` is valid
// UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF). An empty label reads "text".
void check_utf8(std::string_view text, std::string_view label = "");

// GPT-2's pre-tokenisation of valid UTF-8 text (call check_utf8 first): the consecutive matches of
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// as views into `text`; together they cover every byte. Added tokens are not treated specially.
std::vector<std::string_view> gpt2_pre_tokenize(std::string_view text);

class Gpt2Tokenizer {
 public:
  // vocab.json (token -> id, tokens in GPT-2's byte alphabet) and merges.txt ("a b" per line, an
  // optional "#version" first line). <|endoftext|> must be in the vocab; it is the one added token.
  static Gpt2Tokenizer from_files(const std::string& vocab_json, const std::string& merges_txt);
  // A Hugging Face tokenizer.json whose model is a BPE (merges as "a b" strings or [a, b] pairs)
  // with the ByteLevel pre-tokenizer (add_prefix_space false) and no normalizer. Every entry of
  // added_tokens is matched literally. The post_processor and decoder are ignored.
  static Gpt2Tokenizer from_tokenizer_json(const std::string& path);
  // dir/tokenizer.json when present, otherwise dir/vocab.json + dir/merges.txt.
  static Gpt2Tokenizer from_model_dir(const std::string& dir);

  Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept;
  Gpt2Tokenizer& operator=(Gpt2Tokenizer&&) noexcept;
  ~Gpt2Tokenizer();

  // Token ids of `text` (UTF-8). Invalid UTF-8 throws DataError naming `label` and the byte offset.
  // Thread-safe: the word cache is guarded by a mutex.
  std::vector<int32_t> encode(std::string_view text, std::string_view label = "") const;
  // The bytes of the tokens, concatenated. An id that names no token throws DataError.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes of one token (possibly part of a UTF-8 character), for display.
  std::string token_text(int32_t id) const;

  int32_t eot_id() const { return eot_id_; }                                // <|endoftext|>
  int64_t vocab_size() const { return static_cast<int64_t>(token_bytes_.size()); }  // largest id + 1
  const std::string& source() const { return source_; }                    // the file(s) loaded

 private:
  struct AddedToken {
    std::string content;
    int32_t id;
  };
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct WordCache;
  struct Parts;  // what the two file formats have in common, before checks
  static Gpt2Tokenizer build(Parts parts);
  Gpt2Tokenizer();

  void encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  std::vector<int32_t> merge_bytes(std::string_view piece) const;
  const std::string& checked_token(int32_t id, const char* what) const;

  std::string source_;
  std::vector<std::string> token_bytes_;  // id -> bytes
  std::vector<uint8_t> has_token_;        // id -> 1 when some token has this id
  int32_t byte_ids_[256] = {};            // byte -> id of its one-byte token
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank and result
  std::vector<AddedToken> added_tokens_;        // longest first
  bool added_first_byte_[256] = {};
  int32_t eot_id_ = -1;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace sae
