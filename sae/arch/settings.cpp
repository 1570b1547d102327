// ArchOption's codec and ArchSettings (see settings.h).
#include "sae/arch/settings.h"

#include <charconv>

#include "tensor/error.h"

namespace sae {

namespace {
[[noreturn]] void bad_value(const std::string& option, const std::string& expected, const std::string& text) {
  throw UsageError(cat("--", option, ": expected ", expected, ", got '", text, "'"));
}

std::string number_text(double v) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, v);  // shortest exact form
  return std::string(buffer, result.ptr);
}

// An integer within +-2^53 (config.json's numbers are doubles: a larger one is not recorded exactly).
bool parse_integer(const std::string& text, int64_t& v) {
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  return !text.empty() && r.ec == std::errc() && r.ptr == text.data() + text.size() && v <= kJsonMaxExactInteger &&
         v >= -kJsonMaxExactInteger;
}

std::string choices_text(const std::vector<std::string>& choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) out += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  return out;
}
}  // namespace

Json ArchOption::parse(const std::string& text) const {
  switch (type) {
    case ArchValueType::Integer: {
      int64_t v = 0;
      if (!parse_integer(text, v)) bad_value(name, "an integer", text);
      return Json(v);
    }
    case ArchValueType::Number: {
      double v = 0;
      const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
      if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size()) bad_value(name, "a number", text);
      return Json(v);
    }
    case ArchValueType::Choice:
      for (const std::string& c : choices)
        if (c == text) return Json(text);
      bad_value(name, choices_text(choices), text);
    case ArchValueType::IntegerList: {
      Json list = Json::array();
      size_t begin = 0;
      while (begin <= text.size() && !text.empty()) {
        const size_t comma = text.find(',', begin);
        const std::string item = text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
        int64_t v = 0;
        if (!parse_integer(item, v)) bad_value(name, "comma-separated integers", text);
        list.push_back(Json(v));
        if (comma == std::string::npos) break;
        begin = comma + 1;
      }
      return list;
    }
  }
  throw Error("ArchOption: unknown type");
}

std::string ArchOption::text(const Json& value) const {
  switch (type) {
    case ArchValueType::Integer: return std::to_string(value.as_int());
    case ArchValueType::Number: return number_text(value.as_number());
    case ArchValueType::Choice: return value.as_string();
    case ArchValueType::IntegerList: {
      std::string out;
      for (const Json& v : value.elements()) {
        if (!out.empty()) out += ',';
        out += std::to_string(v.as_int());
      }
      return out;
    }
  }
  return "";
}

Json ArchOption::from_json(const Json& value) const {
  try {
    switch (type) {
      case ArchValueType::Integer: return Json(value.as_int());
      case ArchValueType::Number: return Json(value.as_number());
      case ArchValueType::Choice: return parse(value.as_string());
      case ArchValueType::IntegerList: {
        Json list = Json::array();
        for (const Json& v : value.elements()) list.push_back(Json(v.as_int()));
        return list;
      }
    }
  } catch (const Error& e) {
    throw DataError(cat("config key '", json_key, "': ", e.what()));
  }
  throw Error("ArchOption: unknown type");
}

void ArchSettings::set(const std::string& name, Json value) {
  for (auto& [key, v] : values_)
    if (key == name) {
      v = std::move(value);
      return;
    }
  values_.push_back({name, std::move(value)});
}

bool ArchSettings::has(const std::string& name) const {
  for (const auto& [key, v] : values_)
    if (key == name) return true;
  return false;
}

const Json& ArchSettings::at(const std::string& name) const {
  for (const auto& [key, v] : values_)
    if (key == name) return v;
  throw Error(cat("architecture settings: no value for --", name));
}

int64_t ArchSettings::integer(const std::string& name) const { return at(name).as_int(); }
double ArchSettings::number(const std::string& name) const { return at(name).as_number(); }
const std::string& ArchSettings::text(const std::string& name) const { return at(name).as_string(); }

std::vector<int64_t> ArchSettings::integers(const std::string& name) const {
  std::vector<int64_t> out;
  for (const Json& v : at(name).elements()) out.push_back(v.as_int());
  return out;
}

bool ArchSettings::toggle(const std::string& name, bool when_auto) const {
  const std::string& v = text(name);
  return v == "auto" ? when_auto : v == "on";
}

}  // namespace sae
