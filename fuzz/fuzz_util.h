// What the libFuzzer harnesses share: a scratch directory for the files they build from an input,
// splitting one input into several files, and the checks every harness makes.
//
// The rule the harnesses enforce (docs/fuzzing.md): bad input may only end in a sae::Error
// (DataError, UsageError) whose message is one line without control characters. Any other
// exception, an invariant that does not hold, or a sanitizer report is a finding: the harness
// prints it and aborts, and libFuzzer saves the input.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace sae::fuzz {

// The marker between the files of a multi-file input (checkpoint folders, tokenizer files): the
// parts of "a<marker>b<marker>c" are "a", "b" and "c". fuzz/dict/*.dict list it, so mutations
// can add or remove parts.
inline constexpr std::string_view kPartMarker = "\n=====sae-fuzz-part=====\n";
std::vector<std::string_view> split_parts(const uint8_t* data, size_t size);

// A directory of this process under $TMPDIR (or /tmp), created on first use and removed at exit.
const std::string& scratch_dir();
// Writes bytes to scratch_dir()/relative (creating parent folders) and returns the full path.
std::string write_scratch_file(const std::string& relative, std::string_view bytes);
// Removes scratch_dir()/relative (a file or a folder) if it exists.
void remove_scratch(const std::string& relative);

// Runs body. Returns true when it finished; false when it threw a sae::Error whose message passes
// check_error_message (printed when SAE_FUZZ_VERBOSE is set, to see why a seed is refused).
// Anything else thrown is a finding (fail() with the type and message).
bool attempt(const std::function<void()>& body);

// A finding: prints "fuzz finding: <what>" and aborts.
[[noreturn]] void fail(const std::string& what);
// fail(what) unless ok.
inline void require(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

// The error-message contract: non-empty, one line, no control characters (bytes < 0x20 and 0x7f)
// that would garble a terminal or a log. fail() otherwise, quoting the message with escapes.
// SAE_FUZZ_ALLOW_CONTROL_CHARACTERS (set to anything) skips the character check, to fuzz past
// that class of finding while it is being fixed.
void check_error_message(const std::string& message);

// Bytes made printable for a report: control characters and bytes >= 0x7f as \xNN, at most
// max_bytes of the input.
std::string escaped(std::string_view bytes, size_t max_bytes = 400);

}  // namespace sae::fuzz
