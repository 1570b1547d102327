// What every unit shares (see unit.h): fresh parameters, the shape check, the SAELens weights and
// import by tensor name, the input shift and scale folds.
#include "sae/arch/unit.h"

#include <algorithm>
#include <set>

#include <cmath>

#include "sae/arch/dictionary.h"
#include "tensor/ops.h"
#include "tensor/precision.h"

namespace sae {

DType activation_dtype(DType dtype) {
  return dtype == DType::F32 && matmul_precision() == Precision::BF16 ? DType::BF16 : dtype;
}

StepSums UnitStep::pending_sums(const Tensor& sums, int64_t tokens, bool sparse) {
  if (!nonfinite_.defined() || nonfinite_.shape() != sums.shape()) {
    nonfinite_ = Tensor::zeros(sums.shape(), sums.dtype(), sums.device());
    scratch_ = Tensor::zeros(sums.shape(), sums.dtype(), sums.device());
  }
  affine_(scratch_, sums, 0.0, 0.0);  // 0 where finite, NaN where not
  add_(nonfinite_, scratch_);
  StepSums pending;
  pending.tokens = tokens;
  pending.sparse = sparse;
  pending.pending = true;
  return pending;
}

double UnitStep::loss_since_read(double loss) {
  if (!nonfinite_.defined()) return loss;
  bool clean = true;
  for (double v : nonfinite_.to_vector()) clean = clean && v == 0.0;
  if (clean) return loss;
  fill_(nonfinite_, 0.0);
  return std::nan("");
}

void keep_dtype(Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return;
  const Shape shape = t.shape();
  const Device device = t.device();
  t = Tensor();
  t = Tensor::empty(shape, dtype, device);
}

bool finite(const StepSums& s) {
  return std::isfinite(s.loss) && std::isfinite(s.rec) && std::isfinite(s.l1) && std::isfinite(s.aux);
}

ParamUpdate param_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                         const FusedAdam* fused) {
  ParamUpdate u;
  u.param = param;  // a handle: Adam updates the caller's tensor
  if (fused) {
    u.m = m;
    u.v = v;
    u.adam = true;
    u.scalars = fused->scalars;
  } else {
    u.grad = grad;
  }
  return u;
}

SaeParams ArchUnit::initial_params(const ArchSettings& s, const DictionaryShape& shape, Rng& rng,
                                   const std::vector<double>& sample) const {
  SaeParams p = initial_dictionary(dictionary_init(s), shape, rng, sample);
  p.kind = name();
  init_own(p, s);
  check(p);
  return p;
}

bool ArchUnit::chunks_encoder() const {
  const std::vector<std::string> names = reads();
  return std::find(names.begin(), names.end(), "encoder-chunk") != names.end();
}

void ArchUnit::check(const SaeParams& p) const {
  if (p.kind != name()) throw DataError(cat("SAE: a ", p.kind, " SAE given to the ", name(), " architecture"));
  p.check_shapes(has_b_enc(), own_tensors());
  check_settings(p);
}

namespace {
Tensor host_f32(const Tensor& t) { return t.to(Device::CPU).to(DType::F32); }

Tensor read_finite(const NamedTensorFile& weights, const std::string& name, const std::string& where) {
  if (!weights.has(name)) throw DataError(cat(where, ": missing tensor ", name));
  const Tensor t = weights.read_f32(name);
  const float* p = t.data<float>();
  const int64_t k = first_non_finite(p, t.numel());
  if (k >= 0) throw DataError(cat(where, ": ", name, " holds ", p[k], " at element ", k));
  return t;
}
}  // namespace

std::string ArchUnit::folder_architecture(const SaeParams& p) const {
  if (p.sources > 1) return "crosscoder";
  if (!p.transcoder) return saelens_architecture();
  const bool skip = p.W_skip.defined();
  const std::string saelens = saelens_transcoder_architecture(skip);
  return !saelens.empty() ? saelens : name() + (skip ? "_skip_transcoder" : "_transcoder");
}

std::vector<std::pair<std::string, Tensor>> ArchUnit::saelens_weights(const SaeParams& p) const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, tensor] : p.present())
    out.push_back({name, name == "W_skip" ? transpose(host_f32(*tensor)) : host_f32(*tensor)});
  return out;
}

namespace {
// The file as a unit imports it, noting each tensor read: one nobody reads is refused afterwards, as
// SAELens's strict load_state_dict refuses it.
class ReadTracker : public NamedTensorFile {
 public:
  explicit ReadTracker(const NamedTensorFile& file) : file_(file) {}
  const std::string& path() const override { return file_.path(); }
  bool has(const std::string& name) const override { return file_.has(name); }
  std::vector<std::string> names() const override { return file_.names(); }
  Tensor read_f32(const std::string& name) const override {
    read_.insert(name);
    return file_.read_f32(name);
  }
  void refuse_unread(const std::string& where) const {
    for (const std::string& name : file_.names())
      if (!read_.count(name))
        throw DataError(cat(where, ": unexpected tensor ", printable(name), " (SAELens's loading refuses it too)"));
  }

 private:
  const NamedTensorFile& file_;
  mutable std::set<std::string> read_;
};
}  // namespace

SaeParams ArchUnit::import_saelens(const NamedTensorFile& file, const Json& cfg, const std::string& where) const {
  const ReadTracker weights(file);
  SaeParams p;
  p.kind = name();
  if (has_b_enc())
    p.b_enc = read_finite(weights, "b_enc", where);
  else if (weights.has("b_enc"))
    throw DataError(cat(where, ": a ", name(), " SAE has no b_enc"));
  p.W_enc = read_finite(weights, "W_enc", where);
  p.W_dec = read_finite(weights, "W_dec", where);
  p.b_dec = read_finite(weights, "b_dec", where);
  if (p.W_enc.ndim() != 2) throw DataError(cat(where, ": W_enc must be 2-D, got ", p.W_enc.describe()));
  // Orientation first: a W_enc or W_dec stored transposed is named as such, not by the first bias or
  // threshold that disagrees with it.
  if (p.W_dec.ndim() == 2 && p.W_enc.size(1) != p.W_dec.size(0))
    throw DataError(cat(where, ": W_enc ", p.W_enc.describe(), " and W_dec ", p.W_dec.describe(),
                        " disagree: W_enc is [d_in, d_sae] and W_dec [d_sae, d_out] (is one of them transposed?)"));
  if (p.b_enc.defined() && p.b_enc.ndim() == 1 && p.b_enc.size(0) != p.W_enc.size(1))
    throw DataError(cat(where, ": b_enc ", p.b_enc.describe(), " does not match W_enc ", p.W_enc.describe(),
                        ": W_enc is [d_in, d_sae] and W_dec [d_sae, d_out] (are both transposed?)"));
  // The dictionary's kind, from the folder's architecture name (unit_for_folder chose this unit).
  const std::string arch = cfg.has("architecture") ? cfg.at("architecture").as_string() : "standard";
  if (arch == "crosscoder") {
    const Json& ours = cfg.at("sae_cpp");
    p.sources = ours.has("sources") ? ours.at("sources").as_int() : 0;
    if (p.sources < 2) throw DataError(cat(where, ": a crosscoder needs sae_cpp.sources >= 2"));
  } else if (arch != saelens_architecture()) {
    p.transcoder = true;
    if (arch.find("skip") != std::string::npos && weights.has("W_skip")) {
      const Tensor stored = read_finite(weights, "W_skip", where);  // SAELens's [d_out, d_in]
      if (stored.ndim() != 2) throw DataError(cat(where, ": W_skip must be 2-D, got ", stored.describe()));
      p.W_skip = transpose(stored);
    }
    if (arch.find("skip") != std::string::npos && !p.W_skip.defined())
      throw DataError(cat(where, ": a skip transcoder needs W_skip"));
  }
  for (const std::string& own : own_tensors())
    if (weights.has(own)) p.own.push_back({own, read_finite(weights, own, where)});
  import_rest(weights, cfg, where, p);
  for (const std::string& own : own_tensors())
    if (!p.has_own(own)) throw DataError(cat(where, ": missing tensor ", own));
  try {
    check(p);
  } catch (const DataError& e) {
    throw DataError(cat(where, ": ", e.what()));
  }
  // SAELens's input centring: (x - b_dec) W + b = x W + (b - b_dec W), per bias that sees it. Left
  // out, it is SAELens's default, true (which its transcoders refuse).
  if (!cfg.has("apply_b_dec_to_input") || cfg.at("apply_b_dec_to_input").as_bool()) {
    if (p.d_out() != p.d_in() || p.transcoder)
      throw DataError(cat(where, ": apply_b_dec_to_input with a transcoder (SAELens refuses it too)"));
    fold_input_shift(p, input_shift(p));
  }
  finish_import(cfg, where, p);
  // SAELens before 6 saved a scaling_factor [F]; its loader drops one of ones (allclose) and refuses
  // any other without finetuning_scaling_factor, which 6.x cannot load either.
  if (weights.has("scaling_factor")) {
    const std::vector<double> factor = weights.read_f32("scaling_factor").to_vector();
    for (double v : factor)
      if (!(std::abs(v - 1.0) <= 1e-8 + 1e-5))
        throw DataError(cat(where, ": a scaling_factor other than ones (", v, "), SAELens's finetuning scaling factor "
                            "of before 6, is not supported (SAELens 6 cannot load it either)"));
  }
  weights.refuse_unread(where);
  return p;
}

void ArchUnit::fold_input_shift(SaeParams& p, const Tensor& shift) const { p.b_enc = sub(p.b_enc, shift); }

Tensor input_shift(const SaeParams& p) {
  return matmul(p.b_dec.reshape(Shape{1, p.d_in()}), p.W_enc).reshape(Shape{p.d_sae()});
}

Tensor ArchUnit::encoder_input_gradient(const SaeParams& p, const SaeParams& g) const {
  return matmul(p.W_enc, g.b_enc.reshape(Shape{p.d_sae(), 1})).reshape(Shape{p.d_in()});
}

void fold_dictionary_norms(SaeParams& p, const std::vector<double>& norms, const std::vector<std::string>& times) {
  std::vector<double> inverse(norms.size());
  for (size_t i = 0; i < norms.size(); ++i) inverse[i] = 1.0 / norms[i];
  struct Fold {
    Tensor* tensor;
    const std::vector<double>* row;
    const std::vector<double>* col;
    bool in_place() const { return tensor->dtype() == DType::F32 && tensor->owns_its_host_bytes(); }
  };
  const std::vector<double> none;
  std::vector<Fold> folds = {{&p.W_enc, &none, &norms}, {&p.W_dec, &inverse, &none}};  // W_enc's columns, W_dec's rows
  if (p.b_enc.defined()) folds.push_back({&p.b_enc, &none, &norms});
  for (const std::string& name : times) folds.push_back({&p.own_tensor(name), &none, &norms});
  const int64_t features = static_cast<int64_t>(norms.size());
  for (const Fold& f : folds) {
    const Tensor& t = *f.tensor;
    const bool shaped = t.defined() && t.ndim() >= 1 && t.ndim() <= 2 && (f.row->empty() || t.ndim() == 2);
    if (!shaped || (f.row->empty() ? t.size(t.ndim() - 1) : t.size(0)) != features)
      throw Error(cat("fold_dictionary_norms: a tensor of shape ", shaped ? t.shape().str() : "(none)", " for ",
                      features, " latents"));
  }
  // What cannot be scaled in place (another handle shares it, or not host float32) is copied first:
  // a copy that fails leaves p as it was. The in-place scalings after it allocate nothing.
  std::vector<std::pair<Tensor*, Tensor>> copies;
  for (const Fold& f : folds)
    if (!f.in_place()) copies.push_back({f.tensor, scaled_host(*f.tensor, *f.row, *f.col)});
  for (const Fold& f : folds)
    if (f.in_place()) *f.tensor = scaled_host(std::move(*f.tensor), *f.row, *f.col);
  for (auto& [tensor, scaled] : copies) *tensor = std::move(scaled);
}

}  // namespace sae
