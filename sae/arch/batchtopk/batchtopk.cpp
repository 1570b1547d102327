// The BatchTopK unit (see batchtopk.h): the TopK family's options and step with the batch
// selection, the inference threshold theta <- (1 - rate) theta + rate min{f > 0} after each step (0
// until the first), its reference, inference and SAELens export (a "jumprelu" with threshold
// theta for every latent; our sae_cpp keys name it batchtopk and keep k and theta in full precision).
#include "sae/arch/batchtopk/batchtopk.h"

#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
double threshold_of(const SaeParams& p) { return p.settings.has("threshold") ? p.settings.at("threshold").as_number() : 0.0; }

class BatchTopKStep : public TopKFamilyStep {
 public:
  BatchTopKStep(const TopKSettings& settings, double rate, int64_t max_tokens, int64_t d_in, int64_t d_sae,
                DType dtype, Device device)
      : TopKFamilyStep(settings, max_tokens, d_in, d_sae, dtype, device, "batchtopk"), rate_(rate) {}

  StepSums forward(const SaeParams& params, const Tensor& x, double lambda, bool train) override {
    const StepSums sums = TopKFamilyStep::forward(params, x, lambda, train);
    if (main_entries_ > 0) {
      reduce_all_(ReduceOp::min, sums_, lists_.row_vals.slice_rows(0, main_entries_));
      min_positive_ = sums_.item();
    }
    return sums;
  }
  // The inference threshold, from this step's f (the parameters before the update).
  void after_update(SaeParams& params) override {
    if (main_entries_ == 0) return;
    const double theta = threshold_of(params);
    params.settings["threshold"] = theta > 0 ? (1.0 - rate_) * theta + rate_ * min_positive_ : min_positive_;
  }

 protected:
  void select(SparseFeatures& main, const Tensor& pre, const Tensor& b_enc, int64_t n) override {
    batchtopk_select_(main, pre, b_enc, settings_.k * n);
  }

 private:
  double rate_, min_positive_ = 0;
};

class BatchTopKUnit : public ArchUnit {
 public:
  std::string name() const override { return "batchtopk"; }
  std::string description() const override {
    return "f = relu(P) on the k N largest relu(P) of the batch, AuxK; exported as a jumprelu (Bussmann et al. 2024)";
  }
  std::vector<ArchOption> option_rows() const override {
    std::vector<ArchOption> rows = topk_family_rows();
    rows.push_back({"batchtopk-threshold-lr", "batchtopk_threshold_lr",
                    "rate of the inference threshold's moving average of the smallest kept activation",
                    ArchValueType::Number, "0.01"});
    return rows;
  }
  std::vector<std::string> reads() const override {
    std::vector<std::string> names = topk_family_reads();
    names.push_back("batchtopk-threshold-lr");
    return names;
  }
  void validate(const ArchSettings& s, int64_t d_sae) const override {
    validate_topk_family(s, d_sae, name());
    const double rate = s.number("batchtopk-threshold-lr");
    if (!(rate > 0 && rate <= 1))
      throw UsageError(cat("--batchtopk-threshold-lr must be in (0, 1], got ", rate));
  }
  bool has_lambda() const override { return false; }
  std::string sparsity_note() const override { return "sets its L0 with --k"; }
  DictionaryInit dictionary_init(const ArchSettings& s) const override { return topk_family_dictionary_init(s); }
  void init_own(SaeParams& p, const ArchSettings& s) const override {
    p.settings["k"] = s.integer("k");
    p.settings["threshold"] = 0.0;
  }
  std::unique_ptr<UnitStep> make_step(const ArchSettings& s, int64_t max_tokens, int64_t d, int64_t d_sae, DType dtype,
                                      Device device) const override {
    return std::make_unique<BatchTopKStep>(topk_settings(s, d), s.number("batchtopk-threshold-lr"), max_tokens, d,
                                           d_sae, dtype, device);
  }
  ReferenceLoss reference_loss(const ArchSettings& s, const ArchVariables& p, const Tensor& x, double lambda,
                               const std::vector<uint8_t>* dead, const ArchFrozen* frozen) const override {
    const TopKSettings o = topk_settings(s, x.size(1));
    const Tensor P = add(matmul(x, p.W_enc.data()), p.b_enc.data());
    const std::vector<uint8_t> kept = top_k_flat(relu(P).to_vector(), o.k * x.size(0));
    return topk_family_reference(o, kept, p, x, lambda, dead, frozen);
  }
  Tensor encode(const SaeParams& p, const Tensor& x) const override {
    check(p);
    const Tensor P = add(matmul(x, p.W_enc), p.b_enc);
    return mul(relu(P), gt(P, Tensor::full(Shape{1}, threshold_of(p), P.dtype(), P.device())));
  }
  std::string saelens_architecture() const override { return "jumprelu"; }
  bool reads_foreign_folders() const override { return false; }
  std::vector<std::pair<std::string, Tensor>> saelens_weights(const SaeParams& p) const override {
    std::vector<std::pair<std::string, Tensor>> out = ArchUnit::saelens_weights(p);
    out.push_back({"threshold", Tensor::full(Shape{p.d_sae()}, threshold_of(p), DType::F32)});
    return out;
  }
  void set_cfg_keys(const SaeParams& p, Json&, Json& ours) const override {
    ours["k"] = p.settings.at("k");
    ours["batchtopk_threshold"] = threshold_of(p);
  }
  // Our BatchTopK: one threshold for every latent (in full precision in sae_cpp).
  void import_rest(const SafetensorsFile& weights, const Json& cfg, const std::string& where,
                   SaeParams& p) const override {
    if (!weights.has("threshold")) throw DataError(cat(where, ": missing tensor threshold"));
    const Tensor threshold = weights.read_f32("threshold");
    if (threshold.shape() != Shape{p.d_sae()})
      throw DataError(cat(where, ": threshold should be [", p.d_sae(), "], got ", threshold.describe()));
    const std::vector<double> theta = threshold.to_vector();
    for (double v : theta)
      if (v != theta[0]) throw DataError(cat(where, ": a batchtopk SAE has one threshold for every latent"));
    const Json& ours = cfg.at("sae_cpp");
    p.settings["threshold"] = ours.has("batchtopk_threshold") ? ours.at("batchtopk_threshold").as_number() : theta[0];
    p.settings["k"] = ours.has("k") ? ours.at("k").as_int() : int64_t(0);
  }
  void save_state(const SaeParams& p, std::vector<std::pair<std::string, Tensor>>&, Json& info) const override {
    info["batchtopk_threshold"] = threshold_of(p);
  }
  void load_state(const SafetensorsFile&, const Json& info, SaeParams& p) const override {
    if (info.has("batchtopk_threshold")) p.settings["threshold"] = info.at("batchtopk_threshold").as_number();
  }
};
}  // namespace

const ArchUnit& batchtopk_unit() {
  static const BatchTopKUnit unit;
  return unit;
}

}  // namespace sae
