// Reading a Hugging Face config.json the strict way the model families do (lm/gpt_neo.cpp,
// lm/gpt2.cpp, lm/gpt_neox.cpp): each helper either returns a checked value or throws a one-line
// DataError naming the file (`source`) and the key. Sizes above 2^24 are refused (no model has
// them; they would only allocate absurdly).
#pragma once
#include <cstdint>
#include <string>

#include "io/json.h"

namespace sae {

inline constexpr int64_t kMaxModelSize = int64_t(1) << 24;
inline constexpr int64_t kMaxModelLayers = 4096;

// The key must hold a positive integer (not a bool, a string or null), at most kMaxModelSize.
int64_t positive_int(const Json& config, const std::string& key, const std::string& source);
// Either spelling (Hugging Face's attribute_map aliases, e.g. n_embd / hidden_size); when both are
// present they must agree. Missing both: DataError naming `key`.
int64_t aliased_int(const Json& config, const std::string& key, const std::string& alias, const std::string& source);
// A positive finite number, or `fallback` when the key is absent.
double positive_number_or(const Json& config, const std::string& key, double fallback, const std::string& source);
// true or false, or `fallback` when the key is absent (null counts as absent).
bool bool_or(const Json& config, const std::string& key, bool fallback, const std::string& source);
// A string, or `fallback` when the key is absent (null counts as absent).
std::string string_or(const Json& config, const std::string& key, const std::string& fallback,
                      const std::string& source);
// The rotary settings' object as transformers picks it (convert_rope_params_to_dict): a non-empty
// rope_scaling (the Hub's older files) over rope_parameters; nullptr when neither is set. Its
// rope_type (or the older "type"; rope_type first) in `type`, "default" when it names none.
const Json* rope_settings(const Json& config, const std::string& source, std::string& type);
// config.json must be an object whose model_type is `expected`, of a left-to-right model: an
// `is_causal` other than true (transformers' switch to a bidirectional mask) is refused.
void require_model_type(const Json& config, const std::string& expected, const std::string& source);
// The key must be absent, null or equal to `allowed`; otherwise a DataError saying `why`.
void refuse_unless(const Json& config, const std::string& key, const Json& allowed, const std::string& why,
                   const std::string& source);

}  // namespace sae
