// steering_hook, steer and the ways sae_steer shows its result (see steer.h). D width, L layer.
#include "sae/eval/steer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "io/utf8.h"
#include "sae/features/token_text.h"
#include "tensor/ops.h"

namespace sae {

namespace {


bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += !is_continuation(c);
  return n;
}

// Lines of at most `width` code points: words joined by single spaces, a word longer than the
// width cut into pieces; each '\n' of the text starts a new line.
std::vector<std::string> wrap(const std::string& text, int width) {
  std::vector<std::string> lines;
  size_t paragraph_start = 0;
  while (paragraph_start <= text.size()) {
    size_t paragraph_end = text.find('\n', paragraph_start);
    if (paragraph_end == std::string::npos) paragraph_end = text.size();
    std::string line;
    int64_t line_width = 0;
    size_t pos = paragraph_start;
    while (pos < paragraph_end) {
      size_t word_end = text.find(' ', pos);
      if (word_end == std::string::npos || word_end > paragraph_end) word_end = paragraph_end;
      std::string word = text.substr(pos, word_end - pos);
      pos = word_end + 1;
      if (word.empty()) continue;
      while (code_points(word) > width) {  // cut a long word at a character boundary
        if (line_width > 0) {
          lines.push_back(line);
          line.clear();
          line_width = 0;
        }
        size_t cut = 0;
        for (int64_t taken = 0; cut < word.size(); ++cut) {
          if (!is_continuation(static_cast<unsigned char>(word[cut])) && taken++ == width) break;
        }
        lines.push_back(word.substr(0, cut));
        word = word.substr(cut);
      }
      const int64_t w = code_points(word);
      if (line_width > 0 && line_width + 1 + w > width) {
        lines.push_back(line);
        line.clear();
        line_width = 0;
      }
      if (line_width > 0) {
        line += ' ';
        ++line_width;
      }
      line += word;
      line_width += w;
    }
    lines.push_back(line);
    paragraph_start = paragraph_end + 1;
  }
  return lines;
}

Json id_list(const std::vector<int32_t>& ids) {
  Json list = Json::array();
  for (int32_t id : ids) list.push_back(static_cast<int64_t>(id));
  return list;
}

}  // namespace

SiteHooks steering_hook(const HookSite& site, const Tensor& vector) {
  return SiteHooks(site, [vector](Tensor& state) { add_(state, vector); });
}

SteerResult steer(DecoderModel& model, const BpeTokenizer& tokenizer, const SaeAtLayer& sae, const std::string& prompt,
                  const SteerOptions& options) {
  check_strength(options.strength);
  check_generate_options(options.generate);
  if (sae.params.device() != model.device()) throw UsageError("steer: the SAE and the model must be on one device");
  const Tensor vector = mul_scalar(decoder_direction(sae, options.feature), options.strength);
  SteerResult r;
  r.prompt = tokenizer.encode(prompt, "--prompt");
  if (r.prompt.empty() && options.bos < 0)
    throw DataError("--prompt: the prompt is empty (generation needs at least one token)");
  if (options.bos >= 0) r.prompt.insert(r.prompt.begin(), options.bos);
  for (int32_t id : r.prompt)
    if (id >= model.config().vocab_size)
      throw DataError(cat(tokenizer.source(), ": the prompt's token ", id, " is outside the model's vocabulary of ",
                          model.config().vocab_size));
  r.unsteered = generate(model, r.prompt, options.generate);
  r.steered = generate(model, r.prompt, options.generate, steering_hook(sae.site, vector));
  for (auto [continuation, strengths] : {std::pair{&r.unsteered, &r.unsteered_strengths}, {&r.steered, &r.steered_strengths}}) {
    std::vector<int32_t> ids = r.prompt;
    ids.insert(ids.end(), continuation->begin(), continuation->end());
    *strengths = feature_strengths(model, sae, ids, options.bos >= 0, options.feature);
  }
  return r;
}

std::vector<double> feature_strengths(DecoderModel& model, const SaeAtLayer& sae, const std::vector<int32_t>& ids,
                                      bool bos_first, int64_t feature) {
  const double norm = decoder_row_norm(sae, feature);
  const int64_t t = static_cast<int64_t>(ids.size()), skip = bos_first ? 1 : 0;
  if (t <= skip) return {};
  const Tensor x = model.forward_to_site(ids, sae.input_site).clone();
  // A run that kept BOS rows normalised each story with its BOS row: so here, then the row is dropped.
  const bool bos_in_statistics =
      bos_first && sae.kept_bos && sae.normalization == Normalization::Story && !sae.params.transcoder;
  const int64_t features = sae.params.d_sae(), dropped = bos_in_statistics ? 1 : 0;  // f's rows before token 0
  std::vector<double> out(static_cast<size_t>(t - skip));
  const auto column = [&](int64_t first_row, const Tensor& block) {  // the feature's values, block by block
    const Tensor f = block.to(Device::CPU).to(DType::F32);
    for (int64_t r = 0; r < f.size(0); ++r) {
      const int64_t p = first_row + r - dropped;
      if (p < 0) continue;
      out[p] = double(f.data<float>()[r * features + feature]) * norm;
      if (!std::isfinite(out[p]))
        throw DataError(cat(sae.dir, ": feature ", feature, "'s strength is not finite at token ", p,
                            " of the text read back (the SAE's weights overflow float32)"));
    }
  };
  reconstruct(sae, bos_in_statistics || !bos_first ? x : x.slice_rows(1, t), column);
  return out;
}

double largest_strength(const std::vector<double>& strengths) {
  double largest = 0;
  for (double v : strengths) largest = std::max(largest, v);
  return largest;
}

std::string annotated_read_back(const BpeTokenizer& tokenizer, const SteerResult& r, int32_t bos) {
  std::vector<int32_t> ids(r.prompt.begin() + (bos >= 0 ? 1 : 0), r.prompt.end());
  ids.insert(ids.end(), r.steered.begin(), r.steered.end());
  const double max = largest_strength(r.steered_strengths);
  std::string out;
  for (size_t p = 0; p < ids.size() && p < r.steered_strengths.size(); ++p)
    out += display_token(tokenizer.token_text(ids[p])) + " " + activation_block(r.steered_strengths[p], max);
  return out;
}

void check_strength(double strength) {
  if (!std::isfinite(strength) || std::fabs(strength) > std::numeric_limits<float>::max())
    throw UsageError(cat("--strength must be a finite number within float32's range (it is added in float32), got ",
                         strength));
}

std::string display_text(const BpeTokenizer& tokenizer, const std::vector<int32_t>& ids) {
  return display_text(tokenizer.decode(ids));
}

std::string display_text(const std::string& bytes) {
  const std::string text = utf8::replace_invalid(bytes);
  std::string out;
  for (size_t at = 0, length = 0; at < text.size(); at += length) {
    const uint32_t cp = utf8::decode(text, at, length);
    if (cp == '\n' || (cp >= 0x20 && cp != 0x7F && !utf8::acts_on_surrounding_text(cp))) {
      out.append(text, at, length);
    } else if (cp < 0x80) {  // a control byte (NUL, a tab, an escape) as its Unicode picture: U+2400 + b, DEL U+2421
      utf8::append(cp == 0x7F ? 0x2421 : 0x2400 + cp, out);
    } else {  // a C1 control, a bidirectional override, a line separator: escaped
      out += utf8::escaped(cp);
    }
  }
  return out;
}

std::string side_by_side(const std::string& left_title, const std::string& left, const std::string& right_title,
                         const std::string& right, int width) {
  std::vector<std::string> a = wrap(left, width), b = wrap(right, width);
  auto padded = [width](const std::string& s) { return s + std::string(std::max<int64_t>(0, width - code_points(s)), ' '); };
  std::string out = padded(left_title) + " | " + right_title + "\n";
  out += std::string(width, '-') + "-+-" + std::string(width, '-') + "\n";
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    const std::string l = i < a.size() ? a[i] : "", r = i < b.size() ? b[i] : "";
    std::string line = padded(l) + " | " + r;
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

Json steer_json(const SteerResult& r, const BpeTokenizer& tokenizer, const SaeAtLayer& sae, const std::string& prompt,
                const SteerOptions& options) {
  Json j = Json::object();
  j["prompt"] = prompt;  // valid UTF-8: the tokenizer checked it
  j["prompt_ids"] = id_list(r.prompt);
  j["sae"] = sae.dir;
  j["feature"] = options.feature;
  j["strength"] = options.strength;
  j["hook_name"] = hook_name(sae.site);  // where the vector is added
  j["layer"] = sae.layer >= 0 ? Json(sae.layer) : Json();  // its hidden_states index, when it is one
  j["layer_from"] = sae.layer_source;
  j["greedy"] = options.generate.greedy;
  j["temperature"] = options.generate.temperature;
  j["top_k"] = options.generate.top_k;
  j["seed"] = static_cast<int64_t>(options.generate.seed);
  j["max_new_tokens"] = options.generate.max_new_tokens;
  Json unsteered = Json::object();
  unsteered["text"] = utf8::replace_invalid(tokenizer.decode(r.unsteered));  // the text itself (JSON escapes controls)
  unsteered["ids"] = id_list(r.unsteered);
  Json steered = Json::object();
  steered["text"] = utf8::replace_invalid(tokenizer.decode(r.steered));
  steered["ids"] = id_list(r.steered);
  for (auto [entry, values] : {std::pair{&unsteered, &r.unsteered_strengths}, {&steered, &r.steered_strengths}}) {
    Json list = Json::array();
    for (double v : *values) list.push_back(round_significant(v));
    (*entry)["strengths"] = list;
    (*entry)["max_strength"] = round_significant(largest_strength(*values));
  }
  steered["annotated_text"] = annotated_read_back(tokenizer, r, options.bos);
  j["unsteered"] = unsteered;
  j["steered"] = steered;
  return j;
}

}  // namespace sae
