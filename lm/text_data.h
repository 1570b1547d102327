// StoryReader: the documents (stories) of a text corpus, one at a time, streamed from disk (never
// read whole), plain or compressed with gzip or zstd (io/line_reader.h; .jsonl.gz, .jsonl.zst as
// the Pile and most dataset dumps ship):
//   .txt    stories separated by "<|endoftext|>" (TinyStories' TinyStoriesV2-*.txt), on a line of
//           its own or inside one (as Python's str.split); each story is the text between two
//           separators with surrounding white space trimmed
//   .jsonl  one JSON object per line with a string field, "text" unless told another (--text-field);
//           also .json lines files from datasets' to_json; blank lines are skipped
// The format is the name without a .gz / .zst / .zstd ending.
// Empty stories (nothing but white space) are skipped, as the original skips stories whose token
// list is empty. A story's position (its index among the non-empty stories and the byte offset of
// where reading continues after it) can be saved and restored, so a run over text resumes exactly.
// Errors (a missing file, a line that is not a JSON object with the string field, a story above the
// size limit, a corrupt compressed file, plain text that is not UTF-8) are DataErrors naming the file
// and the line or byte offset.
// Byte offsets count the decompressed text; resuming in a compressed file reads it again up to there.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "io/line_reader.h"

namespace sae {

// What a corpus may be, for help texts (the formats above).
inline constexpr const char* kCorpusFormats =
    "TinyStories' .txt (stories separated by <|endoftext|>) or JSON lines (--text-field), plain or compressed "
    "(.gz, .zst)";

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

// Whether PATH is read as JSON lines (.jsonl or .json, perhaps .gz / .zst): else plain text.
bool is_json_lines_path(const std::string& path);
// UsageError for a --text-field other than the default with a plain-text corpus (it would be ignored).
void check_text_field(const std::string& text, const std::string& field);

class StoryReader {
 public:
  // A story longer than this many bytes is an error (a file without separators, read as one story).
  static constexpr int64_t kMaxStoryBytes = int64_t(64) << 20;

  explicit StoryReader(const std::string& path, const std::string& text_field = "text");
  ~StoryReader();
  StoryReader(const StoryReader&) = delete;
  StoryReader& operator=(const StoryReader&) = delete;

  // The next non-empty story; false at the end of the file.
  bool next(TextStory& story);
  TextPosition position() const { return position_; }
  int64_t file_offset() const { return lines_.file_offset(); }  // bytes of the file read (for progress)
  void seek(const TextPosition& position);  // a position returned by position(), possibly of another run
  void rewind() { seek(TextPosition{}); }
  const std::string& path() const { return path_; }
  bool is_jsonl() const { return jsonl_; }

 private:
  bool read_line(std::string& line);  // false at the end; the line without its '\n'
  bool next_txt(TextStory& story);
  bool next_jsonl(TextStory& story);
  void check_story_utf8(std::string_view part, int64_t part_start) const;

  std::string path_, text_field_;
  bool jsonl_ = false;
  LineReader lines_;
  TextPosition position_;
  std::string pending_;  // .txt: the rest of a line after a separator, read next
  bool has_pending_ = false;
};

}  // namespace sae
