// SaelensView: the tensors a SAELens folder would hold (W_enc, b_enc, ...), each made on demand from
// another tool's file (a transposed weight, a threshold clamped), so that an architecture unit's
// import_saelens reads a foreign state dict as it reads a SAELens folder.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/named_tensor_file.h"

namespace sae {

class SaelensView : public NamedTensorFile {
 public:
  explicit SaelensView(const std::string& path) : path_(path) {}
  void add(const std::string& name, std::function<Tensor()> read) { readers_[name] = std::move(read); }
  const std::string& path() const override { return path_; }
  bool has(const std::string& name) const override { return readers_.count(name) > 0; }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, read] : readers_) out.push_back(name);
    return out;
  }
  Tensor read_f32(const std::string& name) const override { return readers_.at(name)(); }

 private:
  std::string path_;
  std::map<std::string, std::function<Tensor()>> readers_;
};

}  // namespace sae
