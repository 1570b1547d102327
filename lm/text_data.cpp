// StoryReader (see text_data.h).
#include "lm/text_data.h"

#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/json.h"
#include "io/mapped_file.h"
#include "tensor/error.h"

namespace sae {

namespace {

constexpr const char* kSeparator = "<|endoftext|>";
constexpr size_t kSeparatorSize = 13;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// True when every byte is ASCII white space.
bool blank(const std::string& s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != '\v') return false;
  return true;
}

std::string trimmed(const std::string& s) {
  const char* space = " \t\n\r\f\v";
  const size_t first = s.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(space) - first + 1);
}

// The name without a compression ending says the format.
std::string without_compression(const std::string& path) {
  for (const char* ending : {".gz", ".zst", ".zstd"})
    if (ends_with(path, ending)) return path.substr(0, path.size() - std::strlen(ending));
  return path;
}

}  // namespace

bool is_json_lines_path(const std::string& path) {
  const std::string name = without_compression(path);
  return ends_with(name, ".jsonl") || ends_with(name, ".json");
}

void check_text_field(const std::string& text, const std::string& field) {
  if (field != "text" && !is_json_lines_path(text))  // it would be ignored: plain text has no fields
    throw UsageError(cat("--text-field ", field, " names a field of JSON lines (.jsonl): ", text,
                         " is plain text, stories separated by <|endoftext|>"));
}

StoryReader::StoryReader(const std::string& path, const std::string& text_field)
    : path_(path), text_field_(text_field), lines_(path) {
  jsonl_ = is_json_lines_path(path);
  if (text_field_.empty()) throw UsageError("--text-field must not be empty");
}

StoryReader::~StoryReader() = default;

void StoryReader::seek(const TextPosition& position) {
  if (position.next_story < 0 || position.byte_offset < 0)
    throw DataError(cat(path_, ": cannot continue at story ", position.next_story, ", byte ", position.byte_offset));
  try {
    lines_.seek(position.byte_offset);
  } catch (const DataError& e) {
    throw DataError(cat(path_, ": cannot continue at story ", position.next_story, ", byte ", position.byte_offset, " (",
                        e.what(), ")"));
  }
  position_ = position;
  has_pending_ = false;
}

bool StoryReader::read_line(std::string& line) {
  if (has_pending_) {  // the rest of a line after a separator: it ends where that line ended
    line = std::move(pending_);
    has_pending_ = false;
    position_.byte_offset = lines_.offset();
    return true;
  }
  if (!lines_.read_line(line, kMaxStoryBytes)) return false;
  if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF, as Python's text mode reads it
  position_.byte_offset = lines_.offset();
  return true;
}

bool StoryReader::next(TextStory& story) { return jsonl_ ? next_jsonl(story) : next_txt(story); }

bool StoryReader::next_txt(TextStory& story) {
  std::string text, line;
  int64_t start = position_.byte_offset;
  while (true) {
    const int64_t line_start = position_.byte_offset;
    if (!read_line(line)) break;
    const size_t at = line.find(kSeparator);
    if (at == std::string::npos) {
      text += line;
      text += '\n';
      if (static_cast<int64_t>(text.size()) > kMaxStoryBytes)
        throw DataError(cat(path_, ": the story at byte ", start, " is longer than ", kMaxStoryBytes,
                            " bytes (are its stories separated by ", kSeparator, "?)"));
      continue;
    }
    // The story ends at the separator; reading goes on right after it (usually the next line).
    text += line.substr(0, at);
    const int64_t after = line_start + static_cast<int64_t>(at + kSeparatorSize);
    if (after < position_.byte_offset && !blank(line.substr(at + kSeparatorSize))) {
      pending_ = line.substr(at + kSeparatorSize);  // the next story starts on this line
      has_pending_ = true;
      position_.byte_offset = after;
    }
    if (!blank(text)) {
      story.index = position_.next_story++;
      story.text = trimmed(text);
      story.where = plain_story_where(story.index, start, text);
      return true;
    }
    text.clear();
    start = position_.byte_offset;
  }
  if (blank(text)) return false;  // the end of the file, after the last separator
  story.index = position_.next_story++;
  story.text = trimmed(text);
  story.where = plain_story_where(story.index, start, text);
  return true;
}

// Where a plain-text story is: the byte of the (uncompressed) corpus its trimmed text starts at, so
// that a byte offset into the story's text (a UTF-8 error's) adds up to the corpus's.
std::string StoryReader::plain_story_where(int64_t index, int64_t start, const std::string& untrimmed) const {
  const size_t lead = untrimmed.find_first_not_of(" \t\n\r\f\v");
  return cat(path_, " story ", index, " (its text from byte ", start + static_cast<int64_t>(lead), " of the corpus)");
}

bool StoryReader::next_jsonl(TextStory& story) {
  std::string line;
  while (true) {
    const int64_t start = position_.byte_offset;
    if (!read_line(line)) return false;
    if (blank(line)) continue;
    Json record;
    try {
      record = Json::parse(line, 1 << 16);
      if (!record.is_object()) throw DataError(cat("expected a JSON object, found a ", record.type_name()));
      if (!record.has(text_field_)) throw DataError(cat("no \"", printable(text_field_), "\" field"));
      if (!record.at(text_field_).is_string())
        throw DataError(cat("the \"", printable(text_field_), "\" field is a ", record.at(text_field_).type_name(),
                            ", not a string"));
      story.text = record.at(text_field_).as_string();
    } catch (const DataError& e) {
      throw DataError(cat(path_, ": the line at byte ", start, ": ", e.what()));
    }
    if (blank(story.text)) continue;  // an empty story, skipped like one without tokens
    story.index = position_.next_story++;
    story.where = cat(path_, " story ", story.index, " (the JSON line at byte ", start, ")");
    return true;
  }
}

}  // namespace sae
