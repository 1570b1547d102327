// Json: a small JSON value (null, bool, number, string, array, object) with a strict parser and a
// serializer. Used for safetensors headers, SAELens cfg.json and our own config.json.
// Numbers are doubles (integers are exact up to 2^53); objects keep their keys in insertion order.
// Parse errors and type mismatches throw DataError (the text usually comes from a file); callers
// add the file name.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tensor/error.h"

namespace sae {

// The largest integer a JSON number (a double) holds exactly, 2^53: integers beyond it are refused
// by as_int and by the options that config.json records.
constexpr int64_t kJsonMaxExactInteger = int64_t{1} << 53;

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool value) : type_(Type::Bool), bool_(value) {}
  Json(double value) : type_(Type::Number), number_(value) {}
  Json(int value) : type_(Type::Number), number_(value) {}
  Json(int64_t value) : type_(Type::Number), number_(static_cast<double>(value)) {}
  Json(uint64_t value) : type_(Type::Number), number_(static_cast<double>(value)) {}
  Json(const char* value) : type_(Type::String), string_(value) {}
  Json(std::string value) : type_(Type::String), string_(std::move(value)) {}
  static Json array();   // empty array
  static Json object();  // empty object

  Type type() const { return type_; }
  const char* type_name() const;  // "null", "bool", "number", "string", "array", "object"
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; each throws DataError when the value has another type.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;  // also throws unless the number is an integer with |x| <= 2^53
  const std::string& as_string() const;

  // Arrays.
  size_t size() const;  // elements of an array or members of an object
  const Json& at(size_t index) const;
  const std::vector<Json>& elements() const;
  void push_back(Json value);  // a null value becomes an empty array first

  // Objects (keys in insertion order; lookups are linear, objects here are small).
  bool has(const std::string& key) const;
  const Json& at(const std::string& key) const;  // DataError naming the key when missing
  Json& operator[](const std::string& key);      // inserts null when missing; null becomes {}
  void erase(const std::string& key);            // removes the member when present
  const std::vector<std::pair<std::string, Json>>& items() const;

  // Text. indent < 0: compact ({"a":1,"b":[1,2]}); indent >= 0: pretty, like Python's
  // json.dumps(indent=2). Numbers are written in the shortest form that reads back to the same
  // double. NaN and Inf have no JSON form: dump() throws Error.
  std::string dump(int indent = -1) const;
  // Strict RFC 8259: one value, optional surrounding whitespace, valid UTF-8, no duplicate keys,
  // nesting depth at most 512, at most max_values values in all (a reader of a file format passes
  // what the format can plausibly hold, so a hostile file cannot make it build a huge tree). Errors
  // give line, column and byte offset.
  static Json parse(const std::string& text, size_t max_values = size_t(1) << 24);

  bool operator==(const Json& other) const;
  bool operator!=(const Json& other) const { return !(*this == other); }

 private:
  friend class JsonParser;
  void expect(Type type) const;
  void dump_to(std::string& out, int indent, int depth) const;

  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::vector<std::pair<std::string, Json>> object_;
};

// Parses a JSON file (read with read_small_file, io/mapped_file.h); errors name the path.
Json read_json_file(const std::string& path, size_t max_bytes = size_t(64) << 20, size_t max_values = size_t(1) << 20);

// Where two values first differ, for a message: "key.inner[2]: 1 (was) / 2 (now)", each value cut to
// 80 characters; "" when they are equal. A key only one side has reads "(absent)" on the other.
std::string first_difference(const Json& was, const Json& now);

}  // namespace sae
