// Activation caches: manifest, writer and reader (see activation_cache.h).
#include "sae/data/activation_cache.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "io/atomic_file.h"
#include "io/file_fingerprint.h"
#include "io/float_convert.h"

namespace fs = std::filesystem;

namespace sae {

namespace {
constexpr const char* kManifest = "manifest.json";
constexpr const char* kFormat = "sae-cpp-activation-cache";

std::string shard_name(size_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "shard_%05zu.safetensors", index);
  return name;
}

template <typename T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}
}  // namespace

Json CacheManifest::to_json() const {
  Json j = Json::object();
  j["format"] = kFormat;
  j["version"] = 1;
  j["d"] = d;
  j["dtype"] = dtype;
  j["source"] = source;
  Json list = Json::array();
  for (const CacheShard& s : shards) {
    Json e = Json::object();
    e["file"] = s.file;
    e["tokens"] = s.tokens;
    e["stories"] = s.stories;
    e["first_story"] = s.first_story;
    if (!s.text_after.is_null()) e["text_after"] = s.text_after;
    list.push_back(e);
  }
  j["shards"] = list;
  j["text_position"] = text_position;
  j["tokens"] = tokens;
  j["stories"] = stories;
  j["complete"] = complete;
  return j;
}

CacheManifest CacheManifest::from_json(const Json& j, const std::string& path) {
  CacheManifest m;
  try {
    if (!j.is_object() || !j.has("format") || j.at("format").as_string() != kFormat || j.at("version").as_int() != 1)
      throw DataError(cat("not a ", kFormat, " manifest of version 1"));
    m.d = j.at("d").as_int();
    m.dtype = j.at("dtype").as_string();
    if (m.d <= 0) throw DataError(cat("d must be positive, got ", m.d));
    if (m.dtype != "F32" && m.dtype != "F16" && m.dtype != "BF16")
      throw DataError(cat("dtype must be F32, F16 or BF16, got '", printable(m.dtype), "'"));
    m.source = j.at("source");
    m.text_position = j.at("text_position");
    m.complete = j.at("complete").as_bool();
    int64_t tokens = 0, stories = 0;
    for (const Json& e : j.at("shards").elements()) {
      CacheShard s;
      s.file = e.at("file").as_string();
      s.tokens = e.at("tokens").as_int();
      s.stories = e.at("stories").as_int();
      s.first_story = e.at("first_story").as_int();
      if (e.has("text_after")) s.text_after = e.at("text_after");
      if (s.file.find('/') != std::string::npos || s.file.empty() || s.file[0] == '.')
        throw DataError(cat("shard file '", printable(s.file), "' must be a plain name inside the cache"));
      if (s.tokens <= 0 || s.stories <= 0 || s.stories > s.tokens)
        throw DataError(cat("shard ", s.file, " has ", s.tokens, " tokens in ", s.stories, " stories"));
      tokens += s.tokens;
      stories += s.stories;
      m.shards.push_back(s);
    }
    m.tokens = j.at("tokens").as_int();
    m.stories = j.at("stories").as_int();
    if (m.tokens != tokens || m.stories != stories)
      throw DataError(cat("tokens/stories ", m.tokens, "/", m.stories, " disagree with the shards' ", tokens, "/", stories));
  } catch (const DataError& e) {
    throw DataError(cat(path, ": ", e.what()));
  }
  return m;
}

std::string cache_shard_problem(const std::string& dir, const CacheManifest& manifest, const CacheShard& shard) {
  const std::string path = (fs::path(dir) / shard.file).string();
  try {
    const SafetensorsFile file = SafetensorsFile::open(path);  // missing, truncated, not safetensors
    auto expect = [&](const char* name, const char* dtype, std::vector<int64_t> shape) {
      if (!file.has(name)) throw DataError(cat("no tensor '", name, "'"));
      const SafetensorsEntry& e = file.entry(name);
      if (e.dtype != dtype || e.shape != shape)
        throw DataError(cat("'", name, "' is ", printable(e.dtype), " of ", e.shape.size(), " dims, the manifest says ", dtype));
    };
    expect("activations", manifest.dtype.c_str(), {shard.tokens, manifest.d});
    expect("story_lengths", "I64", {shard.stories});
    expect("story_index", "I64", {shard.stories});
    expect("token_ids", "I32", {shard.tokens});
    int64_t sum = 0;
    for (int64_t length : file.read_i64("story_lengths")) {
      if (length <= 0 || length > shard.tokens - sum) throw DataError("story_lengths do not tile its tokens");
      sum += length;
    }
    if (sum != shard.tokens) throw DataError(cat("story_lengths sum to ", sum, ", the manifest says ", shard.tokens));
    const std::vector<int64_t> index = file.read_i64("story_index");
    if (index.front() != shard.first_story)
      throw DataError(cat("its first story is ", index.front(), ", the manifest says ", shard.first_story));
    auto source = file.metadata().find("source");
    if (source == file.metadata().end() || source->second != manifest.source.dump())
      throw DataError("its source differs from the manifest's");
  } catch (const DataError& e) {
    const std::string message = e.what();
    return message.rfind(path, 0) == 0 ? message : cat(path, ": ", message);
  }
  return "";
}

bool is_activation_cache(const std::string& path) { return fs::is_directory(path) && fs::exists(fs::path(path) / kManifest); }

CacheManifest read_cache_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifest).string();
  return CacheManifest::from_json(read_json_file(path), path);
}

// ---- writer ----

ActivationCacheWriter::ActivationCacheWriter(const std::string& dir, int64_t d, const std::string& dtype,
                                             int64_t shard_tokens, const Json& source)
    : dir_(dir), shard_tokens_(shard_tokens) {
  if (shard_tokens <= 0) throw UsageError(cat("--shard-tokens must be positive, got ", shard_tokens));
  if (dtype != "F32" && dtype != "F16" && dtype != "BF16")
    throw UsageError(cat("--dtype: expected f32, f16 or bf16, got '", dtype, "'"));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw DataError(cat(dir, ": cannot create the cache folder: ", ec.message()));
  if (is_activation_cache(dir)) {
    manifest_ = read_cache_manifest(dir);
    // A cache written before its source recorded the text's and the model's fingerprints is
    // compared without them (and one whose model fingerprint predates its ":tensors=" part, as then).
    Json asked = source;
    align_recorded_fingerprints(manifest_.source, asked, {"text_fingerprint", "model_fingerprint"});
    if (manifest_.d != d || manifest_.dtype != dtype || manifest_.source != asked) {
      const std::string what = manifest_.d != d         ? cat("d: ", manifest_.d, " (the cache) / ", d, " (asked)")
                               : manifest_.dtype != dtype ? cat("dtype: ", manifest_.dtype, " (the cache) / ", dtype, " (asked)")
                                                          : first_difference(manifest_.source, asked);
      throw UsageError(cat(dir, " holds a cache of other activations (", printable(what, 400), "); use another --out"));
    }
  } else {
    manifest_.d = d;
    manifest_.dtype = dtype;
    manifest_.source = source;
    manifest_.text_position = Json::object();
  }
  // A kill during a shard write can leave a shard the manifest does not list yet: it is redone.
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool listed = std::any_of(manifest_.shards.begin(), manifest_.shards.end(),
                                    [&](const CacheShard& s) { return s.file == name; });
    if (name.rfind("shard_", 0) == 0 && !listed) fs::remove(entry.path(), ec);
  }
  for (size_t k = 0; k < manifest_.shards.size(); ++k) {
    const std::string problem = cache_shard_problem(dir, manifest_, manifest_.shards[k]);
    if (!problem.empty()) damaged_.push_back({k, problem});
  }
  pending_position_ = manifest_.text_position;
}

Json ActivationCacheWriter::shard_start(size_t index) const {
  if (index >= manifest_.shards.size()) throw Error(cat("shard_start: no shard ", index));
  if (index == 0) {
    Json start = Json::object();
    start["next_story"] = int64_t(0);
    start["byte_offset"] = int64_t(0);
    return start;
  }
  const Json& after = manifest_.shards[index - 1].text_after;
  if (after.is_null())
    throw DataError(cat(dir_, "/", manifest_.shards[index].file, " is damaged, and this cache (written by an older "
                        "sae_cache) does not record where its text begins: delete ", dir_, " and run sae_cache again"));
  return after;
}

void ActivationCacheWriter::begin_rewrite(size_t index) {
  if (index >= manifest_.shards.size()) throw Error(cat("begin_rewrite: no shard ", index));
  pending_activations_.clear();
  pending_ids_.clear();
  pending_lengths_.clear();
  pending_story_index_.clear();
  std::error_code ec;
  fs::remove(fs::path(dir_) / manifest_.shards[index].file, ec);
  rewriting_ = static_cast<int64_t>(index);
}

void ActivationCacheWriter::finish_rewrite() {
  const CacheShard& shard = manifest_.shards[static_cast<size_t>(rewriting_)];
  const int64_t tokens = static_cast<int64_t>(pending_ids_.size());
  if (tokens != shard.tokens || pending_story_index_.front() != shard.first_story)
    throw DataError(cat(dir_, "/", shard.file, ": rewritten from the text it holds ", tokens, " tokens from story ",
                        pending_story_index_.front(), ", the manifest says ", shard.tokens, " from story ",
                        shard.first_story, ": the text or the model has changed since the cache was written"));
  write_safetensors_raw((fs::path(dir_) / shard.file).string(),
                        {{"activations", manifest_.dtype, {shard.tokens, manifest_.d}, std::move(pending_activations_)},
                         {"story_lengths", "I64", {shard.stories}, bytes_of(pending_lengths_)},
                         {"story_index", "I64", {shard.stories}, bytes_of(pending_story_index_)},
                         {"token_ids", "I32", {shard.tokens}, bytes_of(pending_ids_)}},
                        {{"source", manifest_.source.dump()}});
  pending_activations_.clear();
  pending_ids_.clear();
  pending_lengths_.clear();
  pending_story_index_.clear();
  pending_position_ = manifest_.text_position;
  rewriting_ = -1;
}

void ActivationCacheWriter::add_story(int64_t story_index, const std::vector<int32_t>& token_ids, const float* activations,
                                      const Json& position_after, bool may_end_shard) {
  if (manifest_.complete && !rewriting()) throw Error(cat(dir_, ": the cache is complete; nothing more can be added"));
  if (token_ids.empty()) throw Error("ActivationCacheWriter: a story needs at least one token");
  const size_t values = token_ids.size() * static_cast<size_t>(manifest_.d);
  // What the cache could not hold: a non-finite value, or one beyond f16's range (65504; from 65520
  // it rounds to inf), said now, not found by a run hours later.
  const bool f16 = manifest_.dtype == "F16";
  for (size_t i = 0; i < values; ++i)
    if (!(std::fabs(activations[i]) < (f16 ? 65520.0f : INFINITY)))
      throw DataError(cat(dir_, ": story ", story_index, ", token ", i / static_cast<size_t>(manifest_.d), ", column ",
                          i % static_cast<size_t>(manifest_.d), ": activation ", activations[i],
                          std::isfinite(activations[i]) ? " is beyond f16's range (65504): use --dtype bf16 or f32"
                                                        : " is not finite: the model's activations overflowed"));
  const size_t at = pending_activations_.size();
  pending_activations_.resize(at + values * safetensors_dtype_size(manifest_.dtype));
  convert_from_f32(activations, values, manifest_.dtype, pending_activations_.data() + at);
  pending_ids_.insert(pending_ids_.end(), token_ids.begin(), token_ids.end());
  pending_lengths_.push_back(static_cast<int64_t>(token_ids.size()));
  pending_story_index_.push_back(story_index);
  pending_position_ = position_after;
  if (rewriting()) {  // the shard ends after as many stories (and pieces) as it held
    const CacheShard& shard = manifest_.shards[static_cast<size_t>(rewriting_)];
    if (static_cast<int64_t>(pending_lengths_.size()) == shard.stories) finish_rewrite();
    return;
  }
  if (may_end_shard && static_cast<int64_t>(pending_ids_.size()) >= shard_tokens_) write_shard();
}

void ActivationCacheWriter::write_shard() {
  if (pending_ids_.empty()) return;
  CacheShard shard;
  shard.file = shard_name(manifest_.shards.size());
  shard.tokens = static_cast<int64_t>(pending_ids_.size());
  shard.stories = static_cast<int64_t>(pending_lengths_.size());
  shard.first_story = pending_story_index_.front();
  shard.text_after = pending_position_;
  write_safetensors_raw((fs::path(dir_) / shard.file).string(),
                        {{"activations", manifest_.dtype, {shard.tokens, manifest_.d}, std::move(pending_activations_)},
                         {"story_lengths", "I64", {shard.stories}, bytes_of(pending_lengths_)},
                         {"story_index", "I64", {shard.stories}, bytes_of(pending_story_index_)},
                         {"token_ids", "I32", {shard.tokens}, bytes_of(pending_ids_)}},
                        {{"source", manifest_.source.dump()}});
  manifest_.shards.push_back(shard);
  manifest_.tokens += shard.tokens;
  manifest_.stories += shard.stories;
  manifest_.text_position = pending_position_;
  write_file_atomic((fs::path(dir_) / kManifest).string(), manifest_.to_json().dump(2) + "\n");
  pending_activations_.clear();
  pending_ids_.clear();
  pending_lengths_.clear();
  pending_story_index_.clear();
}

void ActivationCacheWriter::finish() {
  if (rewriting()) throw Error(cat(dir_, ": finish() while a shard is being rewritten"));
  write_shard();
  manifest_.complete = true;
  write_file_atomic((fs::path(dir_) / kManifest).string(), manifest_.to_json().dump(2) + "\n");
}

// ---- reader ----

CacheSource::CacheSource(const std::string& dir) : dir_(dir), manifest_(read_cache_manifest(dir)) {
  if (!manifest_.complete)
    throw DataError(cat(dir, ": the cache is not complete (sae_cache was stopped); run sae_cache again to finish it"));
  if (manifest_.shards.empty()) throw DataError(cat(dir, ": the cache holds no tokens"));
  shard_offsets_.push_back(0);
  story_offsets_.push_back(0);
  for (const CacheShard& s : manifest_.shards) {
    const std::string path = (fs::path(dir) / s.file).string();
    SafetensorsFile file = SafetensorsFile::open(path);
    const SafetensorsEntry& a = file.entry("activations");
    if (a.dtype != manifest_.dtype || a.shape.size() != 2 || a.shape[0] != s.tokens || a.shape[1] != manifest_.d)
      throw DataError(cat(path, ": activations are ", a.dtype, " with ", a.shape.size(), " dims, expected ",
                          manifest_.dtype, " [", s.tokens, ", ", manifest_.d, "] as the manifest says"));
    const std::vector<int64_t> lengths = file.read_i64("story_lengths");
    if (static_cast<int64_t>(lengths.size()) != s.stories)
      throw DataError(cat(path, ": ", lengths.size(), " story_lengths, the manifest says ", s.stories));
    int64_t sum = 0;
    for (int64_t length : lengths) {
      if (length <= 0 || length > s.tokens - sum) throw DataError(cat(path, ": story_lengths do not tile its ", s.tokens, " tokens"));
      sum += length;
      story_offsets_.push_back(story_offsets_.back() + length);
    }
    if (sum != s.tokens) throw DataError(cat(path, ": story_lengths sum to ", sum, ", not ", s.tokens));
    shard_offsets_.push_back(shard_offsets_.back() + s.tokens);
    has_token_ids_ = has_token_ids_ && file.has("token_ids") && file.entry("token_ids").dtype == "I32" &&
                     file.entry("token_ids").numel() == s.tokens;
    shards_.push_back(std::move(file));
  }
  check_ends_are_finite(*this);
}

size_t CacheSource::shard_of(int64_t token) const {
  return static_cast<size_t>(std::upper_bound(shard_offsets_.begin(), shard_offsets_.end(), token) -
                             shard_offsets_.begin() - 1);
}

std::string CacheSource::locate(int64_t token) const {
  const size_t shard = shard_of(token);
  return cat("token ", token, " (", manifest_.shards[shard].file, " token ", token - shard_offsets_[shard], ")");
}

void CacheSource::read_tokens(int64_t begin, int64_t count, float* out) {
  if (begin < 0 || count < 0 || begin + count > num_tokens())
    throw Error(cat(dir_, ": tokens [", begin, ", ", begin + count, ") out of range (", num_tokens(), ")"));
  while (count > 0) {
    const size_t shard = shard_of(begin);
    const int64_t within = begin - shard_offsets_[shard];
    const int64_t rows = std::min(count, shard_offsets_[shard + 1] - begin);
    shards_[shard].read_rows_f32("activations", within, rows, out);
    out += rows * manifest_.d;
    begin += rows;
    count -= rows;
  }
}

int32_t CacheSource::token_id(int64_t token) const {
  if (!has_token_ids_ || token < 0 || token >= num_tokens()) return -1;
  const size_t shard = shard_of(token);
  int32_t id;
  std::memcpy(&id, static_cast<const char*>(shards_[shard].entry("token_ids").data) + 4 * (token - shard_offsets_[shard]),
              4);
  return id >= 0 ? id : -1;
}

void CacheSource::expect_random_access(bool random) {
  for (const SafetensorsFile& shard : shards_) shard.mapping().advise_random(random);
}

Json CacheSource::describe() const {
  Json j = Json::object();
  j["kind"] = "activation_cache";
  j["path"] = dir_;
  // The manifest's bytes say which cache this is (its source, shards, text positions): a resume
  // checks them as it checks an activation file's (sae/train/trainer.cpp check_same_data).
  j["fingerprint"] = file_fingerprint((fs::path(dir_) / "manifest.json").string());
  j["tokens"] = manifest_.tokens;
  j["d"] = manifest_.d;
  j["stories"] = manifest_.stories;
  j["dtype"] = manifest_.dtype;
  j["source"] = manifest_.source;
  return j;
}

}  // namespace sae
