// The architecture units' options: the rows a unit adds to the one table of training options
// (sae/train/options.cpp turns each ArchOption into a row) and ArchSettings, the values a unit reads,
// by option name. A unit turns its settings into its own typed struct once, where it makes its step,
// its reference or its parameters (docs/architectures.md "Adding an architecture").
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"

namespace sae {

enum class ArchValueType { Integer, Number, Choice, IntegerList };

// One option row of a unit (or of a family of units: topk's k is read by three).
struct ArchOption {
  std::string name;      // command-line name without the dashes ("jumprelu-bandwidth")
  std::string json_key;  // its key in config.json
  std::string help;
  ArchValueType type = ArchValueType::Number;
  std::string default_text;          // the default, as the command line would give it
  std::vector<std::string> choices = {};  // Choice: the allowed words
  std::string when_missing = "";     // read when config.json lacks the key ("": the default)
  std::string implicit_value = "";   // what "--name" alone means ("": a value must follow)

  Json parse(const std::string& text) const;  // UsageError naming --name
  std::string text(const Json& value) const;  // as the command line gives it
  Json from_json(const Json& value) const;    // config.json's value, type-checked (DataError)
  Json default_value() const { return parse(default_text); }
};

// Option values by name, each stored as JSON (numbers, words, lists of integers).
class ArchSettings {
 public:
  void set(const std::string& name, Json value);
  bool has(const std::string& name) const;
  const Json& at(const std::string& name) const;  // Error naming the option when it was never set
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  const std::string& text(const std::string& name) const;
  std::vector<int64_t> integers(const std::string& name) const;
  // A toggle ("auto" | "on" | "off") resolved: "auto" means `when_auto`.
  bool toggle(const std::string& name, bool when_auto) const;
  const std::vector<std::pair<std::string, Json>>& items() const { return values_; }
  bool operator==(const ArchSettings& other) const { return values_ == other.values_; }

 private:
  std::vector<std::pair<std::string, Json>> values_;
};

}  // namespace sae
