// The architectures' PyTorch float64 fixture (tests/ref/arch/arch_reference.safetensors, written by
// scripts/gen_arch_fixtures.py; tensor names in docs/architectures.md §4) read into our types: each
// case's options, parameters, batch and lambda. Shared by the tests of tests/sae/arch.
#pragma once
#include <string>
#include <vector>

#include "sae/arch.h"
#include "sae/params.h"
#include "tests/util/fixture.h"

namespace sae::testing {

inline const test::Fixture& arch_fixture() {
  static const test::Fixture fixture(std::string(SAE_SOURCE_DIR) + "/tests/ref/arch/arch_reference.safetensors");
  return fixture;
}

// Every case of the fixture, in its order.
inline const std::vector<std::string>& arch_cases() {
  static const std::vector<std::string> cases = {"standard",      "topk",          "topk_auxk", "batchtopk",
                                                 "jumprelu_step", "jumprelu_tanh", "gated"};
  return cases;
}

struct ArchCase {
  std::string name;
  ArchOptions options;
  double lambda = 0;
};

inline ArchCase arch_case(const std::string& name) {
  const test::Fixture& fx = arch_fixture();
  ArchCase c;
  c.name = name;
  ArchOptions& o = c.options;
  if (name == "standard") {
    c.lambda = fx.scalar("cfg.lambda_standard");
  } else if (name == "topk" || name == "topk_auxk" || name == "batchtopk") {
    o.architecture = name == "batchtopk" ? Architecture::BatchTopK : Architecture::TopK;
    o.k = fx.integer("cfg.k");
    o.unit_norm_decoder = true;
    if (name != "topk") {
      o.auxk_coefficient = fx.scalar("cfg.aux_alpha");
      o.auxk_k = fx.integer("cfg.k_aux");
      o.dead_tokens = fx.integer("cfg.dead_tokens");
    }
    o.batchtopk_threshold_lr = fx.scalar("cfg.batchtopk_threshold_lr");
  } else if (name == "jumprelu_step" || name == "jumprelu_tanh") {
    o.architecture = Architecture::JumpReLU;
    o.jumprelu_bandwidth = fx.scalar("cfg.bandwidth");
    if (name == "jumprelu_step") {
      o.jumprelu_penalty = JumpReluPenalty::Step;
      o.unit_norm_decoder = true;
      c.lambda = fx.scalar("cfg.lambda_step");
    } else {
      o.jumprelu_penalty = JumpReluPenalty::Tanh;
      o.jumprelu_ste_to_input = true;
      o.jumprelu_tanh_c = fx.scalar("cfg.tanh_c");
      o.jumprelu_pre_act = fx.scalar("cfg.lambda_pre");
      c.lambda = fx.scalar("cfg.lambda_tanh");
    }
  } else if (name == "gated") {
    o.architecture = Architecture::Gated;
    c.lambda = fx.scalar("cfg.lambda_gated");
  }
  return c;
}

// The case's initial parameters (or "final" ones with prefix "final") in `dtype`.
inline SaeParams arch_case_params(const ArchCase& c, DType dtype, const std::string& part = "param") {
  const test::Fixture& fx = arch_fixture();
  SaeParams p;
  p.architecture = c.options.architecture;
  p.k = c.options.k;
  for (int i = 0; i < 8; ++i) {
    const std::string name = c.name + "." + part + "." + SaeParams::kSlotNames[i];
    if (fx.has(name)) *p.slots()[i] = fx.tensor(name, dtype);
  }
  if (c.name == "batchtopk" && part == "param") p.batchtopk_threshold = fx.scalar("batchtopk.state.threshold");
  return p;
}

inline Tensor arch_case_tensor(const ArchCase& c, const std::string& what, DType dtype) {
  const test::Fixture& fx = arch_fixture();
  Tensor t = fx.tensor(c.name + "." + what, dtype);
  return t;
}

}  // namespace sae::testing
