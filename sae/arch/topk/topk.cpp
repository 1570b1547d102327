// The TopK unit (see topk.h): the TopK family's options and step with the per-token selection, its
// reference, inference and SAELens export ("topk" with cfg k and rescale_acts_by_decoder_norm false;
// a SAELens folder with rescale_acts_by_decoder_norm true is folded on import).
#include "sae/arch/topk/topk.h"

#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
class TopKStep : public TopKFamilyStep {
 public:
  using TopKFamilyStep::TopKFamilyStep;

 protected:
  void select(SparseFeatures& main, const Tensor& pre, const Tensor& b_enc, int64_t row0) override {
    topk_select_(main, pre, b_enc, Tensor(), settings_.k, row0);
  }
  // A latent shard's candidates: the k best of every shard's are the global k (collectives.h).
  void finish_selection(SparseFeatures& main, int64_t n) override {
    if (spans(collectives_, Group::Shards)) shard_topk_cut(*collectives_, main, 0, n, settings_.k, first_latent_);
  }
};

class TopKUnit : public ArchUnit {
 public:
  std::string name() const override { return "topk"; }
  std::string description() const override {
    return "f = relu(P) on the k largest P of each token, AuxK for dead latents (Gao et al. 2024)";
  }
  std::vector<ArchOption> option_rows() const override { return topk_family_rows(); }
  std::vector<std::string> reads() const override {
    std::vector<std::string> names = topk_family_reads();
    names.push_back("encoder-chunk");
    return names;
  }
  void validate(const ArchSettings& s, int64_t d_sae) const override { validate_topk_family(s, d_sae, name()); }
  int64_t pre_activation_rows(const ArchSettings& s, int64_t max_tokens) const override {
    return topk_encoder_rows(s.integer("encoder-chunk"), max_tokens);
  }
  bool has_lambda() const override { return false; }
  bool trains_crosscoders() const override { return true; }
  std::string sparsity_note() const override { return "sets its L0 with --k"; }
  DictionaryInit dictionary_init(const ArchSettings& s) const override { return topk_family_dictionary_init(s); }
  void init_own(SaeParams& p, const ArchSettings& s) const override { p.settings["k"] = s.integer("k"); }
  void check_settings(const SaeParams& p) const override {
    const int64_t k = p.settings.has("k") ? p.settings.at("k").as_int() : 0;
    if (k < 1 || k > p.d_sae()) throw DataError(cat("SAE (topk): k must be in [1, d_sae = ", p.d_sae(), "], got ", k));
  }
  std::unique_ptr<UnitStep> make_step(const ArchSettings& s, const StepShape& shape, DType dtype,
                                      Device device) const override {
    return std::make_unique<TopKStep>(topk_settings(s, shape.d_out), shape, dtype, device, name());
  }
  ReferenceLoss reference_loss(const ArchSettings& s, const ArchVariables& p, const Tensor& x, const Tensor& target,
                               double lambda, const std::vector<uint8_t>* dead,
                               const ArchFrozen* frozen) const override {
    const TopKSettings o = topk_settings(s, target.size(1));
    const Tensor P = add(matmul(p.encoder_input_value(x), p.W_enc.data()), p.b_enc.data());
    const std::vector<uint8_t> kept = top_k_per_row(P.to_vector(), P.size(0), P.size(1), o.k);
    return topk_family_reference(o, kept, p, x, target, lambda, dead, frozen);
  }
  // The training step's selection (topk_select_: per row the k largest P = x W_enc + b_enc, ties to
  // the lower index, those > 0 kept), in O(N F) and on x's device; then f [N, F].
  Tensor encode(const SaeParams& p, const Tensor& x) const override {
    check(p);
    const Tensor pre = matmul(x, p.W_enc);
    const int64_t n = pre.size(0), features = pre.size(1);
    const int64_t k = std::min<int64_t>(p.settings.at("k").as_int(), features);
    SparseFeatures lists;
    lists.row_ptr = Tensor::empty(Shape{n + 1}, DType::I32, pre.device());  // row_ptr[0] set by the selection
    lists.cols = Tensor::empty(Shape{std::max<int64_t>(n * k, 1)}, DType::I32, pre.device());
    lists.row_vals = Tensor::empty(Shape{std::max<int64_t>(n * k, 1)}, pre.dtype(), pre.device());
    topk_select_(lists, pre, p.b_enc, Tensor(), k, 0);
    return dense_from_lists(lists, 0, n, features, pre);
  }
  void set_cfg_keys(const SaeParams& p, Json& cfg, Json&) const override {
    cfg["k"] = p.settings.at("k");  // required: SAELens silently uses k = 100 without it
    cfg["rescale_acts_by_decoder_norm"] = false;
  }
  void check_cfg(const Json& cfg) const override {
    if (cfg.has("k")) cfg.at("k").as_int();
    if (cfg.has("rescale_acts_by_decoder_norm")) cfg.at("rescale_acts_by_decoder_norm").as_bool();
  }
  void import_rest(const NamedTensorFile&, const Json& cfg, const std::string& where, SaeParams& p) const override {
    if (!cfg.has("k") || !cfg.at("k").is_number()) throw DataError(cat(where, ": a topk cfg.json needs an integer k"));
    p.settings["k"] = cfg.at("k").as_int();
  }
  // SAELens's rescale_acts_by_decoder_norm: select on P n_i and divide by n_i again in decode is our
  // topk with W_enc[:, i] n_i, b_enc n_i and W_dec[i, :] / n_i.
  void finish_import(const Json& cfg, const std::string& where, SaeParams& p) const override {
    if (!cfg.has("rescale_acts_by_decoder_norm") || !cfg.at("rescale_acts_by_decoder_norm").as_bool()) return;
    const int64_t features = p.d_sae();
    const Tensor n = norm2(p.W_dec, 1);
    if (!(reduce(ReduceOp::min, n).item() > 0))
      throw DataError(cat(where, ": rescale_acts_by_decoder_norm with a zero decoder row"));
    p.W_enc = mul(p.W_enc, n.reshape(Shape{1, features}));
    p.b_enc = mul(p.b_enc, n);
    p.W_dec = div(p.W_dec, n.reshape(Shape{features, 1}));
  }
};
}  // namespace

const ArchUnit& topk_unit() {
  static const TopKUnit unit;
  return unit;
}

}  // namespace sae
