// StoryReader (see text_data.h).
#include "lm/text_data.h"

#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/json.h"
#include "io/mapped_file.h"
#include "io/utf8.h"
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

// Python's str.isspace(): what str.strip() removes (the ASCII white space and separators
// U+001C..U+001F, NEL, NBSP and the Unicode spaces).
bool python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// The byte of `s`'s (valid UTF-8) first character that is not white space as Python sees it; npos
// when there is none.
size_t first_not_python_space(std::string_view s) {
  size_t at = 0, length = 0;
  while (at < s.size() && python_space(utf8::decode(s, at, length))) at += length;
  return at < s.size() ? at : std::string_view::npos;
}

// `s` (valid UTF-8) without the white space around it, as Python's s.strip().
std::string trimmed(const std::string& s) {
  const size_t lead = first_not_python_space(s);
  if (lead == std::string_view::npos) return "";
  size_t first = lead, end = s.size(), length = 0;
  while (end > first) {
    size_t start = end - 1;
    while (start > first && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;  // the last character's lead
    if (!python_space(utf8::decode(s, start, length))) break;
    end = start;
  }
  return s.substr(first, end - first);
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
  int64_t start = position_.byte_offset;  // where this story's lines begin (for the size message)
  int64_t text_start = -1;                // the corpus byte its trimmed text starts at, once seen
  const auto add = [&](std::string_view part, int64_t part_start) {
    check_story_utf8(part, part_start);
    const size_t lead = first_not_python_space(part);  // (a story of white space alone is no story)
    if (text_start < 0 && lead != std::string_view::npos) text_start = part_start + static_cast<int64_t>(lead);
    text += part;
  };
  const auto finish = [&] {
    story.index = position_.next_story++;
    story.text = trimmed(text);
    story.where = cat(path_, " story ", story.index, " (its text from byte ", text_start, " of the corpus)");
  };
  while (true) {
    const int64_t line_start = position_.byte_offset;
    if (!read_line(line)) break;
    const size_t at = line.find(kSeparator);
    if (at == std::string::npos) {
      add(line, line_start);
      text += '\n';
      if (static_cast<int64_t>(text.size()) > kMaxStoryBytes)
        throw DataError(cat(path_, ": the story at byte ", start, " is longer than ", kMaxStoryBytes,
                            " bytes (are its stories separated by ", kSeparator, "?)"));
      continue;
    }
    // The story ends at the separator; reading goes on right after it (usually the next line).
    add(std::string_view(line).substr(0, at), line_start);
    const int64_t after = line_start + static_cast<int64_t>(at + kSeparatorSize);
    if (after < position_.byte_offset && !blank(line.substr(at + kSeparatorSize))) {
      pending_ = line.substr(at + kSeparatorSize);  // the next story starts on this line
      has_pending_ = true;
      position_.byte_offset = after;
    }
    if (text_start >= 0) {
      finish();
      return true;
    }
    text.clear();
    start = position_.byte_offset;
  }
  if (text_start < 0) return false;  // the end of the file, after the last separator
  finish();
  return true;
}

// Plain text is checked line by line as read, so that an invalid byte is named by its offset in the
// corpus (a story's text has lost its lines' '\r', and the tokenizer sees only the text).
void StoryReader::check_story_utf8(std::string_view part, int64_t part_start) const {
  std::string reason;
  const size_t pos = first_invalid_utf8(part, reason);
  if (pos != std::string_view::npos)
    throw DataError(cat(path_, " story ", position_.next_story, ": invalid UTF-8 at byte ",
                        part_start + static_cast<int64_t>(pos), " of the corpus: ", reason));
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
