// BpeTokenizer: loading (tokenizer.json, vocab.json + merges.txt) with validation, UTF-8 checks,
// added tokens, normalisation and pre-tokenisation (lm/unicode_nfc.h, lm/pre_tokenizer.h), the byte
// alphabet, BPE merging by rank with a word cache, and decoding.
#include "lm/tokenizer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <mutex>
#include <queue>
#include <unordered_set>

#include "lm/unicode_nfc.h"
#include "io/utf8.h"
#include "tensor/error.h"
#include "io/json.h"
#include "io/mapped_file.h"

namespace sae {

namespace {

constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;  // a guard against absurd ids in corrupt files
constexpr size_t kMaxCachedPieceBytes = 128;
constexpr size_t kMaxCacheEntries = size_t{1} << 20;  // then the cache starts over
const char* const kEndOfText = "<|endoftext|>";
const char* const kMetaSpace = "\xE2\x96\x81";  // U+2581 "▁", SentencePiece's space

// "<0x41>" -> 0x41 (SentencePiece's byte pieces, upper-case hex); -1 for anything else.
int byte_piece_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int value = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = piece[static_cast<size_t>(k)];
    if (c >= '0' && c <= '9') value = value * 16 + (c - '0');
    else if (c >= 'A' && c <= 'F') value = value * 16 + (c - 'A' + 10);
    else return -1;
  }
  return value;
}

// `text` with every "▁" replaced by `with`.
std::string replace_meta_spaces(const std::string& text, const char* with) {
  std::string out;
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, 3, kMetaSpace) == 0) {
      out += with;
      pos += 3;
    } else {
      out += text[pos++];
    }
  }
  return out;
}

// A SentencePiece piece's text: "▁" as a space, a byte piece as its byte.
std::string sp_piece_bytes(const std::string& piece) {
  const int byte = byte_piece_value(piece);
  if (byte >= 0) return std::string(1, static_cast<char>(byte));
  return replace_meta_spaces(piece, " ");
}

std::string replace_spaces(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 4 + 3);
  for (char c : text) {
    if (c == ' ') out += kMetaSpace;
    else out += c;
  }
  return out;
}

// ---- UTF-8 ----

std::string hex_byte(uint8_t byte) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", byte);
  return buf;
}

std::string code_point_name(uint32_t code_point) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", code_point);
  return buf;
}

// ---- GPT-2's byte alphabet: each byte as a printable code point ----

struct ByteAlphabet {
  uint32_t code_point_of[256];
  int16_t byte_of[324];  // code point -> byte, or -1 (every code point of the alphabet is < 324)
  ByteAlphabet() {
    std::fill(std::begin(byte_of), std::end(byte_of), int16_t{-1});
    uint32_t next_extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      code_point_of[b] = printable ? b : next_extra++;
      byte_of[code_point_of[b]] = static_cast<int16_t>(b);
    }
  }
  std::string text_of(uint8_t byte) const {
    std::string out;
    utf8::append(code_point_of[byte], out);
    return out;
  }
};
const ByteAlphabet kByteAlphabet;

// The bytes a vocabulary entry (valid UTF-8 in the byte alphabet) stands for; false when it has a
// character outside the alphabet (reported in `bad`).
bool alphabet_to_bytes(const std::string& token, std::string& bytes, uint32_t& bad) {
  bytes.clear();
  size_t pos = 0;
  while (pos < token.size()) {
    size_t length = 0;
    const uint32_t code_point = utf8::decode(token, pos, length);
    if (code_point >= 324 || kByteAlphabet.byte_of[code_point] < 0) {
      bad = code_point;
      return false;
    }
    bytes += static_cast<char>(kByteAlphabet.byte_of[code_point]);
    pos += length;
  }
  return true;
}

// ---- files ----

std::string read_whole_file(const std::string& path) {
  MappedFile file(path);  // DataError naming the path when missing or unreadable
  return std::string(reinterpret_cast<const char*>(file.data()), file.size());
}

Json parse_json_file(const std::string& path) {
  const std::string text = read_whole_file(path);
  try {
    return Json::parse(text);
  } catch (const DataError& e) {
    throw DataError(cat(path, ": ", e.what()));
  }
}

bool is_regular_file(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

// ---- UTF-8 validation and pre-tokenisation (public) ----

// ---- loading ----

struct BpeTokenizer::WordCache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> ids_of_piece;
};

// The two file formats, read but not yet checked. Error messages name `vocab_where` and
// `merges_where` ("<file>" or "<file>: model.vocab"...).
struct BpeTokenizer::Parts {
  std::string source;
  std::string vocab_where, merges_where, added_where;
  std::vector<std::pair<std::string, int64_t>> vocab;  // entry in the byte alphabet -> id
  struct MergeRule {
    std::string left, right;
    std::string where;  // "line 7" or "model.merges[5]"
  };
  std::vector<MergeRule> merges;
  struct Added {
    std::string content;
    int64_t id;
    bool normalized;  // matched in the normalised text (after the non-normalized ones)
  };
  std::vector<Added> added;
  SplitPattern pattern = SplitPattern::Gpt2;
  bool nfc = false, ignore_merges = false;
  std::vector<std::string> bos_prefix;  // the post-processor's tokens before a text, by content
  std::vector<int64_t> bos_prefix_ids;
  SentencePiece sp;                     // sp.on: a SentencePiece-style BPE
  std::string unk_token;                // its model.unk_token
};

BpeTokenizer::BpeTokenizer() : cache_(std::make_unique<WordCache>()) {}
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer BpeTokenizer::build(Parts parts) {
  BpeTokenizer t;
  t.source_ = parts.source;

  // Ids: in range, each used by one token (a token may be both in the vocab and added).
  std::unordered_map<std::string, int32_t> id_of_entry;  // vocab entry (byte alphabet) -> id
  std::unordered_map<int64_t, std::string> owner_of_id;
  int64_t max_id = -1;
  const auto claim_id = [&](const std::string& where, const std::string& token, int64_t id) {
    if (id < 0 || id > kMaxTokenId) throw DataError(cat(where, ": token \"", token, "\" has id ", id, ", outside [0, ", kMaxTokenId, "]"));
    auto [it, inserted] = owner_of_id.emplace(id, token);
    if (!inserted && it->second != token) throw DataError(cat(where, ": id ", id, " is used by both \"", it->second, "\" and \"", token, "\""));
    max_id = std::max(max_id, id);
  };
  for (const auto& [token, id] : parts.vocab) {
    claim_id(parts.vocab_where, token, id);
    id_of_entry.emplace(token, static_cast<int32_t>(id));
  }
  for (const auto& [content, id, normalized] : parts.added) {
    if (content.empty()) throw DataError(cat(parts.added_where, ": an added token (id ", id, ") is empty"));
    auto in_vocab = id_of_entry.find(content);
    if (in_vocab != id_of_entry.end() && in_vocab->second != id)
      throw DataError(cat(parts.added_where, ": added token \"", content, "\" has id ", id, " but the vocab gives it ", in_vocab->second));
    claim_id(parts.added_where, content, id);
  }
  t.token_bytes_.assign(static_cast<size_t>(max_id + 1), std::string());
  t.has_token_.assign(static_cast<size_t>(max_id + 1), 0);

  // Bytes of each token: added tokens are literal, vocab entries are in the byte alphabet.
  std::unordered_set<std::string> added_contents;
  t.pattern_ = parts.pattern;
  t.nfc_ = parts.nfc;
  t.ignore_merges_ = parts.ignore_merges;
  for (const auto& [content, id, normalized] : parts.added) {
    added_contents.insert(content);
    t.token_bytes_[id] = content;
    t.has_token_[id] = 1;
    // A normalized added token is matched in normalised text, so its content is normalised too.
    const std::string matched = normalized && parts.nfc ? unicode::nfc(content) : content;
    t.added_tokens_.push_back({matched, static_cast<int32_t>(id), normalized});
    t.added_first_byte_[normalized][static_cast<uint8_t>(matched[0])] = true;
    t.has_added_[normalized] = true;
  }
  std::stable_sort(t.added_tokens_.begin(), t.added_tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  std::string bytes;
  t.sp_ = parts.sp;
  std::fill(std::begin(t.byte_piece_ids_), std::end(t.byte_piece_ids_), -1);
  for (const auto& [token, id] : parts.vocab) {
    if (parts.sp.on) {  // pieces of Unicode characters, not the byte alphabet
      t.piece_ids_.emplace(token, static_cast<int32_t>(id));
      const int byte = byte_piece_value(token);
      if (byte >= 0) t.byte_piece_ids_[byte] = static_cast<int32_t>(id);
      if (added_contents.count(token)) continue;
      t.token_bytes_[id] = sp_piece_bytes(token);
      t.has_token_[id] = 1;
      continue;
    }
    if (added_contents.count(token)) continue;
    uint32_t bad = 0;
    if (!alphabet_to_bytes(token, bytes, bad))
      throw DataError(cat(parts.vocab_where, ": token \"", token, "\" (id ", id, ") has ", code_point_name(bad),
                          ", which is not in GPT-2's byte alphabet (not a byte-level BPE vocabulary?)"));
    t.token_bytes_[id] = bytes;
    t.has_token_[id] = 1;
    if (parts.ignore_merges) t.whole_.emplace(bytes, static_cast<int32_t>(id));
  }

  if (parts.sp.on) {
    if (!parts.unk_token.empty()) {
      auto it = id_of_entry.find(parts.unk_token);
      if (it == id_of_entry.end())
        throw DataError(cat(parts.vocab_where, ": the unk_token \"", printable(parts.unk_token), "\" is not in the vocab"));
      t.sp_.unk_id = it->second;
    }
    if (parts.sp.byte_fallback)
      for (int b = 0; b < 256; ++b)
        if (t.byte_piece_ids_[b] < 0)
          throw DataError(cat(parts.vocab_where, ": byte_fallback is set but there is no piece <", hex_byte(static_cast<uint8_t>(b)),
                              ">"));
    for (const AddedToken& a : t.added_tokens_)
      if (a.normalized)
        throw DataError(cat(parts.added_where, ": added token \"", printable(a.content),
                            "\" is normalized; a SentencePiece-style BPE here takes only literal (special) added tokens"));
    // Decoding as `tokenizers` does, whose decoder sees every token's text, added tokens' too: "▁"
    // becomes a space (an added token's own spaces stay), and with a Metaspace decoder every "▁" of
    // the first token goes (byte pieces are bytes, not marks).
    for (const auto& [content, id, normalized] : parts.added) t.token_bytes_[id] = replace_meta_spaces(content, " ");
    if (t.sp_.strip_first_token_spaces) {
      t.first_token_bytes_ = t.token_bytes_;
      for (const auto& [token, id] : parts.vocab)
        if (!added_contents.count(token) && byte_piece_value(token) < 0) t.first_token_bytes_[id] = replace_meta_spaces(token, "");
      for (const auto& [content, id, normalized] : parts.added) t.first_token_bytes_[id] = replace_meta_spaces(content, "");
    }
  }
  // Every byte needs its one-character token (byte-level BPE).
  for (int b = 0; b < 256 && !parts.sp.on; ++b) {
    auto it = id_of_entry.find(kByteAlphabet.text_of(static_cast<uint8_t>(b)));
    if (it == id_of_entry.end())
      throw DataError(cat(parts.vocab_where, ": no token for byte ", hex_byte(static_cast<uint8_t>(b)), " (\"",
                          kByteAlphabet.text_of(static_cast<uint8_t>(b)), "\"); not a byte-level BPE vocabulary"));
    t.byte_ids_[b] = it->second;
  }

  // Merges: both parts and their concatenation must be vocab entries. A repeated pair keeps its
  // last rank, as `tokenizers` and transformers' GPT2Tokenizer do.
  t.merges_.reserve(parts.merges.size());
  for (size_t rank = 0; rank < parts.merges.size(); ++rank) {
    const Parts::MergeRule& rule = parts.merges[rank];
    const auto lookup = [&](const std::string& token, const char* role) {
      auto it = id_of_entry.find(token);
      if (it == id_of_entry.end())
        throw DataError(cat(parts.merges_where, " ", rule.where, ": merge \"", rule.left, " ", rule.right, "\": ", role, " \"",
                            token, "\" is not in the vocab"));
      return it->second;
    };
    const int32_t left = lookup(rule.left, "left part");
    const int32_t right = lookup(rule.right, "right part");
    const int32_t result = lookup(rule.left + rule.right, "result");
    t.merges_[(static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right)] = Merge{static_cast<int32_t>(rank), result};
  }

  auto eot = id_of_entry.find(kEndOfText);
  if (eot != id_of_entry.end()) {
    t.eot_id_ = eot->second;
  } else {
    for (const AddedToken& a : t.added_tokens_)
      if (a.content == kEndOfText) t.eot_id_ = a.id;
  }
  for (int64_t id : parts.bos_prefix_ids) {
    if (id < 0 || id >= t.vocab_size() || !t.has_token_[id])
      throw DataError(cat(parts.source, ": the post-processor adds token id ", id, ", which is not in the vocabulary"));
    t.bos_prefix_.push_back(static_cast<int32_t>(id));
  }
  if (t.bos_prefix_.size() == 1) t.bos_id_ = t.bos_prefix_[0];
  return t;
}

BpeTokenizer BpeTokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt) {
  Parts parts;
  parts.source = cat(vocab_json, " + ", merges_txt);
  parts.vocab_where = vocab_json;
  parts.merges_where = merges_txt;
  parts.added_where = vocab_json;

  const Json vocab = parse_json_file(vocab_json);
  if (!vocab.is_object()) throw DataError(cat(vocab_json, ": expected a JSON object of token -> id, found ", vocab.type_name()));
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number() || std::floor(id.as_number()) != id.as_number() || std::fabs(id.as_number()) > 1e15)
      throw DataError(cat(vocab_json, ": the id of \"", token, "\" is not an integer"));
    parts.vocab.emplace_back(token, static_cast<int64_t>(id.as_number()));
  }

  const std::string text = read_whole_file(merges_txt);
  size_t line_start = 0, line_number = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    std::string_view line(text.data() + line_start, line_end - line_start);
    line_start = line_end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if (line_number == 1 && line.substr(0, 8) == "#version") continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() || line.find(' ', space + 1) != std::string_view::npos)
      throw DataError(cat(merges_txt, " line ", line_number, ": expected two tokens separated by one space, found \"", line, "\""));
    parts.merges.push_back({std::string(line.substr(0, space)), std::string(line.substr(space + 1)), cat("line ", line_number)});
  }

  for (const auto& [token, id] : parts.vocab)
    if (token == kEndOfText) parts.added.push_back({token, id, false});
  if (parts.added.empty()) throw DataError(cat(vocab_json, ": no ", kEndOfText, " token"));
  return build(std::move(parts));
}

namespace {

std::string type_of(const Json& part) {
  if (part.is_null()) return "";
  if (!part.is_object()) throw DataError(cat("expected an object, found a JSON ", part.type_name()));
  return part.has("type") && part.at("type").is_string() ? part.at("type").as_string() : "(untyped)";
}

bool flag_or(const Json& part, const char* key, bool fallback) {
  if (!part.has(key) || part.at(key).is_null()) return fallback;
  return part.at(key).as_bool();
}

// A ByteLevel pre-tokenizer: no prefix space; `regex` says whether it splits with GPT-2's pattern.
void check_byte_level(const Json& pre, bool regex, const char* where) {
  if (flag_or(pre, "add_prefix_space", true))
    throw DataError(cat(where, ".add_prefix_space is not false; a space would be put before the text"));
  if (flag_or(pre, "use_regex", true) != regex)
    throw DataError(cat(where, ".use_regex is ", regex ? "false" : "true", "; expected ", regex ? "true" : "false",
                        regex ? " (GPT-2's pattern)" : " after a Split (the text would be split twice)"));
}

// A one-element Sequence of pre-tokenizers is its element (transformers' own SentencePiece
// conversion writes Sequence [Metaspace]); anything else is itself.
const Json& single_pre_tokenizer(const Json& pre) {
  return type_of(pre) == "Sequence" && pre.has("pretokenizers") && pre.at("pretokenizers").is_array() &&
                 pre.at("pretokenizers").size() == 1
             ? pre.at("pretokenizers").at(size_t(0))
             : pre;
}

// The pre-tokenizer: ByteLevel with GPT-2's pattern, or Sequence [Split(pattern), ByteLevel].
SplitPattern read_pre_tokenizer(const Json& pre_tokenizer) {
  const Json& pre = single_pre_tokenizer(pre_tokenizer);
  const std::string type = type_of(pre);
  if (type == "ByteLevel") {
    check_byte_level(pre, true, "pre_tokenizer");
    return SplitPattern::Gpt2;
  }
  if (type == "Sequence") {
    const Json& list = pre.at("pretokenizers");
    if (!list.is_array() || list.size() != 2 || type_of(list.at(size_t(0))) != "Split" ||
        type_of(list.at(size_t(1))) != "ByteLevel")
      throw DataError("pre_tokenizer is a Sequence other than [Split, ByteLevel]; not a byte-level BPE we read");
    const Json& split = list.at(size_t(0));
    if (!split.has("pattern") || !split.at("pattern").is_object() || !split.at("pattern").has("Regex"))
      throw DataError("pre_tokenizer Split: only a {\"Regex\": ...} pattern is supported");
    const std::string regex = split.at("pattern").at("Regex").as_string();
    const std::string behavior = split.has("behavior") ? split.at("behavior").as_string() : "";
    if (behavior != "Isolated" || flag_or(split, "invert", false))
      throw DataError(cat("pre_tokenizer Split: behavior \"", printable(behavior), "\"",
                          flag_or(split, "invert", false) ? " inverted" : "", " is not supported (only Isolated)"));
    const std::optional<SplitPattern> pattern = split_pattern_of_regex(regex);
    if (!pattern)
      throw DataError(cat("pre_tokenizer Split: the pattern \"", printable(regex, 60),
                          "\" is not one we read (GPT-2's, Llama 3's or Qwen 2's)"));
    check_byte_level(list.at(size_t(1)), false, "pre_tokenizer's ByteLevel");
    return *pattern;
  }
  throw DataError(cat("pre_tokenizer is \"", type, "\"; only ByteLevel or Sequence [Split, ByteLevel] (byte-level BPE) "
                      "is supported", type == "Metaspace" ? " (SentencePiece-style tokenizers are not read yet)" : ""));
}

// The normalizer: none or NFC (possibly as a one-element Sequence).
bool read_normalizer(const Json& normalizer) {
  std::string type = type_of(normalizer);
  if (type == "Sequence" && normalizer.at("normalizers").is_array()) {
    const Json& list = normalizer.at("normalizers");
    if (list.size() == 0) return false;
    if (list.size() == 1) type = type_of(list.at(size_t(0)));
    for (size_t i = 0; list.size() > 1 && i < list.size(); ++i)  // name the member we do not read
      if (type_of(list.at(i)) != "NFC")
        throw DataError(cat("normalizer Sequence: its member \"", printable(type_of(list.at(i))),
                            "\" is not supported (none or NFC)"));
  }
  if (type.empty()) return false;
  if (type == "NFC") return true;
  throw DataError(cat("normalizer \"", type, "\" is not supported (none or NFC)"));
}

// The post-processor: the special tokens a TemplateProcessing puts before the text (by content).
std::vector<std::pair<std::string, std::vector<int64_t>>> read_post_processor(const Json& post) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> prefix;
  const std::string type = type_of(post);
  std::vector<const Json*> parts;
  if (type == "Sequence") {
    for (const Json& p : post.at("processors").elements()) parts.push_back(&p);
  } else if (!type.empty()) {
    parts.push_back(&post);
  }
  for (const Json* p : parts) {
    const std::string t = type_of(*p);
    if (t == "ByteLevel") continue;  // offsets only
    if (t != "TemplateProcessing")
      throw DataError(cat("post_processor \"", t, "\" is not supported (ByteLevel, TemplateProcessing)"));
    const Json& single = p->at("single");
    bool before = true;
    for (const Json& piece : single.elements()) {
      if (piece.has("Sequence")) {
        before = false;
        continue;
      }
      if (!piece.has("SpecialToken")) throw DataError("post_processor TemplateProcessing: a piece that is neither "
                                                      "Sequence nor SpecialToken");
      if (!before) continue;  // tokens after the text (an EOS) are not added by our runs
      const std::string name = piece.at("SpecialToken").at("id").as_string();
      const Json& specials = p->at("special_tokens");
      if (!specials.has(name)) throw DataError(cat("post_processor TemplateProcessing: no special_tokens entry for \"",
                                                   printable(name), "\""));
      std::vector<int64_t> ids;
      for (const Json& id : specials.at(name).at("ids").elements()) ids.push_back(id.as_int());
      prefix.emplace_back(name, ids);
    }
  }
  return prefix;
}

}  // namespace

// A SentencePiece-style BPE's set-up (byte_fallback, a Metaspace pre-tokenizer, or a normalizer that
// writes "▁" for spaces); sp.on is false for anything else (a byte-level BPE). Combinations other
// than the ones Llama 2, Mistral and Gemma files use are refused.
BpeTokenizer::SentencePiece BpeTokenizer::read_sentencepiece(const Json& model, const Json& normalizer, const Json& pre,
                                                             const Json& decoder) {
  SentencePiece sp;
  const auto is_meta = [](const Json& part, const char* key) {
    return part.has(key) && part.at(key).is_string() && part.at(key).as_string() == kMetaSpace;
  };
  const auto is_string_pattern = [](const Json& part, const char* text) {
    return part.has("pattern") && part.at("pattern").is_object() && part.at("pattern").has("String") &&
           part.at("pattern").at("String").is_string() && part.at("pattern").at("String").as_string() == text;
  };
  // The normalizer: Replace(" ", "▁"), optionally with Prepend("▁"), in a Sequence or alone.
  std::vector<const Json*> normalizers;
  const std::string normalizer_type = type_of(normalizer);
  if (normalizer_type == "Sequence") {
    for (const Json& n : normalizer.at("normalizers").elements()) normalizers.push_back(&n);
  } else if (!normalizer_type.empty()) {
    normalizers.push_back(&normalizer);
  }
  bool replaces = false, prepends = false, other_normalizer = false;
  for (const Json* n : normalizers) {
    const std::string type = type_of(*n);
    if (type == "Replace" && is_string_pattern(*n, " ") && is_meta(*n, "content")) replaces = true;
    else if (type == "Prepend" && is_meta(*n, "prepend")) prepends = true;
    else other_normalizer = true;
  }
  const Json& pre_one = single_pre_tokenizer(pre);
  const std::string pre_type = type_of(pre_one);
  const bool metaspace = pre_type == "Metaspace";
  sp.on = flag_or(model, "byte_fallback", false) || metaspace || replaces || prepends;
  if (!sp.on) return sp;
  if (other_normalizer)
    throw DataError("a SentencePiece-style BPE's normalizer may only Replace(\" \", \"▁\") and Prepend(\"▁\")");
  sp.byte_fallback = flag_or(model, "byte_fallback", false);
  sp.fuse_unk = flag_or(model, "fuse_unk", false);
  if (metaspace) {
    if (replaces || prepends)
      throw DataError("a Metaspace pre-tokenizer beside a \"▁\" normalizer (the form transformers' SentencePiece "
                      "converter writes, usually with Regex replacements) is not supported: one of the two");
    if (!is_meta(pre_one, "replacement")) throw DataError("pre_tokenizer Metaspace: only the replacement \"▁\" is supported");
    const std::string scheme = pre_one.has("prepend_scheme") && pre_one.at("prepend_scheme").is_string()
                                   ? pre_one.at("prepend_scheme").as_string()
                                   : (flag_or(pre_one, "add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") sp.prepend = Prepend::UnlessSpace;
    else if (scheme == "first") sp.prepend = Prepend::FirstUnlessSpace;
    else if (scheme == "never") sp.prepend = Prepend::Never;
    else throw DataError(cat("pre_tokenizer Metaspace: prepend_scheme \"", printable(scheme), "\" is not supported"));
    sp.split = flag_or(pre_one, "split", true);
  } else {
    if (!replaces && pre_type == "ByteLevel")
      throw DataError("model.byte_fallback is set on a byte-level BPE (a ByteLevel pre-tokenizer): not supported "
                      "(byte fallback belongs to SentencePiece-style files)");
    if (!replaces)
      throw DataError("model.byte_fallback or a \"▁\" normalizer make a SentencePiece-style BPE, which needs the "
                      "normalizer Replace(\" \", \"▁\") or a Metaspace pre-tokenizer");
    sp.prepend = prepends ? Prepend::Always : Prepend::Never;
    // Gemma's Split(" ", MergedWithPrevious) runs after the spaces became "▁": it never cuts.
    // Inverted, it would cut out everything but the (absent) spaces: refused.
    if (!pre_type.empty() && !(pre_type == "Split" && is_string_pattern(pre_one, " ") && !flag_or(pre_one, "invert", false)))
      throw DataError(cat("pre_tokenizer \"", pre_type, "\"", pre_type == "Split" ? " (other than Gemma's Split(\" \"), not inverted)" : "",
                          " is not supported with a SentencePiece-style BPE"));
  }
  // Decoding: one leading space dropped by Strip(" ", 1, 0); every "▁" of the first token by Metaspace
  // with a prepend scheme (tokenizers' Metaspace decode_chain: "  a" as "▁▁" "a" decodes to "a").
  std::vector<const Json*> decoders;
  const std::string decoder_type = type_of(decoder);
  if (decoder_type == "Sequence") {
    for (const Json& d : decoder.at("decoders").elements()) decoders.push_back(&d);
  } else if (!decoder_type.empty()) {
    decoders.push_back(&decoder);
  }
  bool fused = false;  // a Fuse came before: what follows sees the whole text as one token
  for (const Json* d : decoders) {
    const std::string type = type_of(*d);
    if (type == "Fuse") fused = true;
    if (type == "Strip") {  // Llama 2's Strip(" ", 1, 0), after its Fuse: one leading space of the text
      const bool llamas = fused && d->has("content") && d->at("content").is_string() && d->at("content").as_string() == " " &&
                          d->has("start") && d->at("start").is_number() && d->at("start").as_int() >= 0 &&
                          d->at("start").as_int() <= 1 && (!d->has("stop") || d->at("stop") == Json(int64_t(0)));
      if (!llamas)
        throw DataError("decoder Strip: only Strip(\" \", 1, 0) after a Fuse (Llama 2's: one leading space of the "
                        "text) is supported");
      sp.strip_leading_space = d->at("start").as_int() > 0;
    }
    if (type == "ByteFallback") sp.byte_fallback_decoder = true;
    if (type == "Metaspace")
      sp.strip_first_token_spaces = !(d->has("prepend_scheme") && d->at("prepend_scheme").is_string() &&
                                      d->at("prepend_scheme").as_string() == "never");
  }
  return sp;
}

BpeTokenizer BpeTokenizer::from_tokenizer_json(const std::string& path) {
  const Json root = parse_json_file(path);
  try {
    if (!root.is_object()) throw DataError(cat("expected a JSON object, found ", root.type_name()));
    const Json& model = root.at("model");
    // Without a "type", tokenizers reads a model with merges as a BPE.
    const std::string type = model.has("type") ? model.at("type").as_string() : (model.has("merges") ? "BPE" : "");
    if (type.empty()) throw DataError("model has no \"type\" and no merges: not a BPE we read");
    if (type != "BPE") throw DataError(cat("model.type is \"", type, "\"; only a byte-level \"BPE\" is supported"));

    Parts parts;
    const Json& pre = root.has("pre_tokenizer") ? root.at("pre_tokenizer") : Json();
    const Json& normalizer = root.has("normalizer") ? root.at("normalizer") : Json();
    const Json& decoder = root.has("decoder") ? root.at("decoder") : Json();
    parts.sp = read_sentencepiece(model, normalizer, pre, decoder);
    if (parts.sp.on) {
      if (model.has("unk_token") && model.at("unk_token").is_string()) parts.unk_token = model.at("unk_token").as_string();
    } else {
      parts.pattern = read_pre_tokenizer(pre);
      parts.nfc = read_normalizer(normalizer);
    }
    for (const auto& [name, ids] : read_post_processor(root.has("post_processor") ? root.at("post_processor") : Json())) {
      parts.bos_prefix.push_back(name);
      parts.bos_prefix_ids.insert(parts.bos_prefix_ids.end(), ids.begin(), ids.end());
    }
    // BPE options that byte-level tokenizers do not use.
    if (model.has("dropout") && !model.at("dropout").is_null() && model.at("dropout").as_number() != 0.0)
      throw DataError("model.dropout is set; BPE dropout is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.has(key) && !model.at(key).is_null() && !model.at(key).as_string().empty())
        throw DataError(cat("model.", key, " is \"", model.at(key).as_string(), "\"; byte-level BPE has none"));
    parts.ignore_merges = flag_or(model, "ignore_merges", false);

    parts.source = path;
    parts.vocab_where = cat(path, ": model.vocab");
    parts.merges_where = cat(path, ":");
    parts.added_where = cat(path, ": added_tokens");
    const Json& vocab = model.at("vocab");
    if (!vocab.is_object()) throw DataError(cat("model.vocab is a JSON ", vocab.type_name(), ", expected an object"));
    for (const auto& [token, id] : vocab.items()) parts.vocab.emplace_back(token, id.as_int());

    const Json& merges = model.at("merges");
    if (!merges.is_array()) throw DataError(cat("model.merges is a JSON ", merges.type_name(), ", expected an array"));
    for (size_t i = 0; i < merges.size(); ++i) {
      const Json& m = merges.at(i);
      Parts::MergeRule rule;
      rule.where = cat("model.merges[", i, "]");
      if (m.is_string()) {
        const std::string& s = m.as_string();
        const size_t space = s.find(' ');
        if (space == std::string::npos || space == 0 || space + 1 == s.size() || s.find(' ', space + 1) != std::string::npos)
          throw DataError(cat(rule.where, ": expected two tokens separated by one space, found \"", s, "\""));
        rule.left = s.substr(0, space);
        rule.right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m.at(0).is_string() && m.at(1).is_string()) {
        rule.left = m.at(0).as_string();
        rule.right = m.at(1).as_string();
      } else {
        throw DataError(cat(rule.where, ": expected \"a b\" or [\"a\", \"b\"]"));
      }
      parts.merges.push_back(std::move(rule));
    }

    if (root.has("added_tokens") && !root.at("added_tokens").is_null()) {
      for (const Json& a : root.at("added_tokens").elements()) {
        const std::string& content = a.at("content").as_string();
        for (const char* option : {"lstrip", "rstrip", "single_word"})
          if (a.has(option) && a.at(option).as_bool())
            throw DataError(cat("added token \"", content, "\" has ", option, " set; only literal added tokens are supported"));
        const bool special = flag_or(a, "special", false);
        parts.added.push_back({content, a.at("id").as_int(), flag_or(a, "normalized", !special)});
      }
    }
    return build(std::move(parts));
  } catch (const DataError& e) {
    const std::string message = e.what();
    if (message.rfind(path, 0) == 0) throw;  // already names the file
    throw DataError(cat(path, ": ", message));
  }
}

namespace {

// The id of a special token a folder names in tokenizer_config.json ("bos_token": "<s>" or
// {"content": "<s>", ...}), when the tokenizer has it; -1 otherwise.
int32_t named_token(const Json& config, const char* key, const std::unordered_map<std::string, int32_t>& ids) {
  if (!config.is_object() || !config.has(key)) return -1;
  const Json& v = config.at(key);
  std::string content;
  if (v.is_string()) content = v.as_string();
  else if (v.is_object() && v.has("content") && v.at("content").is_string()) content = v.at("content").as_string();
  auto it = ids.find(content);
  return it == ids.end() ? -1 : it->second;
}

}  // namespace

BpeTokenizer BpeTokenizer::from_model_dir(const std::string& dir) {
  const std::string tokenizer_json = dir + "/tokenizer.json";
  BpeTokenizer t = [&] {
    if (is_regular_file(tokenizer_json)) return from_tokenizer_json(tokenizer_json);
    struct stat info;
    if (::stat(tokenizer_json.c_str(), &info) == 0) ::close(open_regular_file(tokenizer_json));  // a FIFO, a directory
    const std::string vocab_json = dir + "/vocab.json", merges_txt = dir + "/merges.txt";
    if (is_regular_file(vocab_json) && is_regular_file(merges_txt)) return from_files(vocab_json, merges_txt);
    throw DataError(cat(dir, ": no tokenizer.json, nor vocab.json with merges.txt"));
  }();
  // The folder's BOS / EOS when the tokenizer names none (GPT-2's bos_token is <|endoftext|>).
  if (t.bos_id_ >= 0 && t.eot_id_ >= 0) return t;
  std::unordered_map<std::string, int32_t> ids;
  for (int64_t id = 0; id < t.vocab_size(); ++id)
    if (t.has_token_[id]) ids.emplace(t.token_bytes_[id], static_cast<int32_t>(id));
  const std::string tokenizer_config = dir + "/tokenizer_config.json", model_config = dir + "/config.json";
  if (is_regular_file(tokenizer_config)) {
    const Json c = parse_json_file(tokenizer_config);
    if (t.bos_id_ < 0) t.bos_id_ = named_token(c, "bos_token", ids);
    if (t.eot_id_ < 0) t.eot_id_ = named_token(c, "eos_token", ids);
  }
  if ((t.bos_id_ < 0 || t.eot_id_ < 0) && is_regular_file(model_config)) {
    const Json c = parse_json_file(model_config);
    const auto id_of = [&](const char* key) -> int32_t {
      if (!c.is_object() || !c.has(key) || !c.at(key).is_number()) return -1;
      const int64_t id = c.at(key).as_int();
      return id >= 0 && id < t.vocab_size() && t.has_token_[id] ? static_cast<int32_t>(id) : -1;
    };
    if (t.bos_id_ < 0) t.bos_id_ = id_of("bos_token_id");
    if (t.eot_id_ < 0) t.eot_id_ = id_of("eos_token_id");
  }
  return t;
}

// ---- encoding ----

template <typename Between>
void BpeTokenizer::split_on_added(std::string_view text, bool normalized, std::vector<int32_t>& ids,
                                  Between&& between) const {
  if (!has_added_[normalized]) {
    between(text);
    return;
  }
  // The leftmost match, the longest at that position (added_tokens_ is sorted longest first).
  size_t segment_start = 0, pos = 0;
  while (pos < text.size()) {
    const AddedToken* match = nullptr;
    if (added_first_byte_[normalized][static_cast<uint8_t>(text[pos])]) {
      for (const AddedToken& a : added_tokens_) {
        if (a.normalized == normalized && text.compare(pos, a.content.size(), a.content) == 0) {
          match = &a;
          break;
        }
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    between(text.substr(segment_start, pos - segment_start));
    ids.push_back(match->id);
    pos += match->content.size();
    segment_start = pos;
  }
  between(text.substr(segment_start));
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, std::string_view label) const {
  check_utf8(text, label);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + 4);
  if (sp_.on) {
    split_on_added(text, false, ids, [&](std::string_view segment) {
      encode_sp_segment(segment, segment.data() == text.data(), ids);
    });
    return ids;
  }
  split_on_added(text, false, ids, [&](std::string_view segment) { encode_segment(segment, ids); });
  return ids;
}

void BpeTokenizer::encode_sp_segment(std::string_view text, bool at_start, std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  std::string s = replace_spaces(text);
  const bool starts_with_space = s.compare(0, 3, kMetaSpace) == 0;
  if (sp_.prepend == Prepend::Always || (sp_.prepend == Prepend::UnlessSpace && !starts_with_space) ||
      (sp_.prepend == Prepend::FirstUnlessSpace && at_start && !starts_with_space))
    s.insert(0, kMetaSpace);
  const std::string_view all(s);
  if (!sp_.split) {
    encode_piece(all, ids);
    return;
  }
  size_t start = 0;  // pieces begin at each "▁" (merged with the text after it), also one a text
                     // without a prepended "▁" has within its first bytes ("a▁b": "a", "▁b")
  for (size_t pos = 1; pos + 3 <= all.size(); ++pos)
    if (all.compare(pos, 3, kMetaSpace) == 0) {
      encode_piece(all.substr(start, pos - start), ids);
      start = pos;
      pos += 2;
    }
  encode_piece(all.substr(start), ids);
}

// A SentencePiece-style word: one symbol per character (its piece; else its bytes' <0xNN> pieces
// with byte_fallback; else <unk>, fused with a <unk> before it under fuse_unk), then BPE.
std::vector<int32_t> BpeTokenizer::merge_characters(std::string_view piece) const {
  std::vector<int32_t> symbols;
  bool pending_unk = false;  // as `tokenizers`: an <unk> joins the word when a known piece (or the end) follows
  const auto flush_unk = [&] {
    if (pending_unk) symbols.push_back(sp_.unk_id);
    pending_unk = false;
  };
  std::string character;
  for (size_t pos = 0; pos < piece.size();) {
    size_t length = 1;
    const uint8_t lead = static_cast<uint8_t>(piece[pos]);
    if (lead >= 0xF0) length = 4;
    else if (lead >= 0xE0) length = 3;
    else if (lead >= 0xC0) length = 2;
    character.assign(piece.substr(pos, length));
    pos += length;
    auto it = piece_ids_.find(character);
    if (it != piece_ids_.end()) {
      flush_unk();
      symbols.push_back(it->second);
      continue;
    }
    if (sp_.byte_fallback) {
      for (char c : character) symbols.push_back(byte_piece_ids_[static_cast<uint8_t>(c)]);
      continue;
    }
    if (sp_.unk_id < 0) continue;
    if (pending_unk && !sp_.fuse_unk) symbols.push_back(sp_.unk_id);
    pending_unk = true;
  }
  flush_unk();
  return merge_symbols(std::move(symbols));
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  if (!nfc_) {
    split_on_added(text, true, ids, [&](std::string_view rest) { encode_ordinary(rest, ids); });
    return;
  }
  const std::string normalized = unicode::nfc(text);
  split_on_added(normalized, true, ids, [&](std::string_view rest) { encode_ordinary(rest, ids); });
}

void BpeTokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  std::vector<std::string_view> pieces;
  pre_tokenize(pattern_, text, pieces);
  for (std::string_view piece : pieces) encode_piece(piece, ids);
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.size() == 1 && !sp_.on) {
    ids.push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges_) {  // a piece the vocabulary has whole is that token, whatever the merges say
    const std::unordered_map<std::string, int32_t>& whole = sp_.on ? piece_ids_ : whole_;  // by piece, by bytes
    auto it = whole.find(std::string(piece));
    if (it != whole.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    auto it = cache_->ids_of_piece.find(piece);
    if (it != cache_->ids_of_piece.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> merged = sp_.on ? merge_characters(piece) : merge_bytes(piece);
  ids.insert(ids.end(), merged.begin(), merged.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->ids_of_piece.size() >= kMaxCacheEntries) cache_->ids_of_piece.clear();
    cache_->ids_of_piece.emplace(std::string(piece), std::move(merged));
  }
}

// BPE on one piece: start from one symbol per byte and repeatedly merge the adjacent pair of lowest
// rank (the leftmost when it occurs more than once) until no pair has a merge. The symbols form a
// linked list; candidate pairs wait in a min-heap and are dropped when a neighbour has changed.
std::vector<int32_t> BpeTokenizer::merge_bytes(std::string_view piece) const {
  std::vector<int32_t> ids(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) ids[i] = byte_ids_[static_cast<uint8_t>(piece[i])];
  return merge_symbols(std::move(ids));
}

std::vector<int32_t> BpeTokenizer::merge_symbols(std::vector<int32_t> initial) const {
  const int32_t n = static_cast<int32_t>(initial.size());
  if (n == 0) return initial;
  struct Symbol {
    int32_t id, prev, next;  // prev/next: neighbour index or -1
  };
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) symbols[i] = {initial[i], i - 1, i + 1 < n ? i + 1 : -1};

  struct Candidate {
    int32_t rank, left, right, left_id, right_id, result;
    bool operator>(const Candidate& other) const { return rank != other.rank ? rank > other.rank : left > other.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  const auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find((static_cast<uint64_t>(symbols[left].id) << 32) | static_cast<uint32_t>(symbols[right].id));
    if (it != merges_.end()) heap.push({it->second.rank, left, right, symbols[left].id, symbols[right].id, it->second.result});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = symbols[c.left];
    // Stale when either side has been merged since: then its id or its neighbour has changed.
    if (left.id != c.left_id || left.next != c.right || symbols[c.right].id != c.right_id) continue;
    left.id = c.result;
    left.next = symbols[c.right].next;
    if (left.next >= 0) symbols[left.next].prev = c.left;
    symbols[c.right].id = -1;  // gone
    consider(left.prev);
    consider(c.left);
  }

  std::vector<int32_t> ids;
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
  return ids;
}

// ---- decoding ----

const std::string& BpeTokenizer::checked_token(int32_t id, const char* what) const {
  if (!has_id(id))
    throw DataError(cat(what, ": token id ", id, " is not in the vocabulary of ", source_, " (size ", vocab_size(), ")"));
  return token_bytes_[id];
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text, run;  // run: the bytes of consecutive byte pieces, under a ByteFallback decoder
  size_t run_pieces = 0;
  // tokenizers' ByteFallback: a run of byte pieces that is valid UTF-8 is its text; one that is not
  // is one U+FFFD per piece (the valid characters in it too).
  const auto end_run = [&] {
    if (utf8::is_valid(run)) text += run;
    else for (size_t k = 0; k < run_pieces; ++k) text += "\xEF\xBF\xBD";
    run.clear();
    run_pieces = 0;
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string& token = checked_token(ids[i], "decode");
    if (sp_.byte_fallback_decoder && token.size() == 1 &&
        byte_piece_ids_[static_cast<uint8_t>(token[0])] == ids[i]) {
      run += token;
      ++run_pieces;
      continue;
    }
    if (run_pieces > 0) end_run();
    text += i == 0 && !first_token_bytes_.empty() ? first_token_bytes_[static_cast<size_t>(ids[i])] : token;
  }
  if (run_pieces > 0) end_run();
  if (sp_.strip_leading_space && !text.empty() && text[0] == ' ') text.erase(0, 1);
  return text;
}

std::string BpeTokenizer::token_text(int32_t id) const { return checked_token(id, "token_text"); }

}  // namespace sae
