// BpeTokenizer tests: thousands of strings against the ids of the `tokenizers` package
// (tests/ref/tokenizer/, made by scripts/gen_tokenizer_fixture.py), both file formats and both
// merge spellings, GPT-2's pre-tokenisation rules one by one with pieces worked out by hand from the
// pattern, BPE rank order on a hand-made vocabulary, invalid UTF-8, corrupt files, decode errors,
// and concurrent encoding. (The encode rate: bench/bench_tokenizer.cpp.)
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "tests/util/test_util.h"
#include "lm/tokenizer.h"
#include "lm/unicode_nfc.h"
#include "lm/unicode_tables.h"
#include "tensor/error.h"
#include "io/json.h"

using namespace sae;
using sae::testing::expect_error;
using sae::testing::TempDir;

namespace {

const std::string kEot = "<|endoftext|>";

std::string ref_dir() { return std::string(SAE_SOURCE_DIR) + "/tests/ref/tokenizer"; }
std::string ref(const std::string& name) { return ref_dir() + "/" + name; }

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
  std::vector<size_t> piece_bytes;  // the witness's pre-tokenisation, as byte lengths
};

const std::vector<Case>& fixture_cases() {
  static const std::vector<Case> cases = [] {
    std::vector<Case> out;
    std::istringstream lines(sae::testing::read_file(ref("cases.jsonl")));
    std::string line;
    while (std::getline(lines, line)) {
      const Json j = Json::parse(line);
      Case c;
      c.text = j.at("text").as_string();
      for (const Json& id : j.at("ids").elements()) c.ids.push_back(static_cast<int32_t>(id.as_int()));
      for (const Json& n : j.at("pieces").elements()) c.piece_bytes.push_back(static_cast<size_t>(n.as_int()));
      out.push_back(std::move(c));
    }
    return out;
  }();
  return cases;
}

const BpeTokenizer& fixture_tokenizer() {
  static const BpeTokenizer tokenizer = BpeTokenizer::from_tokenizer_json(ref("tokenizer.json"));
  return tokenizer;
}

std::string ids_text(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

// Every fixture string: the witness's ids, and decode gives the exact bytes back.
void expect_matches_fixture(const BpeTokenizer& tokenizer, const std::string& what) {
  const std::vector<Case>& cases = fixture_cases();
  // 6621 with the Unicode 16 probe cases, which a generator without unicodedata2 had left out (6305).
  ASSERT_GE(cases.size(), 6600u) << "cases.jsonl lacks the Unicode 16 probe cases (scripts/gen_tokenizer_fixture.py)";
  size_t failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<int32_t> ids = tokenizer.encode(cases[i].text, cat("case ", i));
    const bool same_ids = ids == cases[i].ids;
    const bool round_trip = tokenizer.decode(ids) == cases[i].text;
    if ((!same_ids || !round_trip) && ++failures <= 10) {
      ADD_FAILURE() << what << " case " << i << " " << Json(cases[i].text).dump() << "\n  expected " << ids_text(cases[i].ids)
                    << "\n  got      " << ids_text(ids) << (round_trip ? "" : "\n  and decode does not give the text back");
    }
  }
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << cases.size() << " cases differ";
}

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : gpt2_pre_tokenize(text)) out.emplace_back(p);
  return out;
}


// GPT-2's byte alphabet, written out again here: printable bytes stand for themselves, the other
// 68 take the code points from U+0100 on, in byte order.
std::string alphabet_char(int byte) {
  const bool printable = (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
  uint32_t code_point = static_cast<uint32_t>(byte);
  if (!printable) {
    code_point = 256;
    for (int b = 0; b < byte; ++b)
      if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) ++code_point;
  }
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return out;
}

// A hand-made byte-level vocabulary: the 256 bytes at ids 0..255 (id = byte), <|endoftext|> at
// 256, then `extra` tokens (written in the alphabet) from 257 on; and its merges.
struct SmallModel {
  std::vector<std::string> extra;
  std::vector<std::string> merges;  // "a b"
  std::string vocab_json() const {
    Json vocab = Json::object();
    for (int b = 0; b < 256; ++b) vocab[alphabet_char(b)] = b;
    vocab[kEot] = 256;
    for (size_t i = 0; i < extra.size(); ++i) vocab[extra[i]] = static_cast<int>(257 + i);
    return vocab.dump();
  }
  std::string merges_txt() const {
    std::string text = "#version: 0.2\n";
    for (const std::string& m : merges) text += m + "\n";
    return text;
  }
  BpeTokenizer load(const TempDir& dir) const {
    write_file(dir.str("vocab.json"), vocab_json());
    write_file(dir.str("merges.txt"), merges_txt());
    return BpeTokenizer::from_files(dir.str("vocab.json"), dir.str("merges.txt"));
  }
};

Json load_tokenizer_json() { return Json::parse(sae::testing::read_file(ref("tokenizer.json"))); }

}  // namespace

// ---- against the `tokenizers` witness ----

TEST(TokenizerFixture, TokenizerJsonMatchesTokenizersOnEveryCase) {
  const BpeTokenizer& tokenizer = fixture_tokenizer();
  EXPECT_EQ(tokenizer.eot_id(), 4096);
  EXPECT_EQ(tokenizer.vocab_size(), 4097);
  expect_matches_fixture(tokenizer, "tokenizer.json");
}

TEST(TokenizerFixture, PreTokenizerSplitsLikeTokenizersOnEveryCase) {
  const std::vector<Case>& cases = fixture_cases();
  size_t failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    check_utf8(cases[i].text, cat("case ", i));
    std::vector<size_t> piece_bytes;
    std::string shown;
    for (std::string_view piece : gpt2_pre_tokenize(cases[i].text)) {
      piece_bytes.push_back(piece.size());
      shown += Json(std::string(piece)).dump() + " ";
    }
    if (piece_bytes != cases[i].piece_bytes && ++failures <= 10) {
      std::string expected;
      size_t at = 0;
      for (size_t n : cases[i].piece_bytes) {
        expected += Json(cases[i].text.substr(at, n)).dump() + " ";
        at += n;
      }
      ADD_FAILURE() << "case " << i << "\n  expected " << expected << "\n  got      " << shown;
    }
  }
  EXPECT_EQ(failures, 0u) << failures << " of " << cases.size() << " cases split differently";
}

TEST(TokenizerFixture, VocabAndMergesFilesMatchTokenizersOnEveryCase) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_files(ref("vocab.json"), ref("merges.txt"));
  EXPECT_EQ(tokenizer.eot_id(), 4096);
  EXPECT_EQ(tokenizer.vocab_size(), 4097);
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id)
    ASSERT_EQ(tokenizer.token_text(id), fixture_tokenizer().token_text(id)) << "id " << id;
  expect_matches_fixture(tokenizer, "vocab.json + merges.txt");
}

TEST(TokenizerFixture, MergesWrittenAsStringsLoadTheSame) {
  // Older tokenizers versions write each merge as "a b"; the fixture has [a, b] pairs.
  Json root = load_tokenizer_json();
  Json string_merges = Json::array();
  for (const Json& pair : root.at("model").at("merges").elements()) {
    ASSERT_TRUE(pair.is_array());
    string_merges.push_back(pair.at(0).as_string() + " " + pair.at(1).as_string());
  }
  root["model"]["merges"] = string_merges;
  TempDir dir("tok_string_merges");
  write_file(dir.str("tokenizer.json"), root.dump());
  expect_matches_fixture(BpeTokenizer::from_tokenizer_json(dir.str("tokenizer.json")), "string merges");
}

TEST(TokenizerFixture, ModelDirPrefersTokenizerJson) {
  EXPECT_EQ(BpeTokenizer::from_model_dir(ref_dir()).source(), ref("tokenizer.json"));
  TempDir dir("tok_model_dir");
  write_file(dir.str("vocab.json"), sae::testing::read_file(ref("vocab.json")));
  write_file(dir.str("merges.txt"), sae::testing::read_file(ref("merges.txt")));
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(dir.str());
  EXPECT_NE(tokenizer.source().find("vocab.json"), std::string::npos);
  EXPECT_EQ(tokenizer.encode("Hello world"), fixture_tokenizer().encode("Hello world"));
  expect_error<DataError>([&] { BpeTokenizer::from_model_dir(dir.str("nothing_here")); }, {dir.str("nothing_here"), "tokenizer.json"});
}

// ---- pre-tokenisation, rule by rule; expected pieces worked out by hand from the pattern ----

TEST(TokenizerPreTokenize, ContractionsAreLowerCaseAndComeFirst) {
  EXPECT_EQ(pieces("don't"), (std::vector<std::string>{"don", "'t"}));
  EXPECT_EQ(pieces("we've they're I'm you'll he'd it's"),
            (std::vector<std::string>{"we", "'ve", " they", "'re", " I", "'m", " you", "'ll", " he", "'d", " it", "'s"}));
  // Upper case is not a contraction: the apostrophe is an "other" character on its own.
  EXPECT_EQ(pieces("DON'T"), (std::vector<std::string>{"DON", "'", "T"}));
  EXPECT_EQ(pieces("I'LL"), (std::vector<std::string>{"I", "'", "LL"}));
  // A contraction matches even when letters follow; "'st" is "'s" then "t".
  EXPECT_EQ(pieces("'sam'st"), (std::vector<std::string>{"'s", "am", "'s", "t"}));
  // After a space the apostrophe goes with the space (rule 4), so the "s" is alone.
  EXPECT_EQ(pieces(" 's"), (std::vector<std::string>{" '", "s"}));
  // An "other" run swallows apostrophes: no contraction inside it.
  EXPECT_EQ(pieces("''s"), (std::vector<std::string>{"''", "s"}));
  EXPECT_EQ(pieces("a.'s"), (std::vector<std::string>{"a", ".'", "s"}));
  // Typographic apostrophes are "other" characters, never contractions.
  EXPECT_EQ(pieces("it\u2019s"), (std::vector<std::string>{"it", "\u2019", "s"}));
}

TEST(TokenizerPreTokenize, LettersNumbersAndOthersTakeOneLeadingSpace) {
  EXPECT_EQ(pieces("Hello world"), (std::vector<std::string>{"Hello", " world"}));
  EXPECT_EQ(pieces("abc123def 42 x"), (std::vector<std::string>{"abc", "123", "def", " 42", " x"}));
  EXPECT_EQ(pieces("Hi!!! ...ok"), (std::vector<std::string>{"Hi", "!!!", " ...", "ok"}));
  // Numbers are \p{N}: Roman numerals (Nl), superscripts (No), Arabic-Indic and Thai digits (Nd).
  EXPECT_EQ(pieces("\u216Bth x\u00B2 \u0663rd \u0E53\u0E54"),
            (std::vector<std::string>{"\u216B", "th", " x", "\u00B2", " \u0663", "rd", " \u0E53\u0E54"}));
  // Letters of any script join; combining marks (Mn) and emoji modifiers are "other".
  EXPECT_EQ(pieces("\u039A\u03B1\u03BB\u03B7 \u65E5\u672C"), (std::vector<std::string>{"\u039A\u03B1\u03BB\u03B7", " \u65E5\u672C"}));
  EXPECT_EQ(pieces("e\u0301t\u00E9"), (std::vector<std::string>{"e", "\u0301", "t\u00E9"}));
  EXPECT_EQ(pieces("\U0001F44D\U0001F3FD ok"), (std::vector<std::string>{"\U0001F44D\U0001F3FD", " ok"}));
  // Zero-width space and BOM are not White_Space: "other" characters that a space can lead.
  EXPECT_EQ(pieces("a\u200Bb \u200B"), (std::vector<std::string>{"a", "\u200B", "b", " \u200B"}));
  // The optional space is U+0020 only: NBSP and U+3000 stay apart from the word.
  EXPECT_EQ(pieces("\u00A0a\u3000b"), (std::vector<std::string>{"\u00A0", "a", "\u3000", "b"}));
}

TEST(TokenizerPreTokenize, WhiteSpaceRunsLeaveTheLastCharacterToTheNextWord) {
  // \s+(?!\S): all but the last of a run that something follows; that last space leads the word.
  EXPECT_EQ(pieces("a  b"), (std::vector<std::string>{"a", " ", " b"}));
  EXPECT_EQ(pieces("a   b"), (std::vector<std::string>{"a", "  ", " b"}));
  // The last character is not a U+0020: it is a piece of its own (\s+ on one character).
  EXPECT_EQ(pieces("a \tb"), (std::vector<std::string>{"a", " ", "\t", "b"}));
  EXPECT_EQ(pieces("a\t b"), (std::vector<std::string>{"a", "\t", " b"}));
  EXPECT_EQ(pieces("\n\nHello"), (std::vector<std::string>{"\n", "\n", "Hello"}));
  EXPECT_EQ(pieces("x \u2028y"), (std::vector<std::string>{"x", " ", "\u2028", "y"}));
  // A run at the end stays whole.
  EXPECT_EQ(pieces("end.  \n "), (std::vector<std::string>{"end", ".", "  \n "}));
  EXPECT_EQ(pieces("   "), (std::vector<std::string>{"   "}));
  EXPECT_EQ(pieces("\r\n"), (std::vector<std::string>{"\r\n"}));
  // Every White_Space character of Unicode joins a run.
  EXPECT_EQ(pieces("a\u0085\u00A0\u1680\u2000\u200A\u2029\u202F\u205F\u3000\x0B\x0C b"),
            (std::vector<std::string>{"a", "\u0085\u00A0\u1680\u2000\u200A\u2029\u202F\u205F\u3000\x0B\x0C", " b"}));
  EXPECT_TRUE(pieces("").empty());
}

TEST(TokenizerPreTokenize, UnicodeVersionIsSixteen) {
  // U+1C89 (Cyrillic, Unicode 16.0) is a letter; U+A7CE (Unicode 17.0) is not yet one.
  EXPECT_STREQ(unicode::kUnicodeVersion, "16.0.0");
  EXPECT_EQ(pieces("a\u1C89b"), (std::vector<std::string>{"a\u1C89b"}));
  EXPECT_EQ(pieces("a\uA7CEb"), (std::vector<std::string>{"a", "\uA7CE", "b"}));
  // The tables' totals, as scripts/gen_unicode_tables.py printed them from unicodedata2 16.0.0.
  const auto total = [](const unicode::CodePointRange* ranges, size_t count) {
    int64_t n = 0;
    for (size_t i = 0; i < count; ++i) n += ranges[i].last - ranges[i].first + 1;
    return n;
  };
  EXPECT_EQ(total(unicode::kLetterRanges, unicode::kLetterRangeCount), 141028);
  EXPECT_EQ(total(unicode::kNumberRanges, unicode::kNumberRangeCount), 1911);
  EXPECT_EQ(total(unicode::kWhiteSpaceRanges, unicode::kWhiteSpaceRangeCount), 25);
  EXPECT_TRUE(unicode::is_number(0x216B));   // ROMAN NUMERAL TWELVE (Nl)
  EXPECT_FALSE(unicode::is_letter(0x10FFFF));
  EXPECT_TRUE(unicode::is_letter(0x3400));   // first of a CJK range
  EXPECT_FALSE(unicode::is_white_space(0x200B));
}

// ---- special tokens ----

TEST(TokenizerSpecial, EndOfTextIsMatchedLiterallyAnywhere) {
  const BpeTokenizer& t = fixture_tokenizer();
  const int32_t eot = t.eot_id();
  EXPECT_EQ(t.token_text(eot), kEot);
  EXPECT_EQ(t.encode(kEot), (std::vector<int32_t>{eot}));
  std::vector<int32_t> expected = t.encode("word");
  expected.push_back(eot);
  for (int32_t id : t.encode("word")) expected.push_back(id);
  EXPECT_EQ(t.encode("word" + kEot + "word"), expected);
  // The text on each side is split on its own: " " + eot + " " keeps both spaces alone.
  EXPECT_EQ(t.encode(" " + kEot + " "), (std::vector<int32_t>{t.encode(" ")[0], eot, t.encode(" ")[0]}));
  // Near misses are ordinary text.
  for (const std::string s : {"<|endoftext|", "<|ENDOFTEXT|>", "<| endoftext|>"})
    for (int32_t id : t.encode(s)) EXPECT_NE(id, eot) << s;
  EXPECT_EQ(t.encode("<<|endoftext|>>").size(), 3u);  // "<", eot, ">"
  EXPECT_EQ(t.encode("<<|endoftext|>>")[1], eot);
}

// ---- BPE order on a hand-made vocabulary ----

TEST(TokenizerMerge, LowestRankFirstAndLeftmostFirst) {
  TempDir dir("tok_merge_order");
  {
    // "b c" has the lower rank, so "abc" becomes a + bc although "a b" also exists.
    SmallModel m{{"bc", "ab"}, {"b c", "a b"}};
    const BpeTokenizer t = m.load(dir);
    EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{'a', 257}));
    EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{258}));
  }
  {
    SmallModel m{{"ab", "bc"}, {"a b", "b c"}};
    const BpeTokenizer t = m.load(dir);
    EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{257, 'c'}));
  }
  {
    // Repeated pairs merge from the left; then the merged tokens merge further.
    SmallModel m{{"aa", "aaaa"}, {"a a", "aa aa"}};
    const BpeTokenizer t = m.load(dir);
    EXPECT_EQ(t.encode("aaa"), (std::vector<int32_t>{257, 'a'}));
    EXPECT_EQ(t.encode("aaaaa"), (std::vector<int32_t>{258, 'a'}));
    EXPECT_EQ(t.encode("aaaaaa"), (std::vector<int32_t>{258, 257}));
  }
  {
    // A space is a byte like any other ("\u0120" in the alphabet); merges cross it within a piece.
    SmallModel m{{"\u0120t", "\u0120th"}, {"\u0120 t", "\u0120t h"}};
    const BpeTokenizer t = m.load(dir);
    EXPECT_EQ(t.encode(" th th"), (std::vector<int32_t>{258, 258}));
    EXPECT_EQ(t.decode({258, 258}), " th th");
  }
  {
    // Long pieces (a 5000-space run is one piece) merge without trouble.
    SmallModel m{{"\u0120\u0120"}, {"\u0120 \u0120"}};
    const BpeTokenizer t = m.load(dir);
    const std::vector<int32_t> ids = t.encode(std::string(5000, ' '));
    EXPECT_EQ(ids, std::vector<int32_t>(2500, 257));
  }
}

// ---- bad input ----

TEST(TokenizerErrors, InvalidUtf8NamesTheLabelAndTheByte) {
  const BpeTokenizer& t = fixture_tokenizer();
  const auto expect_bad = [&](const std::string& text, const std::string& offset, const std::string& reason) {
    expect_error<DataError>([&] { t.encode(text, "story 17"); }, {"story 17", "invalid UTF-8", offset, reason});
  };
  expect_bad("abc\xE2\x82", "at byte 3", "truncated");           // a 3-byte sequence cut short
  expect_bad("ok \xE2\x82x", "at byte 3", "not a continuation");  // ... or interrupted
  expect_bad("ok \xC0\xAF", "at byte 3", "overlong");             // '/' in two bytes
  expect_bad("\xE0\x80\xAF", "at byte 0", "overlong");            // '/' in three bytes
  expect_bad("\xF0\x80\x80\xAF", "at byte 0", "overlong");        // '/' in four bytes
  expect_bad("x\xED\xA0\x80y", "at byte 1", "surrogate");         // U+D800
  expect_bad("hello \xFF", "at byte 6", "0xFF");
  expect_bad("\x80", "at byte 0", "continuation byte 0x80");
  expect_bad("\xF4\x90\x80\x80", "at byte 0", "above U+10FFFF");
  expect_bad(kEot + "\xFE", "at byte 13", "0xFE");
  expect_error<DataError>([&] { t.encode("\xFF"); }, {"text: invalid UTF-8 at byte 0"});
  // The largest code point and the last before the surrogates are fine.
  EXPECT_EQ(t.decode(t.encode("\xF4\x8F\xBF\xBF\xED\x9F\xBF")), "\xF4\x8F\xBF\xBF\xED\x9F\xBF");
}

TEST(TokenizerErrors, DecodeRejectsIdsOutsideTheVocabulary) {
  const BpeTokenizer& t = fixture_tokenizer();
  EXPECT_THROW(t.decode({1, -1}), Error);
  EXPECT_THROW(t.decode({static_cast<int32_t>(t.vocab_size())}), Error);
  expect_error<DataError>([&] { t.decode({5, 4097}); }, {"4097", "tokenizer.json"});
  expect_error<DataError>([&] { t.token_text(-3); }, {"-3"});
  EXPECT_EQ(t.decode({}), "");
}

TEST(TokenizerErrors, CorruptTokenizerJsonNamesTheFile) {
  TempDir dir("tok_corrupt_json");
  const std::string path = dir.str("tokenizer.json");
  const auto expect_rejected = [&](const Json& root, const std::vector<std::string>& parts) {
    write_file(path, root.dump());
    std::vector<std::string> all = parts;
    all.push_back(path);
    expect_error<DataError>([&] { BpeTokenizer::from_tokenizer_json(path); }, all);
  };
  expect_error<DataError>([&] { BpeTokenizer::from_tokenizer_json(dir.str("missing.json")); }, {dir.str("missing.json")});
  write_file(path, "{\"model\": {\"type\": \"BPE\",");
  expect_error<DataError>([&] { BpeTokenizer::from_tokenizer_json(path); }, {path, "JSON parse error"});

  const Json good = load_tokenizer_json();
  Json root = good;
  root["model"]["type"] = "WordPiece";
  expect_rejected(root, {"WordPiece", "BPE"});
  root = good;
  root["pre_tokenizer"]["type"] = "Metaspace";
  expect_rejected(root, {"Metaspace", "replacement"});  // a Metaspace without its "▁"
  root = good;
  root["pre_tokenizer"]["add_prefix_space"] = true;
  expect_rejected(root, {"add_prefix_space"});
  root = good;
  root["pre_tokenizer"]["use_regex"] = false;
  expect_rejected(root, {"use_regex"});
  root = good;
  root["normalizer"] = Json::object();
  root["normalizer"]["type"] = "NFKC";
  expect_rejected(root, {"NFKC", "NFC"});
  root = good;
  root["model"]["byte_fallback"] = true;
  expect_rejected(root, {"byte_fallback", "byte-level BPE"});
  root = good;  // a Sequence names the member we do not read
  root["normalizer"] = Json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]})");
  expect_rejected(root, {"member \"Lowercase\""});
  {  // a one-element pre_tokenizer Sequence is its element, as tokenizers reads it
    root = good;
    root["pre_tokenizer"] = Json::object();
    root["pre_tokenizer"]["type"] = Json("Sequence");
    root["pre_tokenizer"]["pretokenizers"] = Json::array();
    root["pre_tokenizer"]["pretokenizers"].push_back(good.at("pre_tokenizer"));
    write_file(path, root.dump());
    const BpeTokenizer wrapped = BpeTokenizer::from_tokenizer_json(path);
    write_file(path, good.dump());
    EXPECT_EQ(wrapped.encode(" Hello  world's 42!"), BpeTokenizer::from_tokenizer_json(path).encode(" Hello  world's 42!"));
  }
  {  // a model without "type" that has merges is a BPE, as tokenizers reads it
    Json model = Json::object();
    for (const auto& [key, value] : good.at("model").items())
      if (key != "type") model[key] = value;
    root = good;
    root["model"] = model;
    write_file(path, root.dump());
    const BpeTokenizer untyped = BpeTokenizer::from_tokenizer_json(path);
    write_file(path, good.dump());
    EXPECT_EQ(untyped.encode("Hello world, again!"), BpeTokenizer::from_tokenizer_json(path).encode("Hello world, again!"));
    Json bare = Json::object();
    bare["vocab"] = good.at("model").at("vocab");
    root["model"] = bare;
    expect_rejected(root, {"no \"type\""});
  }
  root = good;
  root["post_processor"] = Json::parse(R"({"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]})");
  expect_rejected(root, {"RobertaProcessing"});
  // A Split with a pattern we do not read, or another behaviour, or without the ByteLevel after it.
  const Json llama = Json::parse(sae::testing::read_file(sae::testing::ref_path("tokenizers/llama3/tokenizer.json")));
  const auto with_pre = [&](const std::string& key, const Json& value, size_t which) {
    Json r = llama;
    Json list = Json::array();
    for (size_t i = 0; i < 2; ++i) {
      Json part = llama.at("pre_tokenizer").at("pretokenizers").at(i);
      if (i == which) part[key] = value;
      list.push_back(part);
    }
    r["pre_tokenizer"]["pretokenizers"] = list;
    return r;
  };
  expect_rejected(with_pre("pattern", Json::parse(R"({"Regex": "\\p{L}+|\\s+"})"), 0), {"Split", "not one we read"});
  expect_rejected(with_pre("pattern", Json::parse(R"({"String": " "})"), 0), {"Split", "Regex"});
  expect_rejected(with_pre("behavior", Json("Removed"), 0), {"Removed"});
  expect_rejected(with_pre("use_regex", Json(true), 1), {"use_regex"});
  root = good;
  root["model"]["vocab"]["\u0120zzz"] = 17;  // an id that "\u0120" + something else already has
  expect_rejected(root, {"id 17", "used by both"});
  root = good;
  root["model"]["vocab"]["hello world"] = 5000;  // a space is not in the byte alphabet
  expect_rejected(root, {"hello world", "byte alphabet"});

  // A merge whose part, or whose result, is not in the vocabulary.
  const auto with_first_merge = [&](const Json& merge) {
    Json r = good;
    Json merges = Json::array();
    merges.push_back(merge);
    for (const Json& m : good.at("model").at("merges").elements()) merges.push_back(m);
    r["model"]["merges"] = merges;
    return r;
  };
  Json pair = Json::array();
  pair.push_back("qqq");
  pair.push_back("e");
  expect_rejected(with_first_merge(pair), {"model.merges[0]", "\"qqq\" is not in the vocab"});
  expect_rejected(with_first_merge(Json("z q")), {"model.merges[0]", "result \"zq\" is not in the vocab"});
  expect_rejected(with_first_merge(Json("xy")), {"model.merges[0]", "two tokens"});
  expect_rejected(with_first_merge(Json(3)), {"model.merges[0]"});
  root = good;
  root["model"].operator[]("vocab") = Json::object();
  expect_rejected(root, {"no token for byte"});
  root = good;
  root["model"]["merges"] = Json("nope");
  expect_rejected(root, {"model.merges"});
}

TEST(TokenizerErrors, CorruptVocabOrMergesNamesTheFile) {
  TempDir dir("tok_corrupt_files");
  const std::string vocab = dir.str("vocab.json"), merges = dir.str("merges.txt");
  SmallModel good{{"ab"}, {"a b"}};
  const auto load = [&](const std::string& vocab_text, const std::string& merges_text) {
    write_file(vocab, vocab_text);
    write_file(merges, merges_text);
    return BpeTokenizer::from_files(vocab, merges);
  };
  EXPECT_EQ(load(good.vocab_json(), good.merges_txt()).encode("ab"), (std::vector<int32_t>{257}));

  expect_error<DataError>([&] { BpeTokenizer::from_files(dir.str("none.json"), merges); }, {dir.str("none.json")});
  expect_error<DataError>([&] { BpeTokenizer::from_files(vocab, dir.str("none.txt")); }, {dir.str("none.txt")});
  expect_error<DataError>([&] { load("{\"a\": 1,}", good.merges_txt()); }, {vocab, "JSON parse error"});
  expect_error<DataError>([&] { load("[1, 2]", good.merges_txt()); }, {vocab, "object"});
  expect_error<DataError>([&] { load("{\"a\": 1, \"a\": 2}", good.merges_txt()); }, {vocab, "duplicate"});
  expect_error<DataError>([&] { load("{\"a\": 1.5}", good.merges_txt()); }, {vocab, "not an integer"});

  std::string vocab_text = good.vocab_json();
  vocab_text.insert(vocab_text.size() - 1, ",\"zz\":65");  // 65 is "A"'s id
  expect_error<DataError>([&] { load(vocab_text, good.merges_txt()); }, {vocab, "id 65 is used by both"});
  vocab_text = good.vocab_json();
  vocab_text.insert(vocab_text.size() - 1, ",\"zz\":-4");
  expect_error<DataError>([&] { load(vocab_text, good.merges_txt()); }, {vocab, "-4"});

  SmallModel no_eot = good;
  std::string without_eot = no_eot.vocab_json();
  const size_t at = without_eot.find(",\"<|endoftext|>\":256");
  ASSERT_NE(at, std::string::npos);
  without_eot.erase(at, std::string(",\"<|endoftext|>\":256").size());
  expect_error<DataError>([&] { load(without_eot, good.merges_txt()); }, {vocab, kEot});

  expect_error<DataError>([&] { load(good.vocab_json(), "#version: 0.2\na b\nb c\n"); }, {merges, "line 3", "\"bc\" is not in the vocab"});
  expect_error<DataError>([&] { load(good.vocab_json(), "#version: 0.2\na b\nab q x\n"); }, {merges, "line 3", "two tokens"});
  expect_error<DataError>([&] { load(good.vocab_json(), "a b\nab zz\n"); }, {merges, "line 2", "\"zz\" is not in the vocab"});
  // Windows line ends and a missing last newline are fine.
  EXPECT_EQ(load(good.vocab_json(), "#version: 0.2\r\na b").encode("ab"), (std::vector<int32_t>{257}));
}

// ---- concurrency ----

TEST(TokenizerCache, ConcurrentEncodingGivesTheWitnessIds) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_tokenizer_json(ref("tokenizer.json"));  // a cold cache
  const std::vector<Case>& cases = fixture_cases();
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = 0; i < cases.size(); ++i) {
        const size_t j = (i * 7 + static_cast<size_t>(k) * 1013) % cases.size();
        if (tokenizer.encode(cases[j].text) != cases[j].ids) ++failures[k];
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(failures[k], 0) << "thread " << k;
}

// ---- the other byte-level BPE families (tests/ref/tokenizers, scripts/gen_bpe_tokenizer_fixtures.py) ----

namespace {

struct FamilyCases {
  std::vector<int32_t> bos;
  std::vector<Case> cases;
};

FamilyCases family_cases(const std::string& name) {
  FamilyCases out;
  std::istringstream lines(sae::testing::read_file(sae::testing::ref_path("tokenizers/" + name + "/cases.jsonl")));
  std::string line;
  std::getline(lines, line);
  const Json head = Json::parse(line);  // (a temporary in the loop's range would die before the body)
  for (const Json& id : head.at("bos").elements()) out.bos.push_back(static_cast<int32_t>(id.as_int()));
  while (std::getline(lines, line)) {
    const Json j = Json::parse(line);
    Case c;
    c.text = j.at("text").as_string();
    for (const Json& id : j.at("ids").elements()) c.ids.push_back(static_cast<int32_t>(id.as_int()));
    for (const Json& n : j.at("pieces").elements()) c.piece_bytes.push_back(static_cast<size_t>(n.as_int()));
    out.cases.push_back(std::move(c));
  }
  return out;
}

}  // namespace

// Llama 3's and Qwen 2's Split patterns, NFC, ignore_merges, normalized and special added tokens,
// the BOS a TemplateProcessing adds: ids and pre-tokenizer pieces of every case as `tokenizers` gives them.
TEST(TokenizerFamilies, LlamaQwenAndNeoxStyleTokenizersMatchTokenizersOnEveryCase) {
  const struct {
    const char* name;
    SplitPattern pattern;
    bool nfc;
  } families[] = {{"llama3", SplitPattern::Llama3, false}, {"qwen2", SplitPattern::Qwen2, true},
                  {"neox", SplitPattern::Gpt2, true}};
  for (const auto& f : families) {
    SCOPED_TRACE(f.name);
    const BpeTokenizer t = BpeTokenizer::from_model_dir(sae::testing::ref_path(std::string("tokenizers/") + f.name));
    EXPECT_EQ(t.pattern(), f.pattern);
    EXPECT_EQ(t.normalizes_nfc(), f.nfc);
    const FamilyCases fc = family_cases(f.name);
    EXPECT_EQ(t.bos_prefix(), fc.bos);
    ASSERT_GT(fc.cases.size(), 1500u);
    size_t id_failures = 0, piece_failures = 0;
    for (size_t i = 0; i < fc.cases.size(); ++i) {
      const Case& c = fc.cases[i];
      const std::vector<int32_t> ids = t.encode(c.text, cat("case ", i));
      if (ids != c.ids && ++id_failures <= 8)
        ADD_FAILURE() << f.name << " case " << i << " " << Json(c.text).dump() << "\n  expected " << ids_text(c.ids)
                      << "\n  got      " << ids_text(ids);
      std::vector<std::string_view> got;
      pre_tokenize(f.pattern, c.text, got);
      std::vector<size_t> lengths;
      for (std::string_view p : got) lengths.push_back(p.size());
      if (lengths != c.piece_bytes && ++piece_failures <= 8)
        ADD_FAILURE() << f.name << " case " << i << " " << Json(c.text).dump() << ": pre-tokenizer pieces differ";
    }
    EXPECT_EQ(id_failures, 0u) << f.name << ": ids of " << id_failures << " of " << fc.cases.size() << " cases differ";
    EXPECT_EQ(piece_failures, 0u);
  }
  // The BOS / EOS the folders name: Llama 3's post-processor, NeoX's tokenizer_config.json.
  const BpeTokenizer llama = BpeTokenizer::from_model_dir(sae::testing::ref_path("tokenizers/llama3"));
  EXPECT_EQ(llama.bos_id(), 1024);
  EXPECT_EQ(llama.token_text(llama.bos_id()), "<|begin_of_text|>");
  const BpeTokenizer neox = BpeTokenizer::from_model_dir(sae::testing::ref_path("tokenizers/neox"));
  EXPECT_TRUE(neox.bos_prefix().empty());
  EXPECT_EQ(neox.token_text(neox.bos_id()), "<|endoftext|>");
  EXPECT_EQ(neox.eot_id(), neox.bos_id());
  const BpeTokenizer qwen = BpeTokenizer::from_model_dir(sae::testing::ref_path("tokenizers/qwen2"));
  EXPECT_EQ(qwen.bos_id(), -1);  // Qwen 2 names no BOS
}

// The Llama 3 pattern's rules, with pieces worked out by hand from the regex.
TEST(TokenizerFamilies, Llama3PatternRulesByHand) {
  const auto cut = [](SplitPattern p, std::string_view text) {
    std::vector<std::string_view> views;
    pre_tokenize(p, text, views);
    return std::vector<std::string>(views.begin(), views.end());
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(cut(SplitPattern::Llama3, "12345 678"), (V{"123", "45", " ", "678"}));
  EXPECT_EQ(cut(SplitPattern::Qwen2, "123"), (V{"1", "2", "3"}));
  EXPECT_EQ(cut(SplitPattern::Llama3, "DON'T"), (V{"DON", "'T"}));
  EXPECT_EQ(cut(SplitPattern::Llama3, "!hello world"), (V{"!hello", " world"}));
  EXPECT_EQ(cut(SplitPattern::Llama3, "a  \n\n  b"), (V{"a", "  \n\n", " ", " b"}));
  EXPECT_EQ(cut(SplitPattern::Llama3, "...\n\nx"), (V{"...\n\n", "x"}));
  EXPECT_EQ(cut(SplitPattern::Llama3, "\nhello"), (V{"\n", "hello"}));
  EXPECT_EQ(cut(SplitPattern::Llama3, "\thello"), (V{"\thello"}));
  EXPECT_EQ(cut(SplitPattern::Llama3, " 42"), (V{" ", "42"}));
  EXPECT_EQ(cut(SplitPattern::Gpt2, " 42"), (V{" 42"}));
  EXPECT_EQ(split_pattern_of_regex(split_pattern_regex(SplitPattern::Qwen2)), SplitPattern::Qwen2);
  EXPECT_FALSE(split_pattern_of_regex("\\s+").has_value());
}

// ignore_merges: a piece the vocabulary holds whole is that token, even when the merges would
// stop short of it (here "abc": merges give "ab" + "c").
TEST(TokenizerFamilies, IgnoreMergesTakesWholePieces) {
  TempDir dir("tok_ignore_merges");
  Json root = Json::object();
  Json model = Json::object();
  model["type"] = "BPE";
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet_char(b)] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab["bc"] = 258;
  model["vocab"] = vocab;
  model["merges"] = Json::parse(R"([["a", "b"], ["b", "c"]])");
  root["model"] = model;
  root["pre_tokenizer"] = Json::parse(R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})");
  for (bool ignore : {false, true}) {
    root["model"]["ignore_merges"] = ignore;
    write_file(dir.str("tokenizer.json"), root.dump());
    const BpeTokenizer t = BpeTokenizer::from_tokenizer_json(dir.str("tokenizer.json"));
    const std::vector<int32_t> want = ignore ? std::vector<int32_t>{257} : std::vector<int32_t>{256, 'c'};
    EXPECT_EQ(t.encode("abc"), want) << ignore;
    EXPECT_EQ(t.encode("abcd"), (std::vector<int32_t>{256, 'c', 'd'})) << "abcd is not in the vocabulary";
    EXPECT_EQ(t.eot_id(), -1);  // no <|endoftext|>: generation then never stops early
  }
}

TEST(TokenizerFamilies, IgnoreMergesTakesWholePiecesInSentencePieceStyleFiles) {
  // As a Mistral v0.3 file (Metaspace "first"): "ab" is the word "▁ab", which the merges make
  // "▁a" "b"; with ignore_merges the vocabulary's whole "▁ab" is taken (tokenizers' rule).
  TempDir dir("tok_sp_ignore_merges");
  Json root = Json::parse(R"({"model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
      "vocab": {"<unk>": 0, "\u2581": 1, "a": 2, "b": 3, "c": 4, "\u2581a": 5, "ab": 6, "\u2581ab": 7},
      "merges": [["\u2581", "a"], ["a", "b"]]},
    "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false}})");
  for (bool ignore : {false, true}) {
    root["model"]["ignore_merges"] = ignore;
    write_file(dir.str("tokenizer.json"), root.dump());
    const BpeTokenizer t = BpeTokenizer::from_tokenizer_json(dir.str("tokenizer.json"));
    const std::vector<int32_t> want = ignore ? std::vector<int32_t>{7} : std::vector<int32_t>{5, 3};
    EXPECT_EQ(t.encode("ab"), want) << ignore;
    EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{5, 3, 4})) << "abc is not in the vocabulary";
  }
}

// NFC by hand: composition, Hangul by formula, reordering of marks, compatibility characters left
// alone, singletons decomposed, and Unicode 16's new composites left uncomposed as tokenizers does.
TEST(TokenizerFamilies, NfcByHand) {
  using unicode::nfc;
  EXPECT_EQ(nfc("e\xcc\x81"), "\xc3\xa9");                                   // e + U+0301 -> é
  EXPECT_EQ(nfc("A\xcc\x8a"), "\xc3\x85");                                   // A + ring -> Å
  EXPECT_EQ(nfc("\xe2\x84\xab"), "\xc3\x85");                                // U+212B ANGSTROM SIGN -> Å
  EXPECT_EQ(nfc("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8"), "\xea\xb0\x81");    // jamo G A G -> 각
  EXPECT_EQ(nfc("a\xcc\x82\xcc\xa3"), "\xe1\xba\xad");                       // a + circumflex + dot below -> ậ
  EXPECT_EQ(nfc("a\xcc\xa3\xcc\x82"), "\xe1\xba\xad");                       // the same, marks in the other order
  EXPECT_EQ(nfc("\xef\xac\x81"), "\xef\xac\x81");                            // ﬁ: compatibility only, kept
  EXPECT_EQ(nfc("plain ascii text"), "plain ascii text");
  EXPECT_EQ(nfc("\xf0\x90\x97\x92\xcc\x87"), "\xf0\x90\x97\x92\xcc\x87");    // U+105D2 + U+0307: new in 16, kept
  EXPECT_EQ(unicode::combining_class(0x301), 230);
  EXPECT_EQ(unicode::combining_class(0x41), 0);
}
