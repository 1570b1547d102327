// SentencePiece-style BPE tokenizers (lm/tokenizer.h) against Hugging Face's `tokenizers`: fixtures
// in tests/ref/tokenizers/sp_{llama2,gemma,mistral,metaspace,split_first,split_never}, made by
// scripts/gen_sp_tokenizer_fixtures.py (one vocabulary trained with `tokenizers` on local text, set up
// as Llama 2, Gemma, newer Llama / Mistral files and older Metaspace conversions ship theirs, and
// Metaspace split with the "first" and "never" schemes over merges across a "▁"):
//   - ids of every case (every script, emoji, white space runs, "▁" itself, characters outside the
//     vocabulary: byte pieces or <unk>, special tokens written in the text) equal `tokenizers`';
//   - decode(ids) equals `tokenizers`' decode where its decoder turns byte pieces into bytes (the
//     Metaspace decoder leaves them as "<0xNN>" text; there the cases without byte pieces are compared);
//   - decode of byte pieces cut short or broken under a ByteFallback decoder (decode_cases.jsonl);
//   - the BOS the post-processor adds, and the folders' EOS;
//   - rules worked out by hand on the same files (the prepend schemes, byte fallback, fused <unk>).
// The Gemma 2 model fixture's tokenizer (tests/ref/models/gemma2) is checked to load with its <bos>.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "io/json.h"
#include "lm/tokenizer.h"
#include "tensor/error.h"
#include "tests/util/test_util.h"

using namespace sae;

namespace {

struct SpCase {
  std::string text, decoded;
  std::vector<int32_t> ids;
};

struct SpCases {
  std::vector<int32_t> bos;
  int64_t vocab_size = 0;
  std::vector<SpCase> cases;
};

SpCases sp_cases(const std::string& name) {
  SpCases out;
  std::istringstream lines(sae::testing::read_file(sae::testing::ref_path("tokenizers/" + name + "/cases.jsonl")));
  std::string line;
  std::getline(lines, line);
  const Json head = Json::parse(line);
  for (const Json& id : head.at("bos").elements()) out.bos.push_back(static_cast<int32_t>(id.as_int()));
  out.vocab_size = head.at("vocab_size").as_int();
  while (std::getline(lines, line)) {
    const Json j = Json::parse(line);
    SpCase c;
    c.text = j.at("text").as_string();
    c.decoded = j.at("decoded").as_string();
    for (const Json& id : j.at("ids").elements()) c.ids.push_back(static_cast<int32_t>(id.as_int()));
    out.cases.push_back(std::move(c));
  }
  return out;
}

std::string ids_text(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

BpeTokenizer sp_tokenizer(const std::string& name) {
  return BpeTokenizer::from_model_dir(sae::testing::ref_path("tokenizers/" + name));
}

// True when `tokenizers`' decoded text shows a byte piece written out ("<0x..>") that the text did not
// hold: the Metaspace decoder's way of leaving byte pieces (ours turns them into their bytes).
bool shows_byte_piece(const SpCase& c) {
  return c.decoded.find("<0x") != std::string::npos && c.text.find("<0x") == std::string::npos;
}

}  // namespace

TEST(SentencePieceTokenizer, EveryCaseMatchesTokenizers) {
  const struct {
    const char* name;
    bool decoder_reads_bytes;  // ByteFallback in the decoder (Llama 2, Gemma); Metaspace's does not
    size_t min_cases;
  } families[] = {{"sp_llama2", true, 1500},   {"sp_gemma", true, 1500},       {"sp_mistral", false, 1500},
                  {"sp_metaspace", false, 1500}, {"sp_split_first", false, 500}, {"sp_split_never", false, 500}};
  for (const auto& f : families) {
    SCOPED_TRACE(f.name);
    const BpeTokenizer t = sp_tokenizer(f.name);
    EXPECT_TRUE(t.sentencepiece());
    const SpCases sc = sp_cases(f.name);
    EXPECT_EQ(t.vocab_size(), sc.vocab_size);
    EXPECT_EQ(t.bos_prefix(), sc.bos);
    ASSERT_GT(sc.cases.size(), f.min_cases);
    size_t id_failures = 0, decode_failures = 0, decoded_compared = 0;
    for (size_t i = 0; i < sc.cases.size(); ++i) {
      const SpCase& c = sc.cases[i];
      const std::vector<int32_t> ids = t.encode(c.text, cat("case ", i));
      if (ids != c.ids && ++id_failures <= 8)
        ADD_FAILURE() << f.name << " case " << i << " " << Json(c.text).dump() << "\n  expected " << ids_text(c.ids)
                      << "\n  got      " << ids_text(ids);
      // HF's decode writes U+FFFD for bytes that are not valid UTF-8; ours returns the bytes.
      if (c.decoded.find("\xEF\xBF\xBD") != std::string::npos) continue;
      if (!f.decoder_reads_bytes && shows_byte_piece(c)) continue;
      ++decoded_compared;
      const std::string decoded = t.decode(c.ids);
      if (decoded != c.decoded && ++decode_failures <= 8)
        ADD_FAILURE() << f.name << " case " << i << " " << Json(c.text).dump() << ": decoded "
                      << Json(decoded).dump() << ", tokenizers " << Json(c.decoded).dump();
    }
    EXPECT_EQ(id_failures, 0u) << f.name << ": ids of " << id_failures << " of " << sc.cases.size() << " cases differ";
    EXPECT_EQ(decode_failures, 0u);
    EXPECT_GT(decoded_compared, sc.cases.size() / 4);
    std::printf("%-13s %zu cases: ids equal; decode compared on %zu\n", f.name, sc.cases.size(), decoded_compared);
  }
}

// A generation cut short ends in part of a character's byte pieces: `tokenizers`' ByteFallback decoder
// gives one U+FFFD per piece of a run that is not valid UTF-8 (the valid characters in the run too),
// where a byte-level decoder gives one per broken sequence.
TEST(SentencePieceTokenizer, BrokenByteRunsDecodeAsTokenizersDoes) {
  for (const char* name : {"sp_llama2", "sp_gemma"}) {
    SCOPED_TRACE(name);
    const BpeTokenizer t = sp_tokenizer(name);
    std::istringstream lines(
        sae::testing::read_file(sae::testing::ref_path(std::string("tokenizers/") + name + "/decode_cases.jsonl")));
    std::string line;
    size_t cases = 0, broken = 0;
    while (std::getline(lines, line)) {
      const Json j = Json::parse(line);
      std::vector<int32_t> ids;
      for (const Json& id : j.at("ids").elements()) ids.push_back(static_cast<int32_t>(id.as_int()));
      const std::string want = j.at("decoded").as_string();
      EXPECT_EQ(t.decode(ids), want) << line;
      ++cases;
      if (want.find("\xEF\xBF\xBD") != std::string::npos) ++broken;
    }
    EXPECT_EQ(cases, 16u);
    EXPECT_GE(broken, 10u);
  }
}

// The rules by hand, on the same files: what a leading "▁" does under each prepend scheme, byte
// fallback for a character outside the vocabulary, <unk> fused or not, the BOS and EOS of the folders.
TEST(SentencePieceTokenizer, PrependSchemesByteFallbackAndUnkByHand) {
  const BpeTokenizer llama2 = sp_tokenizer("sp_llama2"), mistral = sp_tokenizer("sp_mistral"),
                     gemma = sp_tokenizer("sp_gemma"), meta = sp_tokenizer("sp_metaspace");
  const std::string space = "\xE2\x96\x81";
  // Llama 2's Prepend normalizer puts "▁" before every segment, even one that starts with a space.
  const std::vector<int32_t> a = llama2.encode("a");
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(llama2.token_text(a[0]), " a");
  const std::vector<int32_t> sa = llama2.encode(" a");
  ASSERT_EQ(sa.size(), 2u);
  EXPECT_EQ(llama2.token_text(sa[0]), " ");
  EXPECT_EQ(sa[1], a[0]);
  // ... and after a special token too; Mistral's "first" only at the start of the text.
  const std::vector<int32_t> l2 = llama2.encode("a<s>a"), m2 = mistral.encode("a<s>a");
  ASSERT_EQ(l2.size(), 3u);
  EXPECT_EQ(l2[2], a[0]);
  EXPECT_EQ(l2[1], 1);
  ASSERT_EQ(m2.size(), 3u);
  EXPECT_EQ(mistral.token_text(m2[2]), "a");
  EXPECT_EQ(mistral.encode(" a"), mistral.encode("a"));  // "first": no second "▁" before a leading space
  // Gemma writes no "▁" in front.
  const std::vector<int32_t> g = gemma.encode("a");
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(gemma.token_text(g[0]), "a");
  // A character outside the vocabulary: its UTF-8 bytes as byte pieces (Gemma's <0x..> are ids 4..259).
  const std::vector<int32_t> cjk = gemma.encode("\xE4\xB8\xAD");  // U+4E2D
  EXPECT_EQ(cjk, (std::vector<int32_t>{4 + 0xE4, 4 + 0xB8, 4 + 0xAD}));
  EXPECT_EQ(gemma.decode(cjk), "\xE4\xB8\xAD");
  // Without byte fallback (Metaspace file, fuse_unk false): one <unk> per character.
  const std::vector<int32_t> unk = meta.encode("\xE4\xB8\xAD\xE4\xB8\xAD");
  ASSERT_EQ(unk.size(), 3u);  // "▁" then two <unk>
  EXPECT_EQ(unk[1], 0);
  EXPECT_EQ(unk[2], 0);
  EXPECT_EQ(meta.encode(space + "a"), meta.encode("a"));
  // BOS and EOS.
  EXPECT_EQ(llama2.bos_id(), 1);
  EXPECT_EQ(llama2.eot_id(), 2);
  EXPECT_EQ(gemma.bos_id(), 2);
  EXPECT_EQ(gemma.token_text(gemma.eot_id()), "<eos>");
  // The Gemma 2 model fixture's own tokenizer.
  const BpeTokenizer model_tok = BpeTokenizer::from_model_dir(sae::testing::ref_path("models/gemma2"));
  EXPECT_TRUE(model_tok.sentencepiece());
  EXPECT_EQ(model_tok.vocab_size(), 512);
  EXPECT_EQ(model_tok.bos_prefix(), std::vector<int32_t>{2});
}

TEST(SentencePieceTokenizer, RefusalsInOneLine) {
  const std::string path = sae::testing::ref_path("tokenizers/sp_llama2/tokenizer.json");
  const Json good = Json::parse(sae::testing::read_file(path));
  sae::testing::TempDir dir("sp_refusals");
  auto refused = [&](const Json& root, const std::string& needle) {
    const std::string file = dir.str("tokenizer.json");
    {
      std::ofstream out(file, std::ios::binary);
      out << root.dump();
    }
    try {
      BpeTokenizer::from_tokenizer_json(file);
      ADD_FAILURE() << "accepted; expected an error naming " << needle;
    } catch (const DataError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(needle), std::string::npos) << m;
      EXPECT_NE(m.find(file), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  };
  Json root = good;
  root["normalizer"] = Json::parse(R"({"type": "NFKC"})");
  refused(root, "normalizer");
  root = good;
  root["pre_tokenizer"] = Json::parse(R"({"type": "Metaspace", "replacement": "_", "prepend_scheme": "always"})");
  refused(root, "Metaspace");
  root = good;
  root["model"]["unk_token"] = "<nope>";
  refused(root, "<nope>");
  std::string text = good.dump();  // byte piece <0x41> renamed: byte_fallback lacks it
  text.replace(text.find("\"<0x41>\""), 8, "\"<0y41>\"");
  refused(Json::parse(text), "<0x41>");
  // Gemma's Split(" ") inverted would cut the text to nothing in `tokenizers` (it had been ignored).
  const Json gemma = Json::parse(sae::testing::read_file(sae::testing::ref_path("tokenizers/sp_gemma/tokenizer.json")));
  root = gemma;
  ASSERT_EQ(root.at("pre_tokenizer").at("type").as_string(), "Split");
  root["pre_tokenizer"]["invert"] = Json(true);
  root["pre_tokenizer"]["behavior"] = Json("Removed");
  refused(root, "not inverted");
  // A Strip other than Llama 2's (content " ", start 1, stop 0): tokenizers strips what it says, which
  // decode had not modelled (it dropped one leading space whatever the content, and no trailing one).
  ASSERT_EQ(good.at("decoder").at("decoders").elements().back().at("type").as_string(), "Strip");
  for (const char* strip : {R"({"type": "Strip", "content": "x", "start": 1, "stop": 0})",
                            R"({"type": "Strip", "content": " ", "start": 2, "stop": 0})",
                            R"({"type": "Strip", "content": " ", "start": 1, "stop": 1})"}) {
    root = good;
    Json decoders = Json::array();
    for (const Json& d : good.at("decoder").at("decoders").elements())
      decoders.push_back(d.at("type").as_string() == "Strip" ? Json::parse(strip) : d);
    root["decoder"]["decoders"] = decoders;
    refused(root, "decoder Strip: only Strip(\" \", 1, 0)");
  }
  // Llama 2's Strip before its Fuse: tokenizers strips every token (it decoded "Hello world" to
  // "Helloworld"), which decode does not do.
  root = good;
  Json reordered = Json::array();
  for (const Json& d : good.at("decoder").at("decoders").elements())
    if (d.at("type").as_string() != "Fuse") reordered.push_back(d);
  reordered.push_back(Json::parse(R"({"type": "Fuse"})"));
  root["decoder"]["decoders"] = reordered;
  refused(root, "only Strip(\" \", 1, 0) after a Fuse");
}

TEST(SentencePieceTokenizer, AOneElementSequenceIsItsElement) {
  // transformers' own SentencePiece conversion writes the Metaspace pre-tokenizer inside a Sequence.
  const std::string path = sae::testing::ref_path("tokenizers/sp_mistral/tokenizer.json");
  const Json good = Json::parse(sae::testing::read_file(path));
  ASSERT_EQ(good.at("pre_tokenizer").at("type").as_string(), "Metaspace");
  Json root = good;
  root["pre_tokenizer"] = Json::object();
  root["pre_tokenizer"]["type"] = Json("Sequence");
  root["pre_tokenizer"]["pretokenizers"] = Json::array();
  root["pre_tokenizer"]["pretokenizers"].push_back(good.at("pre_tokenizer"));
  sae::testing::TempDir dir("sp_sequence");
  const std::string file = dir.str("tokenizer.json");
  {
    std::ofstream out(file, std::ios::binary);
    out << root.dump();
  }
  const BpeTokenizer wrapped = BpeTokenizer::from_tokenizer_json(file), plain = BpeTokenizer::from_tokenizer_json(path);
  for (const char* text : {"Hello world", "  two  spaces ", "a<s>b", "x"})
    EXPECT_EQ(wrapped.encode(text), plain.encode(text)) << text;
}

TEST(SentencePieceTokenizer, MetaspaceDecoderDropsEveryMarkOfTheFirstToken) {
  // tokenizers' Metaspace decoder (prepend scheme "first" or "always") drops every "▁" of the first
  // token, not one leading space: with a "▁▁" piece, "  a" is ["▁▁", "a"] and decodes to "a". The
  // expected strings are tokenizers 0.23's decode of this file.
  Json root = Json::parse(R"({"version": "1.0", "added_tokens": [{"id": 0, "content": "<unk>", "single_word": false,
      "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 6, "content": "hi there",
      "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
      {"id": 7, "content": "\u2581mk", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,
      "special": false}], "normalizer": null,
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false},
      "post_processor": null,
      "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false},
      "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": false, "ignore_merges": false,
                "vocab": {"<unk>": 0, "\u2581": 1, "\u2581\u2581": 2, "a": 3, "\u2581a": 4, "b": 5},
                "merges": [["\u2581", "\u2581"], ["\u2581", "a"]]}})");
  sae::testing::TempDir dir("sp_metaspace_decode");
  const std::string file = dir.str("tokenizer.json");
  {
    std::ofstream out(file, std::ios::binary);
    out << root.dump();
  }
  const BpeTokenizer tok = BpeTokenizer::from_tokenizer_json(file);
  EXPECT_EQ(tok.encode("  a"), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(tok.decode({2, 3}), "a");
  EXPECT_EQ(tok.decode({2, 2}), "  ");
  EXPECT_EQ(tok.decode({4, 2, 3}), "a  a");
  EXPECT_EQ(tok.decode({3, 2, 3}), "a  a");
  EXPECT_EQ(tok.decode({2, 1}), " ");
  // An added token first keeps its own spaces (only "▁" marks are dropped).
  EXPECT_EQ(tok.encode("hi there a"), (std::vector<int32_t>{6, 4}));
  EXPECT_EQ(tok.decode({6, 4}), "hi there a");
  EXPECT_EQ(tok.decode({6, 2, 3}), "hi there  a");
  // An added token's own "▁" goes through the decoder too (it had stayed a "▁"): a space, or nothing
  // as the first token.
  EXPECT_EQ(tok.decode({7, 3}), "mka");
  EXPECT_EQ(tok.decode({3, 7}), "a mk");
}
