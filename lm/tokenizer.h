// BpeTokenizer: byte-level BPE tokenizers as Hugging Face's `tokenizers` package runs them (GPT-2's,
// GPT-Neo's and TinyStories-33M's, GPT-NeoX / Pythia's, Llama 3's, Qwen 2's), loaded from a
// tokenizer.json or from GPT-2's vocab.json + merges.txt. encode() gives the ids `tokenizers` gives
// without special tokens (add_special_tokens=False):
//   1. added tokens whose "normalized" is false (special tokens: <|endoftext|>, <|begin_of_text|>)
//      are matched literally in the raw text, leftmost first and longest there;
//   2. the text between them is normalised (NFC when the file says so: lm/unicode_nfc.h), and added
//      tokens whose "normalized" is true (Pythia's runs of spaces) are matched in it the same way;
//   3. the rest is cut by the pre-tokenisation pattern (GPT-2's, Llama 3's or Qwen 2's;
//      lm/pre_tokenizer.h), each piece's bytes mapped to GPT-2's printable byte alphabet and merged
//      by merge rank (or, with ignore_merges, taken whole when the vocabulary has it).
// SentencePiece-style BPE as Llama 2, Mistral and Gemma ship it in tokenizer.json (pieces of Unicode
// characters with "▁" for a space; byte_fallback to <0xNN> pieces, or <unk>) is read too: each text
// between raw added tokens has its spaces replaced by "▁", gets a "▁" in front as the file says
// (normalizer Prepend: always; Metaspace prepend_scheme "always": unless it starts with "▁"; "first":
// the same, for the segment at the start of the text only), is cut before each "▁" when Metaspace
// splits, and each piece is merged from its characters (a character outside the vocabulary becomes its
// UTF-8 bytes' <0xNN> pieces, or <unk>, consecutive ones fused with fuse_unk). decode() turns "▁" back
// into spaces and byte pieces into their bytes, and drops one leading space where the decoder has
// Strip(" ", 1, 0), or every "▁" of the first token where it is a Metaspace with a prepend scheme.
// The post-processor's TemplateProcessing says which tokens HF adds around a text: bos_prefix()
// (Llama 3's <|begin_of_text|>, Llama 2's <s>, Gemma's <bos>; none for GPT-2 and Pythia). See
// docs/tokenizer.md.
// Bad files, unsupported options and invalid UTF-8 throw DataError with one line naming the file or
// the text's label.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/json.h"
#include "io/utf8.h"  // check_utf8, first_invalid_utf8
#include "lm/pre_tokenizer.h"

namespace sae {

class BpeTokenizer {
 public:
  // vocab.json (token -> id, tokens in GPT-2's byte alphabet) and merges.txt ("a b" per line, an
  // optional "#version" first line). <|endoftext|> must be in the vocab; it is the one added token.
  static BpeTokenizer from_files(const std::string& vocab_json, const std::string& merges_txt);
  // A Hugging Face tokenizer.json whose model is a byte-level BPE (merges as "a b" strings or [a, b]
  // pairs; ignore_merges read; no byte_fallback, dropout or subword affixes), whose normalizer is
  // none or NFC, whose pre_tokenizer is ByteLevel (GPT-2's pattern, no prefix space) or a Sequence
  // of Split(one of the patterns of lm/pre_tokenizer.h, Isolated) and ByteLevel (use_regex false),
  // and whose post_processor is none, ByteLevel, TemplateProcessing or a Sequence of them. Added
  // tokens with lstrip, rstrip or single_word are refused. The decoder is not used.
  static BpeTokenizer from_tokenizer_json(const std::string& path);
  // dir/tokenizer.json when present, otherwise dir/vocab.json + dir/merges.txt; then the BOS and EOS
  // tokens from dir/tokenizer_config.json (bos_token, eos_token) or dir/config.json (bos_token_id,
  // eos_token_id) when the tokenizer itself does not name them.
  static BpeTokenizer from_model_dir(const std::string& dir);

  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  ~BpeTokenizer();

  // Token ids of `text` (UTF-8), without the post-processor's special tokens. Invalid UTF-8 throws
  // DataError naming `label` and the byte offset. Thread-safe: the word cache is guarded by a mutex.
  std::vector<int32_t> encode(std::string_view text, std::string_view label = "") const;
  // The bytes of the tokens, concatenated, as tokenizers' decoder gives them (a SentencePiece-style
  // file's "▁" as spaces, a Strip's or Metaspace's leading marks dropped; under a ByteFallback decoder
  // a run of byte pieces that is not UTF-8 is one U+FFFD per piece; docs/tokenizer.md). A byte-level
  // BPE's may end in part of a character (callers that show text use utf8::replace_invalid). An id
  // that names no token throws DataError.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes of one token (possibly part of a UTF-8 character), for display.
  std::string token_text(int32_t id) const;
  // Whether `id` names a token (decode and token_text throw for one that does not).
  bool has_id(int32_t id) const { return id >= 0 && id < vocab_size() && has_token_[static_cast<size_t>(id)]; }

  // The tokens the post-processor puts before a text (HF's add_special_tokens=True); empty when none.
  const std::vector<int32_t>& bos_prefix() const { return bos_prefix_; }
  // The beginning-of-sequence token: the post-processor's (when it adds one), else the one the
  // model folder names; -1 when neither names one.
  int32_t bos_id() const { return bos_id_; }
  // The end-of-text token generation stops at: <|endoftext|> when the vocabulary has it, else the
  // folder's eos_token; -1 when neither.
  int32_t eot_id() const { return eot_id_; }
  int64_t vocab_size() const { return static_cast<int64_t>(token_bytes_.size()); }  // largest id + 1
  const std::string& source() const { return source_; }                    // the file(s) loaded
  SplitPattern pattern() const { return pattern_; }
  bool normalizes_nfc() const { return nfc_; }
  bool sentencepiece() const { return sp_.on; }  // a SentencePiece-style BPE (see the top of this file)

 private:
  struct AddedToken {
    std::string content;  // as matched: NFC-normalised already when `normalized` and the tokenizer is
    int32_t id;
    bool normalized = false;
  };
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  // How a SentencePiece-style BPE prepares a text (see the top of this file).
  enum class Prepend { Never, Always, UnlessSpace, FirstUnlessSpace };
  struct SentencePiece {
    bool on = false;
    Prepend prepend = Prepend::Never;
    bool split = false;             // cut before each "▁" (Metaspace split)
    bool byte_fallback = false, fuse_unk = false;
    int32_t unk_id = -1;            // -1: a character outside the vocabulary is dropped
    bool strip_leading_space = false;   // decoding: Strip(" ", 1, 0) drops one leading space
    bool byte_fallback_decoder = false;  // decoding: a run of byte pieces that is not UTF-8 is U+FFFD per piece
    bool strip_first_token_spaces = false;  // decoding: a Metaspace decoder with a prepend scheme drops every "▁" of the first token
  };
  struct WordCache;
  struct Parts;
  static SentencePiece read_sentencepiece(const Json& model, const Json& normalizer, const Json& pre,
                                          const Json& decoder);  // what the two file formats have in common, before checks
  static BpeTokenizer build(Parts parts);
  BpeTokenizer();

  // The text between raw added tokens: normalised, split on normalized added tokens, pre-tokenised.
  void encode_segment(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  std::vector<int32_t> merge_bytes(std::string_view piece) const;
  std::vector<int32_t> merge_symbols(std::vector<int32_t> symbols) const;  // BPE from these ids
  void encode_sp_segment(std::string_view text, bool at_start, std::vector<int32_t>& ids) const;
  std::vector<int32_t> merge_characters(std::string_view piece) const;     // SentencePiece style
  const std::string& checked_token(int32_t id, const char* what) const;
  // Splits `text` on the added tokens of one kind (leftmost, then longest), calling `between` for the
  // text between them and appending the tokens' ids.
  template <typename Between>
  void split_on_added(std::string_view text, bool normalized, std::vector<int32_t>& ids, Between&& between) const;

  std::string source_;
  SplitPattern pattern_ = SplitPattern::Gpt2;
  bool nfc_ = false;
  bool ignore_merges_ = false;
  std::vector<std::string> token_bytes_;  // id -> bytes
  std::vector<std::string> first_token_bytes_;  // id -> bytes as the first token (a Metaspace decoder's); else empty
  std::vector<uint8_t> has_token_;        // id -> 1 when some token has this id
  int32_t byte_ids_[256] = {};            // byte -> id of its one-byte token
  std::unordered_map<uint64_t, Merge> merges_;       // (left id << 32 | right id) -> rank and result
  std::unordered_map<std::string, int32_t> whole_;   // ignore_merges: a piece's bytes -> its vocab id
  std::vector<AddedToken> added_tokens_;             // longest first
  bool added_first_byte_[2][256] = {};               // [normalized][first byte of an added token]
  bool has_added_[2] = {false, false};
  SentencePiece sp_;
  std::unordered_map<std::string, int32_t> piece_ids_;  // SentencePiece style: a vocabulary piece -> id
  int32_t byte_piece_ids_[256] = {};                    // <0xNN> -> id, or -1
  std::vector<int32_t> bos_prefix_;
  int32_t bos_id_ = -1, eot_id_ = -1;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace sae
