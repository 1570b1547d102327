// Fuzzes text corpora (lm/text_data.h StoryReader over io/line_reader.h): the input is written as a
// file read as JSON lines and as TinyStories text (gzip or zstd when its magic bytes say so). Every
// story read must be non-empty with increasing indices; a position saved halfway must resume to the
// same remaining stories; bad input may only end in a one-line error.
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "lm/text_data.h"

using namespace sae;

namespace {

void check(const std::string& path) {
  std::vector<std::string> stories;
  std::vector<TextPosition> positions;
  const bool read = fuzz::attempt([&] {
    StoryReader reader(path);
    TextStory s;
    while (stories.size() < 2000) {
      positions.push_back(reader.position());
      if (!reader.next(s)) break;
      fuzz::require(s.index == static_cast<int64_t>(stories.size()), "story indices are not consecutive");
      fuzz::require(!s.text.empty(), "an empty story was served");
      stories.push_back(s.text);
    }
  });
  if (!read || stories.empty()) return;
  const size_t half = stories.size() / 2;
  fuzz::attempt([&] {
    StoryReader reader(path);
    reader.seek(positions[half]);
    TextStory s;
    for (size_t i = half; i < stories.size(); ++i) {
      fuzz::require(reader.next(s), "a resumed reader ends early");
      fuzz::require(s.text == stories[i] && s.index == static_cast<int64_t>(i), "a resumed reader serves other stories");
    }
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  check(fuzz::write_scratch_file("corpus.jsonl", bytes));
  check(fuzz::write_scratch_file("corpus.txt", bytes));
  return 0;
}
