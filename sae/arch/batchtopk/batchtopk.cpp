// The BatchTopK unit (see batchtopk.h): the units-that-select-by-batch base of the TopK family
// (sae/arch/topk_family.h: options, threshold, inference, the SAELens export as a "jumprelu") with
// BatchTopK's step and reference.
#include "sae/arch/batchtopk/batchtopk.h"

#include "sae/arch/topk_family.h"
#include "tensor/ops.h"

namespace sae {

namespace {
class BatchTopKUnit : public BatchThresholdUnit {
 public:
  std::string name() const override { return "batchtopk"; }
  std::string description() const override {
    return "f = relu(P) on the k N largest relu(P) of the batch, AuxK; exported as a jumprelu (Bussmann et al. 2024)";
  }
  std::unique_ptr<UnitStep> make_step(const ArchSettings& s, const StepShape& shape, DType dtype,
                                      Device device) const override {
    return std::make_unique<BatchTopKStep>(topk_settings(s, shape.d_out), s.number("batchtopk-threshold-lr"), shape,
                                           dtype, device, name());
  }
  ReferenceLoss reference_loss(const ArchSettings& s, const ArchVariables& p, const Tensor& x, const Tensor& target,
                               double lambda, const std::vector<uint8_t>* dead,
                               const ArchFrozen* frozen) const override {
    const TopKSettings o = topk_settings(s, target.size(1));
    const Tensor P = add(matmul(p.encoder_input_value(x), p.W_enc.data()), p.b_enc.data());
    const std::vector<uint8_t> kept = top_k_flat(relu(P).to_vector(), o.k * x.size(0));
    return topk_family_reference(o, kept, p, x, target, lambda, dead, frozen);
  }
};
}  // namespace

const ArchUnit& batchtopk_unit() {
  static const BatchTopKUnit unit;
  return unit;
}

}  // namespace sae
