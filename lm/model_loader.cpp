// Model folders and weight conversion for every family (see model_loader.h).
#include "lm/model_loader.h"

#include <sys/stat.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <type_traits>

#include "io/file_fingerprint.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tensor/ops.h"

namespace sae {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::vector<int64_t> shape_of(const Tensor& t) {
  std::vector<int64_t> s;
  for (int i = 0; i < t.ndim(); ++i) s.push_back(t.size(i));
  return s;
}

bool is_float_dtype(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
}

bool file_exists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// One rule for one block (or for the whole model when it has no {i}).
struct ExpandedRule {
  std::string ours;
  std::vector<std::string> files;  // full names in the source (prefix included)
  WeightTransform transform;
  std::vector<int64_t> rows;       // StackRows: each file's rows (empty: equal parts)
  int64_t block = -1;              // -1: embeddings or head
  bool head = false;
};

// The file shape a rule expects for each of its tensors, from our parameter's shape.
std::vector<int64_t> file_shape(const ExpandedRule& rule, size_t file, const std::vector<int64_t>& ours) {
  switch (rule.transform) {
    case WeightTransform::Transpose:
      if (ours.size() == 2) return {ours[1], ours[0]};
      return ours;
    case WeightTransform::StackRows: {
      std::vector<int64_t> part = ours;
      part[0] = rule.rows.empty() ? part[0] / static_cast<int64_t>(rule.files.size()) : rule.rows.at(file);
      return part;
    }
    default: return ours;
  }
}

}  // namespace

// ---------------------------------------------------------------- the weights' source

struct WeightSource::Files {
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> file_of;  // tensor -> index into files
  int64_t bytes = 0;
};

WeightSource::WeightSource() = default;
WeightSource::WeightSource(WeightSource&&) noexcept = default;
WeightSource& WeightSource::operator=(WeightSource&&) noexcept = default;
WeightSource::~WeightSource() = default;

WeightSource WeightSource::open_model_dir(const std::string& dir) {
  WeightSource source;
  source.files_ = std::make_shared<Files>();
  Files& f = *source.files_;
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  auto add_file = [&](const std::string& path) {
    f.files.push_back(SafetensorsFile::open(path));
    f.bytes += static_cast<int64_t>(f.files.back().mapping().size());
    return f.files.size() - 1;
  };
  if (file_exists(single)) {
    const size_t k = add_file(single);
    for (const std::string& name : f.files[k].names()) f.file_of[name] = k;
    source.label_ = single;
    return source;
  }
  if (file_exists(index)) {
    // {"weight_map": {"tensor": "model-00001-of-00002.safetensors", ...}}: each shard opened once.
    const Json j = read_json_file(index);
    if (!j.is_object() || !j.has("weight_map") || !j.at("weight_map").is_object())
      throw DataError(cat(index, ": expected an object with a 'weight_map' object"));
    std::map<std::string, size_t> shard_index;
    for (const auto& [name, shard] : j.at("weight_map").items()) {
      if (!shard.is_string() || shard.as_string().find('/') != std::string::npos)
        throw DataError(cat(index, ": weight_map['", printable(name), "'] is not a file name in the folder"));
      const std::string path = dir + "/" + shard.as_string();
      auto it = shard_index.find(path);
      if (it == shard_index.end()) it = shard_index.emplace(path, add_file(path)).first;
      if (!f.files[it->second].has(name))
        throw DataError(cat(index, ": '", printable(name), "' is listed in ", path, ", which does not hold it"));
      f.file_of[name] = it->second;
    }
    for (const auto& [path, k] : shard_index)
      for (const std::string& name : f.files[k].names())
        if (!f.file_of.count(name))
          throw DataError(cat(path, ": tensor '", printable(name), "' is not in ", index, "'s weight_map"));
    source.label_ = cat(f.files.size(), " shards of ", dir, " (", index, ")");
    return source;
  }
  std::error_code ec;
  const bool has_bin = std::filesystem::exists(dir + "/pytorch_model.bin", ec);
  throw DataError(cat(dir, ": no model.safetensors",
                      has_bin ? " (only safetensors weights are read, not pytorch_model.bin: convert it with "
                                "transformers' save_pretrained(safe_serialization=True))"
                              : ""));
}

WeightSource WeightSource::in_memory(const NamedTensors& tensors, const std::string& label) {
  WeightSource source;
  source.memory_ = &tensors;
  source.label_ = label;
  return source;
}

std::vector<std::string> WeightSource::names() const {
  std::vector<std::string> names;
  if (memory_) {
    for (const auto& [name, t] : *memory_) names.push_back(name);
  } else {
    for (const auto& [name, k] : files_->file_of) names.push_back(name);
  }
  return names;
}

bool WeightSource::has(const std::string& name) const {
  if (memory_) {
    auto it = memory_->find(name);
    return it != memory_->end() && it->second.defined();
  }
  return files_->file_of.count(name) > 0;
}

std::vector<int64_t> WeightSource::shape(const std::string& name) const {
  if (memory_) return shape_of(memory_->at(name));
  return files_->files[files_->file_of.at(name)].entry(name).shape;
}

std::string WeightSource::where(const std::string& name) const {
  if (memory_) return label_;
  return files_->files[files_->file_of.at(name)].path();
}

Tensor WeightSource::read_f32(const std::string& name) const {
  if (memory_) {
    const Tensor& t = memory_->at(name);
    if (t.dtype() == DType::I32) throw DataError(cat(label_, ": tensor '", name, "' is int32, expected floating point"));
    return t.to(Device::CPU).to(DType::F32);
  }
  Tensor t = files_->files[files_->file_of.at(name)].read_f32(name);
  release(name);  // the float32 copy is what the model keeps
  return t;
}

void WeightSource::read_rows(const std::string& name, int64_t begin, int64_t count, float* out) const {
  if (count <= 0) return;
  if (memory_) {
    const Tensor t = read_f32(name);
    const int64_t row = t.ndim() == 0 || t.size(0) == 0 ? 0 : t.numel() / t.size(0);
    std::memcpy(out, t.data<float>() + begin * row, sizeof(float) * static_cast<size_t>(count * row));
    return;
  }
  files_->files[files_->file_of.at(name)].read_rows_f32(name, begin, count, out);
}

DType WeightSource::stored_dtype(const std::string& name) const {
  if (memory_) {
    const DType d = memory_->at(name).dtype();
    return is_half_dtype(d) ? d : DType::F32;
  }
  const std::string& dtype = files_->files[files_->file_of.at(name)].entry(name).dtype;
  return dtype == "BF16" ? DType::BF16 : dtype == "F16" ? DType::F16 : DType::F32;
}

void WeightSource::read_rows_stored(const std::string& name, int64_t begin, int64_t count, void* out) const {
  if (count <= 0) return;
  const DType dtype = stored_dtype(name);
  if (!is_half_dtype(dtype)) throw Error(cat("read_rows_stored: '", name, "' is not a 16-bit tensor"));
  const std::vector<int64_t> s = shape(name);
  int64_t row = 1;
  for (size_t i = 1; i < s.size(); ++i) row *= s[i];
  const size_t row_bytes = static_cast<size_t>(row) * dtype_size(dtype);
  const size_t offset = static_cast<size_t>(begin) * row_bytes, bytes = static_cast<size_t>(count) * row_bytes;
  if (memory_) {
    const Tensor host = memory_->at(name).to(Device::CPU);  // held for the copy
    std::memcpy(out, static_cast<const uint8_t*>(host.raw()) + offset, bytes);
    return;
  }
  std::memcpy(out, static_cast<const uint8_t*>(files_->files[files_->file_of.at(name)].entry(name).data) + offset, bytes);
}

Tensor WeightSource::borrowed_stored(const std::string& name) const {
  if (memory_) return Tensor();
  const DType dtype = stored_dtype(name);
  if (!is_half_dtype(dtype)) return Tensor();
  const SafetensorsEntry& e = files_->files[files_->file_of.at(name)].entry(name);
  if (reinterpret_cast<uintptr_t>(e.data) % dtype_size(dtype) != 0) return Tensor();
  return Tensor::borrowed(e.data, Shape::from_vector(e.shape), dtype, files_);
}

void WeightSource::release_rows(const std::string& name, int64_t begin, int64_t count) const {
  if (memory_ || count <= 0) return;
  const SafetensorsFile& file = files_->files[files_->file_of.at(name)];
  const SafetensorsEntry& e = file.entry(name);
  const size_t row_bytes = e.shape.empty() || e.shape[0] == 0 ? 0 : e.bytes / static_cast<size_t>(e.shape[0]);
  const size_t offset = static_cast<size_t>(static_cast<const uint8_t*>(e.data) - file.mapping().data());
  file.mapping().release_pages(offset + static_cast<size_t>(begin) * row_bytes, static_cast<size_t>(count) * row_bytes);
}

void WeightSource::release(const std::string& name) const {
  if (memory_) return;
  const SafetensorsFile& file = files_->files[files_->file_of.at(name)];
  const SafetensorsEntry& e = file.entry(name);
  file.mapping().release_pages(static_cast<size_t>(static_cast<const uint8_t*>(e.data) - file.mapping().data()), e.bytes);
}

void WeightSource::check_float(const std::string& name) const {
  if (memory_) {
    if (memory_->at(name).dtype() == DType::I32)
      throw DataError(cat(label_, ": tensor '", name, "' is int32, expected floating point"));
    return;
  }
  const SafetensorsFile& file = files_->files[files_->file_of.at(name)];
  const std::string& dtype = file.entry(name).dtype;
  if (!is_float_dtype(dtype))
    throw DataError(cat(file.path(), ": tensor '", printable(name), "' is ", dtype, ", expected F32, F16, BF16 or F64"));
}

int64_t WeightSource::bytes() const { return files_ ? files_->bytes : 0; }

// ---------------------------------------------------------------- conversion

NamedTensors convert_weights(const ModelFamily& family, const DecoderConfig& config, const WeightSource& source,
                             ModelPart part) {
  const int64_t layers = config.num_layers;
  const int64_t blocks = part.blocks < 0 ? layers : std::min(part.blocks, layers);
  const bool head = part.head && blocks == layers;
  std::map<std::string, std::vector<int64_t>> our_shapes;
  for (const auto& [name, shape] : config.parameter_shapes(layers, true)) our_shapes[name] = shape;
  our_shapes["unembed"] = {config.vocab_size, config.hidden_size};

  // The file's names carry the base model's prefix when any of them does.
  const std::vector<std::string> names = source.names();
  bool prefixed = false;
  for (const std::string& name : names)
    if (!family.base_prefix.empty() && name.rfind(family.base_prefix, 0) == 0) prefixed = true;
  const std::string prefix = prefixed ? family.base_prefix : "";

  std::vector<ExpandedRule> rules;
  for (const WeightRule& rule : family.weight_rules(config)) {
    const bool per_block = rule.ours.find("{i}") != std::string::npos;
    for (int64_t i = 0; i < (per_block ? layers : 1); ++i) {
      ExpandedRule r;
      r.ours = per_block ? with_block(rule.ours, i) : rule.ours;
      for (const std::string& file : rule.files) r.files.push_back(prefix + (per_block ? with_block(file, i) : file));
      r.transform = rule.transform;
      r.rows = rule.rows;
      if (!r.rows.empty() && r.rows.size() != r.files.size())
        throw Error(cat(family.name, ": rule '", r.ours, "' gives rows for ", r.rows.size(), " of ", r.files.size(),
                        " files"));
      r.block = per_block ? i : -1;
      r.head = r.ours.rfind("final_norm", 0) == 0;
      if (!our_shapes.count(r.ours)) throw Error(cat(family.name, ": a rule names no parameter '", r.ours, "'"));
      rules.push_back(std::move(r));
    }
  }
  std::map<std::string, std::vector<int64_t>> expected;  // file tensor -> shape
  for (const ExpandedRule& r : rules)
    for (size_t k = 0; k < r.files.size(); ++k) expected[r.files[k]] = file_shape(r, k, our_shapes.at(r.ours));

  // Every tensor of the file: expected (with its shape, a float dtype), an unembedding, or ignored.
  std::string unembedding_file;
  for (const std::string& name : names) {
    const bool is_unembedding =
        std::find(family.unembedding_files.begin(), family.unembedding_files.end(), name) !=
        family.unembedding_files.end();
    auto it = expected.find(name);
    if (it == expected.end() && !is_unembedding) {
      const std::string bare = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
      if (family.ignored && family.ignored(bare, layers)) continue;
      throw DataError(cat(source.where(name), ": unexpected tensor '", printable(name), "' (not a ", family.name,
                          " parameter of ", config.source, ")"));
    }
    const std::vector<int64_t> want = is_unembedding ? our_shapes.at("unembed") : it->second;
    if (source.shape(name) != want)
      throw DataError(cat(source.where(name), ": tensor '", printable(name), "' has shape ",
                          shape_text(source.shape(name)), ", expected ", shape_text(want), " for ", config.source));
    source.check_float(name);
    if (is_unembedding) {
      if (!unembedding_file.empty())
        throw DataError(cat(source.label(), ": both '", unembedding_file, "' and '", name,
                            "' hold an unembedding; which one is meant?"));
      unembedding_file = name;
    }
  }
  for (const ExpandedRule& r : rules)
    for (const std::string& file : r.files)
      if (!source.has(file))
        throw DataError(cat(source.label(), ": missing tensor '", file, "' ", shape_text(expected.at(file))));
  if (!config.tie_word_embeddings && unembedding_file.empty())
    throw DataError(cat(source.label(), ": missing tensor '", family.unembedding_files.at(0), "' ",
                        shape_text(our_shapes.at("unembed")), " (the embeddings are not tied)"));

  // Read (only what the part needs) straight into our layout, a few rows at a time (no full-size
  // intermediate copy), check finite.
  // Every value finite (a 16-bit tensor's widened one at a time: no float32 copy of it); the error
  // names the file's tensor, the one the bad value came from when the rule stacks several.
  auto value_at = [](const Tensor& t, int64_t i) -> float {
    if (t.dtype() == DType::BF16) return widen(t.data<BFloat16>()[i]);
    if (t.dtype() == DType::F16) return widen(t.data<Float16>()[i]);
    return t.data<float>()[i];
  };
  auto check_finite = [&](const Tensor& t, const std::vector<std::string>& files, const std::vector<int64_t>& rows) {
    const int64_t row = t.size(0) == 0 ? 0 : t.numel() / t.size(0);
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float v = value_at(t, i);
      if (std::isfinite(v)) continue;
      size_t k = 0;  // the file whose rows hold index i (StackRows), else the first
      for (int64_t first = 0; k + 1 < files.size() && i >= (first + rows[k]) * row; ++k) first += rows[k];
      throw DataError(cat(source.where(files[k]), ": tensor '", printable(files[k]), "' holds a non-finite value (", v,
                          ") at flat index ", i));
    }
  };
  auto finite = [&](const Tensor& t, const std::string& name) { check_finite(t, {name}, {}); };
  // Each file's rows in a StackRows rule.
  auto stacked_rows = [](const ExpandedRule& r, int64_t rows) {
    if (!r.rows.empty()) return r.rows;
    return std::vector<int64_t>(r.files.size(), rows / static_cast<int64_t>(r.files.size()));
  };
  // Weight matrices stay 16-bit when every file of the rule stores the same 16-bit dtype and the
  // rule moves whole values (copies, stacks, transposes or reorders rows: the GEMM weights, the
  // embedding table, the unembedding; not learned positions, which are added, nor (1 + w) norms).
  auto stored_half = [&](const std::string& ours, const std::vector<std::string>& files, WeightTransform transform,
                         size_t dims) {
    if (dims != 2 || ours == "embed.positions" || transform == WeightTransform::PlusOne) return DType::F32;
    const DType d = source.stored_dtype(files[0]);
    for (const std::string& file : files)
      if (source.stored_dtype(file) != d) return DType::F32;
    return d;
  };
  auto read = [&](const std::string& name) {
    const DType d = stored_half("unembed", {name}, WeightTransform::Copy, source.shape(name).size());
    if (is_half_dtype(d)) {
      const std::vector<int64_t> shape = source.shape(name);
      Tensor t = Tensor::empty(Shape::from_vector(shape), d);
      source.read_rows_stored(name, 0, shape[0], t.raw());
      source.release(name);
      finite(t, name);
      return t;
    }
    Tensor t = source.read_f32(name);
    finite(t, name);
    return t;
  };
  // A rule's rows moved into dst [rows, columns] (elements float32, or 16-bit as stored), each read by
  // read(file, first row, count, out): a matrix of a Transpose rule from the file's [columns, rows] (64
  // of its rows at a time, scattered into our columns); QkvPerHead from rows [H, 3, hd] to ours
  // [3, H, hd]; anything else (Copy, PlusOne, StackRows, a transposed bias) rows as stored, one file
  // after the other.
  auto place_rows = [&](const ExpandedRule& r, int64_t rows, int64_t columns, bool matrix, auto* dst, auto read) {
    using Element = std::remove_pointer_t<decltype(dst)>;
    if (r.transform == WeightTransform::Transpose && matrix) {
      constexpr int64_t kChunk = 64;
      std::vector<Element> chunk(static_cast<size_t>(kChunk * rows));
      for (int64_t i0 = 0; i0 < columns; i0 += kChunk) {
        const int64_t n = std::min(kChunk, columns - i0);
        read(r.files[0], i0, n, chunk.data());
        for (int64_t i = 0; i < n; ++i)
          for (int64_t o = 0; o < rows; ++o) dst[o * columns + i0 + i] = chunk[static_cast<size_t>(i * rows + o)];
      }
    } else if (r.transform == WeightTransform::QkvPerHead) {
      const int64_t h = config.num_heads, hd = config.head_dim;
      for (int64_t head_index = 0; head_index < h; ++head_index)
        for (int64_t p = 0; p < 3; ++p)
          read(r.files[0], (head_index * 3 + p) * hd, hd, dst + ((p * h + head_index) * hd) * columns);
    } else {
      int64_t row = 0;
      for (size_t k = 0; k < r.files.size(); ++k) {
        const int64_t part = r.rows.empty() ? rows / static_cast<int64_t>(r.files.size()) : r.rows[k];
        read(r.files[k], 0, part, dst + row * columns);
        row += part;
      }
    }
  };
  NamedTensors ours;
  for (const ExpandedRule& r : rules) {
    if (r.block >= blocks || (r.head && !head)) continue;
    const std::vector<int64_t>& shape = our_shapes.at(r.ours);
    const DType half = stored_half(r.ours, r.files, r.transform, shape.size());
    if (is_half_dtype(half) && r.ours == "embed.tokens") {
      // The token embedding over the file's mapping: checked a chunk of rows at a time, each chunk's
      // pages released after its check, so that only the rows the model gathers come back.
      Tensor table = source.borrowed_stored(r.files[0]);
      if (table.defined()) {
        constexpr int64_t kChunkRows = 256;
        const int64_t row = shape[1];
        for (int64_t i0 = 0; i0 < shape[0]; i0 += kChunkRows) {
          const int64_t n = std::min(kChunkRows, shape[0] - i0);
          for (int64_t i = i0 * row; i < (i0 + n) * row; ++i) {
            const float v = value_at(table, i);
            if (!std::isfinite(v))
              throw DataError(cat(source.where(r.files[0]), ": tensor '", printable(r.files[0]),
                                  "' holds a non-finite value (", v, ") at flat index ", i));
          }
          source.release_rows(r.files[0], i0, n);
        }
        ours[r.ours] = table;
        continue;
      }
    }
    // 16-bit matrices keep the stored values (moved as the rule says, never widened); the rest is float32.
    const bool stays_half = is_half_dtype(half);
    Tensor out = Tensor::empty(Shape::from_vector(shape), stays_half ? half : DType::F32);
    const int64_t rows = shape[0], columns = shape.size() == 2 ? shape[1] : 1;
    if (stays_half) {
      place_rows(r, rows, columns, true, static_cast<uint16_t*>(out.raw()),
                 [&](const std::string& file, int64_t begin, int64_t count, uint16_t* to) {
                   source.read_rows_stored(file, begin, count, to);
                 });
    } else {
      float* dst = out.data<float>();
      place_rows(r, rows, columns, shape.size() == 2, dst,
                 [&](const std::string& file, int64_t begin, int64_t count, float* to) {
                   source.read_rows(file, begin, count, to);
                 });
      if (r.transform == WeightTransform::PlusOne)
        for (int64_t i = 0; i < rows * columns; ++i) dst[i] = 1.0f + dst[i];
    }
    for (const std::string& file : r.files) source.release(file);
    if (r.transform == WeightTransform::StackRows)
      check_finite(out, r.files, stacked_rows(r, rows));
    else
      finite(out, r.files[0]);
    ours[r.ours] = out;
  }
  if (head && !unembedding_file.empty()) ours["unembed"] = read(unembedding_file);
  return ours;
}

// ---------------------------------------------------------------- folders

ModelFolder read_model_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const Json json = read_json_file(path);
  ModelFolder folder;
  folder.family = &family_for(json, path);
  folder.config = folder.family->parse_config(json, path);
  if (json.has("_name_or_path") && json.at("_name_or_path").is_string() && !json.at("_name_or_path").as_string().empty())
    folder.name = json.at("_name_or_path").as_string();
  else
    folder.name = std::filesystem::path(dir).lexically_normal().filename().string();
  if (folder.name.empty() || folder.name == ".")
    folder.name = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
  return folder;
}

DecoderModel load_decoder_model(const std::string& dir, Device device, ModelPart part) {
  const ModelFolder folder = read_model_config(dir);
  DecoderModel model = [&] {
    const WeightSource source = WeightSource::open_model_dir(dir);
    const NamedTensors parameters = convert_weights(*folder.family, folder.config, source, part);
    return DecoderModel::from_parameters(folder.config, parameters, device, source.label(), part);
  }();
#if defined(__GLIBC__)
  // The conversion's transient copies (a tensor read, then transposed) went back to the heap; hand
  // that memory back to the system so that the run's peak is the model's own size.
  ::malloc_trim(0);
#endif
  return model;
}

namespace {

// The rule for our parameter `ours` (one file), and that file's name in `source` with or without the
// base prefix ("" when the source has neither).
struct FoundRule {
  WeightRule rule;
  std::string file;
};
FoundRule find_rule(const ModelFolder& folder, const WeightSource& source, const std::string& ours) {
  for (const WeightRule& rule : folder.family->weight_rules(folder.config))
    if (rule.ours == ours) {
      for (const std::string& name : {folder.family->base_prefix + rule.files.at(0), rule.files.at(0)})
        if (source.has(name)) return {rule, name};
      return {rule, ""};
    }
  return {};
}

// Tensor `name` of `source` as float32, refused unless it has `shape` and finite values.
Tensor read_checked(const WeightSource& source, const std::string& name, const std::vector<int64_t>& shape) {
  if (source.shape(name) != shape)
    throw DataError(cat(source.where(name), ": tensor '", name, "' has shape ", shape_text(source.shape(name)),
                        ", expected ", shape_text(shape)));
  source.check_float(name);
  Tensor t = source.read_f32(name);
  const float* p = t.data<float>();
  const int64_t i = first_non_finite(p, t.numel());
  if (i >= 0)
    throw DataError(cat(source.where(name), ": tensor '", printable(name), "' holds a non-finite value (", p[i],
                        ") at flat index ", i));
  return t;
}

}  // namespace

Tensor load_unembedding(const std::string& dir) {
  const ModelFolder folder = read_model_config(dir);
  const WeightSource source = WeightSource::open_model_dir(dir);
  const int64_t vocab = folder.config.vocab_size, d = folder.config.hidden_size;
  std::string unembedding;
  for (const std::string& name : folder.family->unembedding_files)
    if (unembedding.empty() && source.has(name)) unembedding = name;
  if (unembedding.empty() && folder.config.tie_word_embeddings) unembedding = find_rule(folder, source, "embed.tokens").file;
  if (unembedding.empty())
    throw DataError(cat(source.label(), ": no unembedding (",
                        folder.family->unembedding_files.empty() ? "none listed" : folder.family->unembedding_files.front(),
                        ")"));
  Tensor W_U = read_checked(source, unembedding, {vocab, d});
  // The final norm's weight (1 + w for Gemma's RMSNorm) scales every unembedding row, as
  // TransformerLens's fold_ln folds it into W_U.
  const FoundRule norm = find_rule(folder, source, "final_norm.weight");
  if (norm.file.empty()) throw DataError(cat(source.label(), ": no final norm weight"));
  const Tensor weight = read_checked(source, norm.file, {d});
  const bool plus_one = norm.rule.transform == WeightTransform::PlusOne;
  // A LayerNorm takes the mean out of whatever reaches it, so only a direction's centred part moves
  // the logits: each row is centred over d (fold_ln's center_weights), which ranks a decoder row's
  // tokens as TransformerLens's W_U does. (Its center_unembed, a shift per feature, is not applied.)
  const bool center = folder.config.norm == NormKind::LayerNorm;
  const float* w = weight.data<float>();
  float* u = W_U.data<float>();
  for (int64_t v = 0; v < vocab; ++v) {
    float* row = u + v * d;
    double mean = 0;
    for (int64_t j = 0; j < d; ++j) {
      row[j] *= plus_one ? 1.0f + w[j] : w[j];
      mean += row[j];
    }
    mean /= static_cast<double>(d);
    if (center)
      for (int64_t j = 0; j < d; ++j) row[j] = static_cast<float>(row[j] - mean);
  }
  return W_U;
}

// ---------------------------------------------------------------- families

std::string with_block(const std::string& pattern, int64_t block) {
  const size_t at = pattern.find("{i}");
  if (at == std::string::npos) return pattern;
  return pattern.substr(0, at) + std::to_string(block) + pattern.substr(at + 3);
}

bool is_block_buffer(const std::string& name, const std::string& prefix, const std::vector<std::string>& suffixes,
                     int64_t layers) {
  if (name.rfind(prefix, 0) != 0) return false;
  size_t pos = prefix.size(), digits = 0;
  int64_t layer = 0;
  while (pos < name.size() && name[pos] >= '0' && name[pos] <= '9' && digits < 6) {
    layer = layer * 10 + (name[pos++] - '0');
    ++digits;
  }
  if (digits == 0 || layer >= layers) return false;
  const std::string rest = name.substr(pos);
  for (const std::string& suffix : suffixes)
    if (rest == suffix) return true;
  return false;
}

std::vector<const ModelFamily*> all_families() {
  return {&gpt_neo_family(), &gpt2_family(), &gpt_neox_family(), &llama_family(),
          &qwen2_family(),   &mistral_family(), &gemma2_family()};
}

std::string supported_families_text() {
  const std::vector<const ModelFamily*> families = all_families();
  std::string text;
  for (size_t i = 0; i < families.size(); ++i) {
    text += i == 0 ? "" : i + 1 == families.size() ? " or " : ", ";
    text += families[i]->name;
    if (families[i]->model_type == "gpt_neox") text += " (Pythia)";
  }
  return text;
}

const ModelFamily& family_for(const Json& config, const std::string& source) {
  if (!config.is_object()) throw DataError(cat(source, ": expected a JSON object, got a ", config.type_name()));
  const std::string type =
      config.has("model_type") && config.at("model_type").is_string() ? config.at("model_type").as_string() : "";
  std::string known;
  for (const ModelFamily* family : all_families()) {
    if (family->model_type == type) return *family;
    known += (known.empty() ? "" : ", ") + ("\"" + family->model_type + "\"");
  }
  throw DataError(cat(source, ": 'model_type' ", config.has("model_type") ? config.at("model_type").dump() : "(none)",
                      " is not a model family we read (", known, ")"));
}

std::string model_weights_fingerprint(const std::string& dir) {
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  if (std::filesystem::exists(single)) return weights_fingerprint(single);
  std::string joined = file_fingerprint(index);
  std::set<std::string> shards;
  const Json j = read_json_file(index);
  if (j.is_object() && j.has("weight_map") && j.at("weight_map").is_object())
    for (const auto& [name, shard] : j.at("weight_map").items())
      if (shard.is_string()) shards.insert(shard.as_string());
  for (const std::string& shard : shards) joined += cat("|", shard, "=", weights_fingerprint(dir + "/" + shard));
  return joined;
}

}  // namespace sae
