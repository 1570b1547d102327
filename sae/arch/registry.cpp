// The registry of architecture units (see registry.h). One line per unit in arch_units().
#include "sae/arch/registry.h"

#include <algorithm>

#include "sae/arch/batchtopk/batchtopk.h"
#include "sae/arch/gated/gated.h"
#include "sae/arch/jumprelu/jumprelu.h"
#include "sae/arch/matryoshka/matryoshka.h"
#include "sae/arch/standard/standard.h"
#include "sae/arch/topk/topk.h"
#include "tensor/ops.h"

namespace sae {

const std::vector<const ArchUnit*>& arch_units() {
  static const std::vector<const ArchUnit*> units = {
      &standard_unit(), &topk_unit(), &batchtopk_unit(), &jumprelu_unit(), &gated_unit(), &matryoshka_unit(),
  };
  return units;
}

std::string arch_unit_names(const char* separator) {
  std::string out;
  for (const ArchUnit* u : arch_units()) out += (out.empty() ? "" : separator) + u->name();
  return out;
}

const ArchUnit* find_arch_unit(const std::string& name) {
  for (const ArchUnit* u : arch_units())
    if (u->name() == name) return u;
  return nullptr;
}

const ArchUnit& arch_unit(const std::string& name) {
  if (const ArchUnit* u = find_arch_unit(name)) return *u;
  throw UsageError(cat("--architecture: expected ", arch_unit_names(", "), ", got '", printable(name), "'"));
}

const ArchUnit& unit_of(const SaeParams& params) {
  for (const ArchUnit* u : arch_units())
    if (u->name() == params.kind) return *u;
  throw Error(cat("SAE of an unknown kind '", printable(params.kind), "'"));
}

const std::vector<ArchOption>& arch_option_rows() {
  static const std::vector<ArchOption> rows = [] {
    std::vector<ArchOption> out;
    for (const ArchUnit* u : arch_units())
      for (const ArchOption& row : u->option_rows()) {
        const bool known =
            std::any_of(out.begin(), out.end(), [&](const ArchOption& o) { return o.name == row.name; });
        if (!known) out.push_back(row);
      }
    return out;
  }();
  return rows;
}

std::string units_reading(const std::string& name) {
  std::string out;
  for (const ArchUnit* u : arch_units()) {
    const std::vector<std::string> reads = u->reads();
    if (std::find(reads.begin(), reads.end(), name) != reads.end()) out += (out.empty() ? "" : ", ") + u->name();
  }
  return out;
}

std::string units_that(bool (ArchUnit::*can)() const) {
  std::string out;
  for (const ArchUnit* u : arch_units())
    if ((u->*can)()) out += (out.empty() ? "" : ", ") + u->name();
  return out;
}

const ArchUnit& unit_for_folder(const Json& cfg, const std::string& where) {
  const std::string saelens = cfg.has("architecture") ? cfg.at("architecture").as_string() : "standard";
  std::string ours;
  if (cfg.has("sae_cpp") && cfg.at("sae_cpp").is_object() && cfg.at("sae_cpp").has("training_architecture"))
    ours = cfg.at("sae_cpp").at("training_architecture").as_string();
  // The names a unit's folders carry: as an SAE, as a transcoder (SAELens's or ours) and, with our
  // sae_cpp name, as a crosscoder.
  auto names_of = [](const ArchUnit& u) {
    std::vector<std::string> names = {u.saelens_architecture()};
    for (bool skip : {false, true}) {
      const std::string saelens = u.saelens_transcoder_architecture(skip);
      names.push_back(!saelens.empty() ? saelens : u.name() + (skip ? "_skip_transcoder" : "_transcoder"));
    }
    return names;
  };
  for (const ArchUnit* u : arch_units()) {
    const std::vector<std::string> names = names_of(*u);
    const bool named = std::find(names.begin(), names.end(), saelens) != names.end() ||
                       (saelens == "crosscoder" && u->trains_crosscoders());
    if (named && (ours.empty() ? u->reads_foreign_folders() && saelens != "crosscoder" : u->name() == ours)) return *u;
  }
  if (!ours.empty() && ours != saelens)
    throw DataError(cat(where, ": sae_cpp.training_architecture '", printable(ours), "' is not a ", printable(saelens),
                        " architecture we know"));
  std::string readable;
  for (const ArchUnit* u : arch_units())
    if (u->reads_foreign_folders())
      for (const std::string& name : names_of(*u)) readable += (readable.empty() ? "" : ", ") + name;
  // SAELens's training classes save BatchTopK and Matryoshka as such, which its own loading refuses
  // too; their inference folders are jumprelu.
  const bool training_class = saelens == "batchtopk" || saelens == "matryoshka_batchtopk";
  throw DataError(cat(where, ": architecture '", printable(saelens), "' is not supported (", readable, ")",
                      training_class ? "; SAELens saves such an SAE for inference as jumprelu (save_inference_model)" : ""));
}

Tensor sae_encode(const SaeParams& params, const Tensor& x) { return unit_of(params).encode(params, x); }

int64_t encode_block_rows(const SaeParams& params, int64_t given) {
  if (given > 0) return given;
  const int64_t features = std::max<int64_t>(params.d_sae(), 1);
  const int64_t quarter_of_w_enc = params.d_in() * features;  // W_enc's bytes, 4 d_in F, over 4
  const int64_t bytes = std::max<int64_t>(int64_t{1} << 26, quarter_of_w_enc);
  return std::clamp<int64_t>(bytes / (features * 4), 1, 4096);
}

Tensor sae_decode(const SaeParams& p, const Tensor& f, const Tensor* x) {
  const Tensor x_hat = add(matmul(f, p.W_dec), p.b_dec);
  if (!p.W_skip.defined()) return x_hat;
  if (!x) throw Error("sae_decode: a skip transcoder's output needs its input x");
  return add(x_hat, matmul(*x, p.W_skip));
}

}  // namespace sae
