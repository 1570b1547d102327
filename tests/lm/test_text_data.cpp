// StoryReader (lm/text_data.h): TinyStories' .txt (separated by <|endoftext|>) and JSON lines,
// plain and compressed (gzip, zstd: io/line_reader.h), another text field, empty stories skipped,
// white space trimmed, positions that resume exactly, and bad files (one line each).
#include <gtest/gtest.h>

#include <zlib.h>
#include <zstd.h>

#include <fstream>
#include <string>
#include <vector>

#include "lm/text_data.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::expect_error;
using sae::testing::TempDir;

namespace {

std::vector<std::string> all_stories(StoryReader& reader) {
  std::vector<std::string> out;
  TextStory s;
  while (reader.next(s)) {
    EXPECT_EQ(s.index, static_cast<int64_t>(out.size()));
    out.push_back(s.text);
  }
  return out;
}

// `bytes` written gzip- or zstd-compressed (zstd in two frames, as some tools write it) to path.
void write_compressed(const std::string& path, const std::string& bytes, bool zstd) {
  if (!zstd) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    gzclose(f);
    return;
  }
  std::string out;
  for (const std::string& part : {bytes.substr(0, bytes.size() / 3), bytes.substr(bytes.size() / 3)}) {
    std::string frame(ZSTD_compressBound(part.size()), '\0');
    const size_t n = ZSTD_compress(frame.data(), frame.size(), part.data(), part.size(), 3);
    ASSERT_FALSE(ZSTD_isError(n));
    out += frame.substr(0, n);
  }
  std::ofstream(path, std::ios::binary) << out;
}

}  // namespace

TEST(StoryReader, ReadsTinyStoriesText) {
  TempDir dir("text_txt");
  const std::string path = dir.str("stories.txt");
  std::ofstream(path) << "Once upon a time, a cat.\nIt was happy.\n<|endoftext|>\n"
                         "\n<|endoftext|>\n"                           // an empty story: skipped
                         "  Tom had a ball. \r\nHe threw it.\r\n<|endoftext|>\r\n"  // CRLF read as Python's text mode
                         "Lily ran.<|endoftext|>The dog barked.\n"      // a separator inside a line
                         "<|endoftext|>\n"
                         // white space as Python's str.strip() sees it: NBSP, U+3000, U+2028, U+001C, NEL
                         "\u00a0\u3000Mia\u00a0sang.\u2028\x1c\u0085\n<|endoftext|>\n"
                         "\u00a0\n\u3000<|endoftext|>\n"  // white space alone: no story (nor a story number)
                         "Last story without a separator.\n";
  StoryReader reader(path);
  EXPECT_FALSE(reader.is_jsonl());
  const std::vector<std::string> stories = all_stories(reader);
  const std::vector<std::string> want = {"Once upon a time, a cat.\nIt was happy.", "Tom had a ball. \nHe threw it.", "Lily ran.",
                                         "The dog barked.", "Mia\u00a0sang.", "Last story without a separator."};
  EXPECT_EQ(stories, want);
}

TEST(StoryReader, ALineContinuedAfterASeparatorResumesAsRead) {
  // fuzz_text_corpus: the rest of a line after a separator, ending in "\r\r", lost a second "\r"
  // when it was read on, but not when a resumed reader read it from the file.
  TempDir dir("text_resume_crlf");
  const std::string path = dir.str("s.txt");
  std::ofstream(path, std::ios::binary) << "A<|endoftext|>B\r\r\nC\r\n<|endoftext|>\r\nD\n";
  StoryReader whole(path);
  const std::vector<std::string> everything = all_stories(whole);
  ASSERT_EQ(everything.size(), 3u);
  EXPECT_EQ(everything[1], "B\r\nC");  // CRLF read as LF; the lone CR before it is kept
  StoryReader first(path);
  TextStory s;
  ASSERT_TRUE(first.next(s));
  StoryReader second(path);
  second.seek(first.position());
  ASSERT_TRUE(second.next(s));
  EXPECT_EQ(s.text, everything[1]);
}

TEST(StoryReader, PositionsResumeExactly) {
  TempDir dir("text_resume");
  for (const std::string name : {"s.txt", "s.jsonl"}) {
    const std::string path = dir.str(name);
    {
      std::ofstream out(path);
      for (int i = 0; i < 40; ++i) {
        const std::string text = "Story number " + std::to_string(i) + (i % 3 ? " with more words." : ".");
        if (name == "s.txt")
          out << text << (i % 5 == 0 ? "<|endoftext|>" : "\n<|endoftext|>\n");
        else
          out << "{\"text\": \"" << text << "\", \"id\": " << i << "}\n";
      }
    }
    StoryReader whole(path);
    const std::vector<std::string> everything = all_stories(whole);
    ASSERT_EQ(everything.size(), 40u) << name;
    // Stop after every story in turn, save the position, and continue in a new reader.
    for (size_t cut = 0; cut <= everything.size(); cut += 7) {
      StoryReader first(path);
      TextStory s;
      for (size_t i = 0; i < cut; ++i) ASSERT_TRUE(first.next(s));
      const TextPosition at = first.position();
      EXPECT_EQ(at.next_story, static_cast<int64_t>(cut));
      StoryReader second(path);
      second.seek(at);
      std::vector<std::string> rest;
      while (second.next(s)) {
        EXPECT_EQ(s.index, static_cast<int64_t>(cut + rest.size())) << name;
        rest.push_back(s.text);
      }
      EXPECT_EQ(rest, std::vector<std::string>(everything.begin() + cut, everything.end())) << name << " cut " << cut;
    }
  }
}

TEST(StoryReader, ReadsJsonLinesAndRefusesBadOnes) {
  TempDir dir("text_jsonl");
  const std::string path = dir.str("stories.jsonl");
  std::ofstream(path) << "{\"text\": \"A \\u00e9clair.\", \"source\": \"x\"}\n\n{\"text\": \"  \"}\n{\"text\": \"Two.\"}\n";
  StoryReader reader(path);
  EXPECT_TRUE(reader.is_jsonl());
  EXPECT_EQ(all_stories(reader), (std::vector<std::string>{"A \xc3\xa9" "clair.", "Two."}));
  for (const std::string& bad : {std::string("{\"title\": \"no text\"}\n"), std::string("[1, 2]\n"),
                                 std::string("{\"text\": 3}\n"), std::string("{\"text\": \"a\"\n")}) {
    const std::string p = dir.str("bad.jsonl");
    std::ofstream(p, std::ios::trunc) << "{\"text\": \"fine\"}\n" << bad;
    StoryReader r(p);
    TextStory s;
    ASSERT_TRUE(r.next(s));
    try {
      r.next(s);
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(p + ": the line at byte 17"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(StoryReader(dir.str("missing.txt")), DataError);
}

// An invalid byte of plain text is named by its offset in the corpus, whatever the line ends (a
// story's text has lost its lines' '\r'), and by the story it is in; a story's place is where its
// trimmed text starts. The expected offsets are counted in the bytes written.
TEST(StoryReader, InvalidUtf8IsNamedByItsByteInTheCorpus) {
  TempDir dir("text_utf8");
  for (const std::string eol : {"\n", "\r\n"}) {
    const std::string first = "First story." + eol + "<|endoftext|>" + eol;
    const std::string second_lines = "  Line one." + eol + "Line two." + eol + "Bad ";
    const std::string bytes = first + second_lines + "\xE2\x82 here." + eol + "<|endoftext|>x<|endoftext|>\xFF" + eol;
    const std::string path = dir.str("bad.txt");
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    StoryReader reader(path);
    TextStory s;
    ASSERT_TRUE(reader.next(s));
    EXPECT_EQ(s.where, path + " story 0 (its text from byte 0 of the corpus)");
    const size_t bad = first.size() + second_lines.size();
    ASSERT_EQ(bytes.substr(bad, 2), "\xE2\x82");
    expect_error<DataError>([&] { reader.next(s); },
                            {path + " story 1: invalid UTF-8 at byte " + std::to_string(bad) + " of the corpus",
                             "not a continuation byte"});
    // After the separator, the same line holds a good story; the next line's byte belongs to story 2.
    StoryReader after(path);
    after.seek(TextPosition{1, static_cast<int64_t>(bytes.find("<|endoftext|>x") + 13)});
    ASSERT_TRUE(after.next(s));
    EXPECT_EQ(s.text, "x");
    EXPECT_EQ(s.where, path + " story 1 (its text from byte " + std::to_string(bytes.find("x<|endoftext|>\xFF")) +
                           " of the corpus)");
    expect_error<DataError>([&] { after.next(s); },
                            {path + " story 2: invalid UTF-8 at byte " + std::to_string(bytes.rfind('\xFF')) +
                                 " of the corpus: byte 0xFF never occurs in UTF-8"});
  }
  // A story's place counts leading white space and CRs of earlier lines.
  const std::string path = dir.str("crlf.txt");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "a\r\n<|endoftext|>\r\n\r\n   b\r\n";
  StoryReader reader(path);
  TextStory s;
  ASSERT_TRUE(reader.next(s));
  ASSERT_TRUE(reader.next(s));
  EXPECT_EQ(s.text, "b");
  EXPECT_EQ(s.where, path + " story 1 (its text from byte 23 of the corpus)");
}

// The same stories from .jsonl, .jsonl.gz and .jsonl.zst (and a .txt.gz), large enough to span
// many decompression blocks; positions saved in a compressed file resume exactly.
TEST(StoryReader, CompressedFilesGiveTheSameStoriesAndResume) {
  TempDir dir("text_compressed");
  std::string jsonl, txt;
  for (int i = 0; i < 3000; ++i) {
    const std::string text = "Story " + std::to_string(i) + std::string(static_cast<size_t>(i % 97), 'x') + " \u00e9nd.";
    jsonl += "{\"id\": " + std::to_string(i) + ", \"content\": \"" + text + "\"}\n";
    txt += "Story " + std::to_string(i) + "<|endoftext|>" + (i % 2 ? "\n" : "");
  }
  std::ofstream(dir.str("plain.jsonl")) << jsonl;
  write_compressed(dir.str("s.jsonl.gz"), jsonl, false);
  write_compressed(dir.str("s.jsonl.zst"), jsonl, true);
  write_compressed(dir.str("s.txt.gz"), txt, false);
  StoryReader plain(dir.str("plain.jsonl"), "content");
  const std::vector<std::string> want = all_stories(plain);
  ASSERT_EQ(want.size(), 3000u);
  EXPECT_EQ(want[5], "Story 5xxxxx \xc3\xa9nd.");
  for (const char* name : {"s.jsonl.gz", "s.jsonl.zst"}) {
    SCOPED_TRACE(name);
    StoryReader reader(dir.str(name), "content");
    EXPECT_TRUE(reader.is_jsonl());
    EXPECT_EQ(all_stories(reader), want);
    StoryReader first(dir.str(name), "content");
    TextStory s;
    for (int i = 0; i < 1234; ++i) ASSERT_TRUE(first.next(s));
    const TextPosition at = first.position();
    StoryReader second(dir.str(name), "content");
    second.seek(at);
    ASSERT_TRUE(second.next(s));
    EXPECT_EQ(s.index, 1234);
    EXPECT_EQ(s.text, want[1234]);
    // Without --text-field content, the lines have no "text".
    StoryReader wrong_field(dir.str(name));
    try {
      wrong_field.next(s);
      ADD_FAILURE() << "no error";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("no \"text\" field"), std::string::npos) << e.what();
    }
  }
  StoryReader txt_reader(dir.str("s.txt.gz"));
  EXPECT_FALSE(txt_reader.is_jsonl());
  const std::vector<std::string> stories = all_stories(txt_reader);
  ASSERT_EQ(stories.size(), 3000u);
  EXPECT_EQ(stories[2999], "Story 2999");
}

TEST(StoryReader, CorruptCompressedFilesAreOneLineErrors) {
  TempDir dir("text_corrupt");
  std::string jsonl;
  for (int i = 0; i < 5000; ++i) jsonl += "{\"text\": \"Story " + std::to_string(i) + " of many words here.\"}\n";
  for (bool zstd : {false, true}) {
    const std::string path = dir.str(zstd ? "s.jsonl.zst" : "s.jsonl.gz");
    write_compressed(path, jsonl, zstd);
    std::string bytes = sae::testing::read_file(path);
    const std::string truncated = dir.str(zstd ? "t.jsonl.zst" : "t.jsonl.gz");
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    const std::string garbled = dir.str(zstd ? "g.jsonl.zst" : "g.jsonl.gz");
    for (size_t i = bytes.size() / 3; i < bytes.size() / 3 + 64; ++i) bytes[i] = static_cast<char>(bytes[i] ^ 0x5A);
    std::ofstream(garbled, std::ios::binary) << bytes;
    for (const std::string& bad : {truncated, garbled}) {
      try {
        StoryReader reader(bad);
        TextStory s;
        while (reader.next(s)) {
        }
        ADD_FAILURE() << bad << ": read to the end without an error";
      } catch (const DataError& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find(bad), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      }
    }
  }
}
