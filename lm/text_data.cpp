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

}  // namespace

StoryReader::StoryReader(const std::string& path) : path_(path) {
  jsonl_ = ends_with(path, ".jsonl") || ends_with(path, ".json");
  const int fd = open_regular_file(path);  // a FIFO or a directory is refused here, never waited on
  file_ = ::fdopen(fd, "rb");
  if (!file_) {
    const int saved = errno;
    ::close(fd);
    throw DataError(cat("cannot open ", path, ": ", std::strerror(saved)));
  }
}

StoryReader::~StoryReader() {
  if (file_) std::fclose(file_);
}

void StoryReader::seek(const TextPosition& position) {
  if (position.next_story < 0 || position.byte_offset < 0 ||
      std::fseek(file_, static_cast<long>(position.byte_offset), SEEK_SET) != 0)
    throw DataError(cat(path_, ": cannot continue at story ", position.next_story, ", byte ", position.byte_offset));
  position_ = position;
  line_ = 0;
}

bool StoryReader::read_line(std::string& line) {
  line.clear();
  int c = std::getc(file_);
  if (c == EOF) {
    if (std::ferror(file_)) throw DataError(cat(path_, ": read error: ", std::strerror(errno)));
    return false;
  }
  while (c != EOF && c != '\n') {
    line.push_back(static_cast<char>(c));
    if (static_cast<int64_t>(line.size()) > kMaxStoryBytes)
      throw DataError(cat(path_, ": a line at byte ", position_.byte_offset, " is longer than ", kMaxStoryBytes,
                          " bytes (not a text corpus?)"));
    c = std::getc(file_);
  }
  if (c == EOF && std::ferror(file_)) throw DataError(cat(path_, ": read error: ", std::strerror(errno)));
  position_.byte_offset += static_cast<int64_t>(line.size()) + (c == '\n' ? 1 : 0);
  ++line_;
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
    if (after < position_.byte_offset && !blank(line.substr(at + kSeparatorSize))) seek({position_.next_story, after});
    if (!blank(text)) {
      story.index = position_.next_story++;
      story.text = trimmed(text);
      story.where = cat(path_, " story ", story.index, " (byte ", start, ")");
      return true;
    }
    text.clear();
    start = position_.byte_offset;
  }
  if (blank(text)) return false;  // the end of the file, after the last separator
  story.index = position_.next_story++;
  story.text = trimmed(text);
  story.where = cat(path_, " story ", story.index, " (byte ", start, ")");
  return true;
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
      if (!record.has("text")) throw DataError("no \"text\" field");
      story.text = record.at("text").as_string();
    } catch (const DataError& e) {
      throw DataError(cat(path_, ": the line at byte ", start, ": ", e.what()));
    }
    if (blank(story.text)) continue;  // an empty story, skipped like one without tokens
    story.index = position_.next_story++;
    story.where = cat(path_, " story ", story.index, " (byte ", start, ")");
    return true;
  }
}

}  // namespace sae
