// Activation files (safetensors, .npy; memory-mapped) and the shared ActivationSource helpers.
#include "sae/data/activations.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>

#include "io/file_fingerprint.h"
#include "io/mapped_file.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "sae/data/activation_cache.h"
#include "sae/data/synthetic.h"
#include "tensor/ops.h"

namespace sae {

void ActivationSource::read_token_list(const std::vector<int64_t>& tokens, float* out) {
  for (size_t i = 0; i < tokens.size(); ++i) read_tokens(tokens[i], 1, out + i * d());
}

void ActivationSource::generate_on(const std::vector<int64_t>&, Tensor&) {
  throw Error(cat(name(), ": cannot make tokens on a device"));
}

int64_t ActivationSource::longest_story() const {
  int64_t longest = 0;
  for (int64_t s = 0; s < num_stories(); ++s) longest = std::max(longest, story_length(s));
  return longest;
}

int64_t ActivationSource::story_containing(int64_t token) const {
  int64_t lo = 0, hi = num_stories();  // the last story that begins at or before `token`
  if (hi == 0) return -1;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (story_begin(mid) <= token)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

std::string ActivationSource::locate(int64_t token) const { return cat("token ", token); }

void check_ends_are_finite(ActivationSource& source) {
  const int64_t tokens = source.num_tokens(), d = source.d(), sample = std::min<int64_t>(tokens, 4096);
  std::vector<float> buffer(static_cast<size_t>(sample * d));
  for (int64_t start : {int64_t(0), tokens - sample}) {
    source.read_tokens(start, sample, buffer.data());
    const int64_t i = first_non_finite(buffer.data(), sample * d);
    if (i >= 0)
      throw DataError(cat(source.name(), ": non-finite activation (", buffer[i], ") at ", source.locate(start + i / d),
                          ", column ", i % d));
  }
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// What a file's first bytes say it is: a name can mislead (X.NPY, an .npz archive read as safetensors
// gave "header length 193340853072 is above the 100 MB limit").
enum class Magic { Npy, Zip, Other };
Magic file_magic(const std::string& path) {
  const std::string head = read_file_head(path, 6);
  if (head == std::string("\x93NUMPY", 6)) return Magic::Npy;
  if (head.compare(0, 4, std::string("PK\x03\x04", 4)) == 0) return Magic::Zip;
  return Magic::Other;
}

// A safetensors or .npy file of activations [n_tokens, D], with optional story lengths.
class FileSource : public ActivationSource {
 public:
  explicit FileSource(const std::string& path) : path_(path) {
    const Magic magic = file_magic(path);
    if (magic == Magic::Zip)
      throw DataError(cat(path, ": a zip archive (.npz?): activations are one array, a .npy file (numpy.save) or a "
                                ".safetensors file"));
    if (ends_with(path, ".npy") || magic == Magic::Npy) {
      npy_.emplace(NpyFile::open(path));
      if (npy_->shape().size() != 2)
        throw DataError(cat(path, ": expected a 2-D array [n_tokens, d], got ", npy_->shape().size(), " dims"));
      tokens_ = npy_->shape()[0];
      d_ = npy_->shape()[1];
    } else {
      st_.emplace(SafetensorsFile::open(path));
      if (!st_->has("activations"))
        throw DataError(cat(path, ": no tensor named 'activations' (expected activations [n_tokens, d])"));
      const SafetensorsEntry& a = st_->entry("activations");
      if (a.shape.size() != 2)
        throw DataError(cat(path, ": 'activations' must be 2-D [n_tokens, d], got ", a.shape.size(), " dims"));
      if (a.dtype != "F32" && a.dtype != "F16" && a.dtype != "BF16")
        throw DataError(cat(path, ": 'activations' must be F32, F16 or BF16, got ", a.dtype));
      tokens_ = a.shape[0];
      d_ = a.shape[1];
      if (st_->has("story_lengths")) load_story_lengths();
      if (st_->has("token_ids")) {
        const SafetensorsEntry& ids = st_->entry("token_ids");
        if (ids.numel() != tokens_)
          throw DataError(cat(path, ": 'token_ids' has ", ids.numel(), " entries for ", tokens_, " tokens"));
        if (ids.dtype == "I32" || ids.dtype == "I64") token_ids_ = &ids;  // other dtypes: not shown
      }
    }
    if (tokens_ <= 0 || d_ <= 0) throw DataError(cat(path, ": empty activations [", tokens_, ", ", d_, "]"));
    check_ends_are_finite(*this);
  }

  int64_t d() const override { return d_; }
  int64_t num_tokens() const override { return tokens_; }
  int64_t num_stories() const override { return static_cast<int64_t>(story_offsets_.empty() ? 0 : story_offsets_.size() - 1); }
  int64_t story_begin(int64_t story) const override { return story_offsets_[story]; }
  int64_t story_length(int64_t story) const override { return story_offsets_[story + 1] - story_offsets_[story]; }

  void read_tokens(int64_t begin, int64_t count, float* out) override {
    if (begin < 0 || count < 0 || begin + count > tokens_)
      throw Error(cat(path_, ": tokens [", begin, ", ", begin + count, ") out of range (", tokens_, ")"));
    if (npy_)
      npy_->read_rows_f32(begin, count, out);
    else
      st_->read_rows_f32("activations", begin, count, out);
  }

  std::string name() const override { return path_; }
  bool has_token_ids() const override { return token_ids_ != nullptr; }
  int32_t token_id(int64_t token) const override {
    if (!token_ids_ || token < 0 || token >= tokens_) return -1;
    int64_t id = -1;
    if (token_ids_->dtype == "I32") {
      int32_t v;
      std::memcpy(&v, static_cast<const char*>(token_ids_->data) + 4 * token, 4);
      id = v;
    } else {
      std::memcpy(&id, static_cast<const char*>(token_ids_->data) + 8 * token, 8);
    }
    return id >= 0 && id <= INT32_MAX ? static_cast<int32_t>(id) : -1;  // anything else: no id
  }
  void expect_random_access(bool random) override {
    (npy_ ? npy_->mapping() : st_->mapping()).advise_random(random);
  }

  Json describe() const override {
    Json j = Json::object();
    j["kind"] = npy_ ? "npy" : "safetensors";
    j["path"] = path_;
    j["fingerprint"] = file_fingerprint(path_);  // a resume checks that the file is the one it read
    j["tokens"] = tokens_;
    j["d"] = d_;
    j["stories"] = num_stories();
    if (st_) {
      Json meta = Json::object();
      for (const auto& [k, v] : st_->metadata()) meta[k] = v;
      j["metadata"] = meta;
    }
    return j;
  }

 private:
  void load_story_lengths() {
    const SafetensorsEntry& entry = st_->entry("story_lengths");
    if (entry.shape.size() != 1)
      throw DataError(cat(path_, ": 'story_lengths' must be 1-D [n_stories], got ", entry.shape.size(), " dims"));
    std::vector<int64_t> lengths = st_->read_i64("story_lengths");
    story_offsets_.assign(1, 0);
    for (size_t i = 0; i < lengths.size(); ++i) {
      if (lengths[i] <= 0)
        throw DataError(cat(path_, ": story_lengths[", i, "] = ", lengths[i], "; every story needs >= 1 token"));
      // Checked before adding, so the running sum never overflows: it stays <= n_tokens.
      if (lengths[i] > tokens_ - story_offsets_.back())
        throw DataError(cat(path_, ": story_lengths run past the ", tokens_, " tokens of 'activations' at story ", i,
                            " (length ", lengths[i], ")"));
      story_offsets_.push_back(story_offsets_.back() + lengths[i]);
    }
    if (story_offsets_.back() != tokens_)
      throw DataError(cat(path_, ": story_lengths sum to ", story_offsets_.back(), " but activations has ", tokens_,
                          " tokens"));
  }

  std::string path_;
  std::optional<SafetensorsFile> st_;
  std::optional<NpyFile> npy_;
  int64_t tokens_ = 0, d_ = 0;
  std::vector<int64_t> story_offsets_;
  const SafetensorsEntry* token_ids_ = nullptr;  // into st_ (I32 or I64)
};

}  // namespace

std::unique_ptr<ActivationSource> open_activations(const std::string& data, const SyntheticOptions& synthetic) {
  if (data == "synthetic") return std::make_unique<SyntheticSource>(synthetic);
  if (is_activation_cache(data)) return std::make_unique<CacheSource>(data);
  std::error_code ec;
  if (std::filesystem::is_directory(data, ec))
    throw DataError(cat(data, ": a folder without a cache's manifest.json (--data takes a .safetensors or .npy "
                        "file, or a folder sae_cache wrote)"));
  return std::make_unique<FileSource>(data);
}

void refuse_path_with_comma(const std::string& option, const std::string& text) {
  std::error_code ec;
  if (text.find(',') != std::string::npos && std::filesystem::exists(text, ec))
    throw UsageError(cat(option, " '", printable(text), "': a comma separates a crosscoder's sources, and this is one "
                         "path with a comma in its name: give it a name without one (a symbolic link will do)"));
}

}  // namespace sae
