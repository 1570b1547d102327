// Fuzzes the JSON parser (io/json.h): any bytes are parsed; a value that parses must print, in the
// compact and the pretty form, to text that parses back to an equal value and prints the same.
#include <string>

#include "fuzz_util.h"
#include "io/json.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  Json value;
  if (!fuzz::attempt([&] { value = Json::parse(text); })) return 0;

  std::string compact, pretty;
  Json from_compact, from_pretty;
  const bool round_trip = fuzz::attempt([&] {
    compact = value.dump();
    pretty = value.dump(2);
    from_compact = Json::parse(compact);
    from_pretty = Json::parse(pretty);
  });
  fuzz::require(round_trip, "a parsed value did not print and parse back");
  fuzz::require(from_compact == value, "compact dump does not parse back to the same value: " + fuzz::escaped(compact));
  fuzz::require(from_pretty == value, "pretty dump does not parse back to the same value: " + fuzz::escaped(pretty));
  fuzz::require(from_compact.dump() == compact, "dump of the re-parsed value differs: " + fuzz::escaped(compact));

  // Typed access on the top level must answer or throw a DataError, never crash.
  fuzz::attempt([&] { (void)value.as_int(); });
  fuzz::attempt([&] { (void)value.as_string(); });
  fuzz::attempt([&] { (void)value.at("__metadata__"); });
  fuzz::attempt([&] { (void)value.at(size_t(0)); });
  return 0;
}
