// StoryReader (lm/text_data.h): TinyStories' .txt (separated by <|endoftext|>) and JSON lines,
// empty stories skipped, white space trimmed, positions that resume exactly, and bad files.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "lm/text_data.h"
#include "tests/util/test_util.h"

using namespace sae;
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

}  // namespace

TEST(StoryReader, ReadsTinyStoriesText) {
  TempDir dir("text_txt");
  const std::string path = dir.str("stories.txt");
  std::ofstream(path) << "Once upon a time, a cat.\nIt was happy.\n<|endoftext|>\n"
                         "\n<|endoftext|>\n"                           // an empty story: skipped
                         "  Tom had a ball. \r\n<|endoftext|>\r\n"      // CRLF, spaces trimmed
                         "Lily ran.<|endoftext|>The dog barked.\n"      // a separator inside a line
                         "<|endoftext|>\n"
                         "Last story without a separator.\n";
  StoryReader reader(path);
  EXPECT_FALSE(reader.is_jsonl());
  const std::vector<std::string> stories = all_stories(reader);
  const std::vector<std::string> want = {"Once upon a time, a cat.\nIt was happy.", "Tom had a ball.", "Lily ran.",
                                         "The dog barked.", "Last story without a separator."};
  EXPECT_EQ(stories, want);
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
