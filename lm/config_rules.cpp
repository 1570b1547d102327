// The config.json helpers of the model families (see config_rules.h).
#include "lm/config_rules.h"
#include "lm/model_family.h"

#include <cmath>

#include "tensor/error.h"

namespace sae {

int64_t positive_int(const Json& config, const std::string& key, const std::string& source) {
  if (!config.has(key)) throw DataError(cat(source, ": missing '", key, "'"));
  const Json& value = config.at(key);
  if (!value.is_number() || value.as_number() != std::floor(value.as_number()))
    throw DataError(cat(source, ": '", key, "' must be a positive integer, got ", value.dump()));
  const double number = value.as_number();
  if (number <= 0) throw DataError(cat(source, ": '", key, "' must be a positive integer, got ", value.dump()));
  if (number > static_cast<double>(kMaxModelSize))
    throw DataError(cat(source, ": '", key, "' is ", value.dump(), ", above the supported ", kMaxModelSize));
  return static_cast<int64_t>(number);
}

void read_standard_sizes(const Json& config, const std::string& source, DecoderConfig& c) {
  c.vocab_size = positive_int(config, "vocab_size", source);
  c.hidden_size = positive_int(config, "hidden_size", source);
  c.num_layers = positive_int(config, "num_hidden_layers", source);
  c.num_heads = positive_int(config, "num_attention_heads", source);
  c.intermediate_size = positive_int(config, "intermediate_size", source);
  c.max_positions = positive_int(config, "max_position_embeddings", source);
  if (c.num_layers > kMaxModelLayers)
    throw DataError(cat(source, ": 'num_hidden_layers' ", c.num_layers, " is above ", kMaxModelLayers));
}

int64_t aliased_int(const Json& config, const std::string& key, const std::string& alias, const std::string& source) {
  const bool has_key = config.has(key), has_alias = config.has(alias);
  if (!has_key && !has_alias) throw DataError(cat(source, ": missing '", key, "'"));
  if (has_key && has_alias && config.at(key) != config.at(alias))
    throw DataError(cat(source, ": '", alias, "' (", config.at(alias).dump(), ") and '", key, "' (",
                        config.at(key).dump(), ") disagree"));
  return positive_int(config, has_key ? key : alias, source);
}

double positive_number_or(const Json& config, const std::string& key, double fallback, const std::string& source) {
  if (!config.has(key)) return fallback;
  const Json& value = config.at(key);
  if (!value.is_number() || !(value.as_number() > 0) || std::isinf(value.as_number()))
    throw DataError(cat(source, ": '", key, "' must be a positive number, got ", value.dump()));
  return value.as_number();
}

bool bool_or(const Json& config, const std::string& key, bool fallback, const std::string& source) {
  if (!config.has(key) || config.at(key).is_null()) return fallback;
  if (!config.at(key).is_bool())
    throw DataError(cat(source, ": '", key, "' must be true or false, got ", config.at(key).dump()));
  return config.at(key).as_bool();
}

std::string string_or(const Json& config, const std::string& key, const std::string& fallback,
                      const std::string& source) {
  if (!config.has(key) || config.at(key).is_null()) return fallback;
  if (!config.at(key).is_string())
    throw DataError(cat(source, ": '", key, "' must be a string, got ", config.at(key).dump()));
  return config.at(key).as_string();
}

const Json* rope_settings(const Json& config, const std::string& source, std::string& type) {
  const Json* rope = nullptr;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!config.has(key) || config.at(key).is_null()) continue;
    if (!config.at(key).is_object())
      throw DataError(cat(source, ": '", key, "' must be an object, got ", config.at(key).dump()));
    if (rope == nullptr && config.at(key).size() > 0) rope = &config.at(key);
  }
  type = "default";
  if (rope)
    for (const char* key : {"rope_type", "type"})
      if (rope->has(key) && rope->at(key).is_string()) {
        type = rope->at(key).as_string();
        break;
      }
  return rope;
}

void require_model_type(const Json& config, const std::string& expected, const std::string& source) {
  if (!config.is_object()) throw DataError(cat(source, ": expected a JSON object, got a ", config.type_name()));
  if (!config.has("model_type") || !config.at("model_type").is_string() ||
      config.at("model_type").as_string() != expected)
    throw DataError(cat(source, ": 'model_type' must be \"", expected, "\", got ",
                        config.has("model_type") ? config.at("model_type").dump() : "nothing"));
  // transformers' general switch: false makes its attention mask bidirectional (under eager attention).
  refuse_unless(config, "is_causal", Json(true), "every model here attends left to right only", source);
}

void refuse_unless(const Json& config, const std::string& key, const Json& allowed, const std::string& why,
                   const std::string& source) {
  if (!config.has(key) || config.at(key).is_null() || config.at(key) == allowed) return;
  throw DataError(cat(source, ": '", key, "' ", config.at(key).dump(), " is not supported (", why, ")"));
}

}  // namespace sae
