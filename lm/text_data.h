// StoryReader: the stories of a text corpus, one at a time, streamed from disk (never read whole),
// in one of the two formats TinyStories is distributed in:
//   .txt    stories separated by the line "<|endoftext|>" (TinyStories' TinyStoriesV2-*.txt); each
//           story is the text between two separators with surrounding white space trimmed
//   .jsonl  one JSON object per line with a string field "text" (also .json lines files from
//           datasets' to_json); blank lines are skipped
// Empty stories (nothing but white space) are skipped, as the original skips stories whose token
// list is empty. A story's position (its index among the non-empty stories and the byte offset of
// where reading continues after it) can be saved and restored, so a run over text resumes exactly.
// Errors (a missing file, a line that is not a JSON object with a string "text", a story above the
// size limit) are DataErrors naming the file and the line or byte offset.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace sae {

struct TextStory {
  int64_t index = -1;        // among the corpus's non-empty stories, from 0
  std::string text;          // UTF-8 as in the file (not yet checked: the tokenizer checks it)
  std::string where;         // "FILE story 17 (line 1234)" or "FILE story 17 (byte 98765)", for errors
};

// Where reading continues: the next story's index and the byte offset to read from.
struct TextPosition {
  int64_t next_story = 0;
  int64_t byte_offset = 0;
  bool operator==(const TextPosition& other) const = default;
};

class StoryReader {
 public:
  // A story longer than this many bytes is an error (a file without separators, read as one story).
  static constexpr int64_t kMaxStoryBytes = int64_t(64) << 20;

  explicit StoryReader(const std::string& path);
  ~StoryReader();
  StoryReader(const StoryReader&) = delete;
  StoryReader& operator=(const StoryReader&) = delete;

  // The next non-empty story; false at the end of the file.
  bool next(TextStory& story);
  TextPosition position() const { return position_; }
  void seek(const TextPosition& position);  // a position returned by position(), possibly of another run
  void rewind() { seek(TextPosition{}); }
  const std::string& path() const { return path_; }
  bool is_jsonl() const { return jsonl_; }

 private:
  bool read_line(std::string& line);  // false at the end; the line without its '\n'
  bool next_txt(TextStory& story);
  bool next_jsonl(TextStory& story);

  std::string path_;
  bool jsonl_ = false;
  std::FILE* file_ = nullptr;
  TextPosition position_;
  int64_t line_ = 0;  // lines read so far (for messages), counted from the last seek
};

}  // namespace sae
