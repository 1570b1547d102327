// Json value, strict recursive-descent parser (RFC 8259) and serializer.
#include "io/json.h"

#include "io/mapped_file.h"
#include "io/utf8.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <unordered_set>

namespace sae {

namespace {
constexpr int kMaxDepth = 512;
constexpr double kMaxExactInt = static_cast<double>(kJsonMaxExactInteger);
}  // namespace

// ---- parser (a friend of Json so objects can append members without a lookup) ----

class JsonParser {
 public:
  JsonParser(const std::string& text, size_t max_values) : text_(text), max_values_(max_values) {}

  Json parse_document() {
    skip_whitespace();
    Json value = parse_value(0);
    skip_whitespace();
    if (pos_ != text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw DataError(cat("JSON parse error at line ", line, ", column ", column, " (byte ", pos_, "): ", what));
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  void skip_whitespace() {
    while (!at_end()) {
      char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  void expect_char(char c, const char* what) {
    if (peek() != c) fail(at_end() ? cat("unexpected end of input, ", what) : cat(what, ", found '", describe_char(peek()), "'"));
    ++pos_;
  }

  static std::string describe_char(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      return buf;
    }
    return std::string(1, c);
  }

  void expect_word(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (text_.compare(pos_, n, word) != 0) fail(cat("invalid literal, expected '", word, "'"));
    pos_ += n;
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail(cat("nesting deeper than ", kMaxDepth, " levels"));
    if (++values_ > max_values_) fail(cat("more than ", max_values_, " values (refused: a file of this kind holds far fewer)"));
    if (at_end()) fail("unexpected end of input, expected a value");
    char c = peek();
    switch (c) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': return Json(parse_string());
      case 't': expect_word("true"); return Json(true);
      case 'f': expect_word("false"); return Json(false);
      case 'n': expect_word("null"); return Json();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return Json(parse_number());
        fail(cat("expected a value, found '", describe_char(c), "'"));
    }
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    Json object = Json::object();
    std::unordered_set<std::string> seen;
    skip_whitespace();
    if (peek() == '}') {
      ++pos_;
      return object;
    }
    while (true) {
      skip_whitespace();
      if (peek() != '"') fail(at_end() ? "unexpected end of input, expected an object key" : "expected a string as object key");
      size_t key_pos = pos_;
      std::string key = parse_string();
      if (!seen.insert(key).second) {
        pos_ = key_pos;
        fail(cat("duplicate object key \"", printable(key), "\""));
      }
      skip_whitespace();
      expect_char(':', "expected ':' after object key");
      skip_whitespace();
      Json value = parse_value(depth + 1);
      object.object_.emplace_back(std::move(key), std::move(value));
      skip_whitespace();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect_char('}', "expected ',' or '}' in object");
      return object;
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    Json array = Json::array();
    skip_whitespace();
    if (peek() == ']') {
      ++pos_;
      return array;
    }
    while (true) {
      skip_whitespace();
      array.push_back(parse_value(depth + 1));
      skip_whitespace();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect_char(']', "expected ',' or ']' in array");
      return array;
    }
  }

  // Grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  double parse_number() {
    size_t start = pos_;
    auto digits = [&]() {
      size_t n = 0;
      while (!at_end() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        ++pos_;
        ++n;
      }
      return n;
    };
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (peek() >= '0' && peek() <= '9') fail("leading zeros are not allowed in numbers");
    } else if (digits() == 0) {
      fail("expected a digit");
    }
    if (peek() == '.') {
      ++pos_;
      if (digits() == 0) fail("expected a digit after the decimal point");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (digits() == 0) fail("expected a digit in the exponent");
    }
    double value = 0.0;
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    auto result = std::from_chars(first, last, value);
    if (result.ec == std::errc::result_out_of_range) {
      pos_ = start;
      fail(cat("number ", std::string(first, last), " is out of the double range"));
    }
    if (result.ec != std::errc() || result.ptr != last) {
      pos_ = start;
      fail("invalid number");
    }
    return value;
  }

  unsigned read_hex4() {
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      if (at_end()) fail("unexpected end of input in \\u escape");
      char c = text_[pos_];
      unsigned digit;
      if (c >= '0' && c <= '9') digit = c - '0';
      else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
      else fail("expected 4 hex digits after \\u");
      value = value * 16 + digit;
      ++pos_;
    }
    return value;
  }

  // Copies one raw UTF-8 sequence starting at pos_, rejecting malformed, overlong and surrogate
  // encodings.
  void copy_utf8(std::string& out) {
    size_t checked = 0;
    const size_t length = utf8::sequence_length(text_, pos_, checked);
    if (length == 0) fail("invalid UTF-8 in string");
    out.append(text_, pos_, length);
    pos_ += length;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail("control character in string (must be escaped)");
      if (c >= 0x80) {
        copy_utf8(out);
        continue;
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      ++pos_;  // backslash
      if (at_end()) fail("unterminated escape in string");
      char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t code = read_hex4();
          if (code >= 0xDC00 && code <= 0xDFFF) fail("lone low surrogate in \\u escape");
          if (code >= 0xD800 && code <= 0xDBFF) {
            // A high surrogate must be followed by an escaped low surrogate (UTF-16 pair).
            if (text_.compare(pos_, 2, "\\u") != 0) fail("high surrogate not followed by a \\u low surrogate");
            pos_ += 2;
            uint32_t low = read_hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("high surrogate not followed by a low surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          utf8::append(code, out);
          break;
        }
        default:
          --pos_;
          fail(cat("invalid escape '\\", describe_char(e), "' in string"));
      }
    }
  }

  const std::string& text_;
  size_t max_values_;
  size_t values_ = 0;
  size_t pos_ = 0;
};

// ---- serializer ----

namespace {

void dump_string(std::string& out, const std::string& s) {
  // (Raw bytes would make a file that no JSON reader, ours included, reads back.)
  if (!utf8::is_valid(s)) throw Error(cat("JSON: cannot write \"", printable(s), "\": it is not UTF-8 text"));
  out += '"';
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;  // UTF-8 bytes pass through
        }
    }
  }
  out += '"';
}

void dump_number(std::string& out, double value) {
  if (!std::isfinite(value)) throw Error(cat("JSON: cannot write ", value, " (NaN and Inf have no JSON form)"));
  char buf[64];
  std::to_chars_result result;
  if (value == std::floor(value) && std::fabs(value) <= kMaxExactInt) {
    // Integers print as integers ("768", not "768.0" or "7.68e+02"); -0.0 stays "-0".
    if (value == 0.0 && std::signbit(value)) return void(out += "-0");
    result = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(value));
  } else {
    result = std::to_chars(buf, buf + sizeof buf, value);  // shortest round-trip form
  }
  out.append(buf, result.ptr);
}

void newline(std::string& out, int indent, int depth) {
  out += '\n';
  out.append(static_cast<size_t>(indent) * depth, ' ');
}

}  // namespace

// ---- Json ----

Json Json::array() {
  Json j;
  j.type_ = Type::Array;
  return j;
}

Json Json::object() {
  Json j;
  j.type_ = Type::Object;
  return j;
}

const char* Json::type_name() const {
  switch (type_) {
    case Type::Null: return "null";
    case Type::Bool: return "bool";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

void Json::expect(Type type) const {
  if (type_ == type) return;
  Json wanted;
  wanted.type_ = type;
  const char* article = (type == Type::Array || type == Type::Object) ? "an " : "a ";
  throw DataError(cat("JSON: expected ", article, wanted.type_name(), ", found ", type_name()));
}

bool Json::as_bool() const {
  expect(Type::Bool);
  return bool_;
}

double Json::as_number() const {
  expect(Type::Number);
  return number_;
}

int64_t Json::as_int() const {
  expect(Type::Number);
  if (number_ != std::floor(number_) || std::fabs(number_) > kMaxExactInt)
    throw DataError(cat("JSON: expected an integer (|x| <= 2^53), found ", number_));
  return static_cast<int64_t>(number_);
}

const std::string& Json::as_string() const {
  expect(Type::String);
  return string_;
}

size_t Json::size() const {
  if (type_ == Type::Object) return object_.size();
  expect(Type::Array);
  return array_.size();
}

const Json& Json::at(size_t index) const {
  expect(Type::Array);
  if (index >= array_.size()) throw DataError(cat("JSON: index ", index, " out of range for an array of ", array_.size()));
  return array_[index];
}

const std::vector<Json>& Json::elements() const {
  expect(Type::Array);
  return array_;
}

void Json::push_back(Json value) {
  if (type_ == Type::Null) type_ = Type::Array;
  expect(Type::Array);
  array_.push_back(std::move(value));
}

bool Json::has(const std::string& key) const {
  expect(Type::Object);
  for (const auto& item : object_)
    if (item.first == key) return true;
  return false;
}

void Json::erase(const std::string& key) {
  expect(Type::Object);
  for (auto it = object_.begin(); it != object_.end(); ++it)
    if (it->first == key) {
      object_.erase(it);
      return;
    }
}

const Json& Json::at(const std::string& key) const {
  expect(Type::Object);
  for (const auto& item : object_)
    if (item.first == key) return item.second;
  throw DataError(cat("JSON: missing key \"", key, "\""));
}

Json& Json::operator[](const std::string& key) {
  if (type_ == Type::Null) type_ = Type::Object;
  expect(Type::Object);
  for (auto& item : object_)
    if (item.first == key) return item.second;
  object_.emplace_back(key, Json());
  return object_.back().second;
}

const std::vector<std::pair<std::string, Json>>& Json::items() const {
  expect(Type::Object);
  return object_;
}

bool Json::operator==(const Json& other) const {
  if (type_ != other.type_) return false;
  switch (type_) {
    case Type::Null: return true;
    case Type::Bool: return bool_ == other.bool_;
    case Type::Number: return number_ == other.number_;
    case Type::String: return string_ == other.string_;
    case Type::Array: return array_ == other.array_;
    case Type::Object: return object_ == other.object_;  // order matters
  }
  return false;
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

void Json::dump_to(std::string& out, int indent, int depth) const {
  switch (type_) {
    case Type::Null: out += "null"; return;
    case Type::Bool: out += bool_ ? "true" : "false"; return;
    case Type::Number: dump_number(out, number_); return;
    case Type::String: dump_string(out, string_); return;
    case Type::Array:
      out += '[';
      for (size_t i = 0; i < array_.size(); ++i) {
        if (i > 0) out += ',';
        if (indent >= 0) newline(out, indent, depth + 1);
        array_[i].dump_to(out, indent, depth + 1);
      }
      if (indent >= 0 && !array_.empty()) newline(out, indent, depth);
      out += ']';
      return;
    case Type::Object:
      out += '{';
      for (size_t i = 0; i < object_.size(); ++i) {
        if (i > 0) out += ',';
        if (indent >= 0) newline(out, indent, depth + 1);
        dump_string(out, object_[i].first);
        out += indent >= 0 ? ": " : ":";
        object_[i].second.dump_to(out, indent, depth + 1);
      }
      if (indent >= 0 && !object_.empty()) newline(out, indent, depth);
      out += '}';
      return;
  }
}

Json Json::parse(const std::string& text, size_t max_values) { return JsonParser(text, max_values).parse_document(); }

Json read_json_file(const std::string& path, size_t max_bytes, size_t max_values) {
  const std::string text = read_small_file(path, max_bytes);
  try {
    return Json::parse(text, max_values);
  } catch (const DataError& e) {
    throw DataError(cat(path, ": ", e.what()));
  }
}

namespace {
std::string cut(const std::string& text) { return text.size() <= 80 ? text : text.substr(0, 77) + "..."; }

bool difference_at(const Json& was, const Json& now, const std::string& path, std::string& out) {
  if (was == now) return false;
  if (was.is_object() && now.is_object()) {
    for (const auto& [key, value] : was.items()) {
      const std::string inner = path.empty() ? key : path + "." + key;
      if (!now.has(key)) {
        out = cat(inner, ": ", cut(value.dump()), " (was) / (absent) (now)");
        return true;
      }
      if (difference_at(value, now.at(key), inner, out)) return true;
    }
    for (const auto& [key, value] : now.items())
      if (!was.has(key)) {
        out = cat(path.empty() ? key : path + "." + key, ": (absent) (was) / ", cut(value.dump()), " (now)");
        return true;
      }
  }
  if (was.is_array() && now.is_array() && was.size() == now.size()) {
    for (size_t i = 0; i < was.size(); ++i)
      if (difference_at(was.at(i), now.at(i), cat(path, "[", i, "]"), out)) return true;
  }
  out = cat(path.empty() ? "the value" : path, ": ", cut(was.dump()), " (was) / ", cut(now.dump()), " (now)");
  return true;
}
}  // namespace

std::string first_difference(const Json& was, const Json& now) {
  std::string out;
  difference_at(was, now, "", out);
  return out;
}

}  // namespace sae
