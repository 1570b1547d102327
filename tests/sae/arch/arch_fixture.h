// The architectures' PyTorch float64 fixture (tests/ref/arch/arch_reference.safetensors, written by
// scripts/gen_arch_fixtures.py; tensor names in docs/architectures.md §4) read into our types: each
// case's unit, settings, parameters, batch and lambda. Shared by the tests of tests/sae/arch.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "sae/arch/registry.h"
#include "sae/params.h"
#include "tests/util/fixture.h"
#include "tests/util/standard_sae.h"

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
  std::string unit;                                   // its architecture unit
  std::vector<std::pair<std::string, Json>> options;  // option values besides the defaults
  int64_t dead_tokens = 1000000;
  double lambda = 0;
  bool auxk = false;       // the case has AuxK
  bool unit_norm = false;  // the case's decoder is kept at unit norm
  const ArchUnit& arch() const { return arch_unit(unit); }
  // Its settings; `unit_norm` overrides the case's (for units that read --unit-norm-decoder).
  ArchSettings settings(bool with_unit_norm) const {
    std::vector<std::pair<std::string, Json>> given = options;
    if (unit != "standard") given.push_back({"unit-norm-decoder", Json(with_unit_norm ? "on" : "off")});
    return unit_settings(unit, given, dead_tokens);
  }
  ArchSettings settings() const { return settings(unit_norm); }
};

inline ArchCase arch_case(const std::string& name) {
  const test::Fixture& fx = arch_fixture();
  ArchCase c;
  c.name = name;
  if (name == "standard") {
    c.unit = "standard";
    c.options = {{"sparse", Json("off")}};
    c.lambda = fx.scalar("cfg.lambda_standard");
  } else if (name == "topk" || name == "topk_auxk" || name == "batchtopk") {
    c.unit = name == "batchtopk" ? "batchtopk" : "topk";
    c.unit_norm = true;
    c.options = {{"k", Json(fx.integer("cfg.k"))}, {"auxk-coefficient", Json(0.0)}};
    if (name != "topk") {
      c.auxk = true;
      c.options = {{"k", Json(fx.integer("cfg.k"))},
                   {"auxk-coefficient", Json(fx.scalar("cfg.aux_alpha"))},
                   {"auxk-k", Json(fx.integer("cfg.k_aux"))}};
      c.dead_tokens = fx.integer("cfg.dead_tokens");
    }
    if (name == "batchtopk") c.options.push_back({"batchtopk-threshold-lr", Json(fx.scalar("cfg.batchtopk_threshold_lr"))});
  } else if (name == "jumprelu_step" || name == "jumprelu_tanh") {
    c.unit = "jumprelu";
    c.options = {{"jumprelu-bandwidth", Json(fx.scalar("cfg.bandwidth"))}};
    if (name == "jumprelu_step") {
      c.unit_norm = true;
      c.lambda = fx.scalar("cfg.lambda_step");
    } else {
      c.options.push_back({"jumprelu-penalty", Json("tanh")});
      c.options.push_back({"jumprelu-tanh-c", Json(fx.scalar("cfg.tanh_c"))});
      c.options.push_back({"jumprelu-pre-act", Json(fx.scalar("cfg.lambda_pre"))});
      c.lambda = fx.scalar("cfg.lambda_tanh");
    }
  } else if (name == "gated") {
    c.unit = "gated";
    c.lambda = fx.scalar("cfg.lambda_gated");
  }
  return c;
}

// The case's initial parameters (or "final" ones with prefix "final") in `dtype`.
inline SaeParams arch_case_params(const ArchCase& c, DType dtype, const std::string& part = "param") {
  const test::Fixture& fx = arch_fixture();
  const ArchUnit& unit = c.arch();
  SaeParams p;
  p.kind = c.unit;
  auto read = [&](const std::string& slot) { return fx.tensor(c.name + "." + part + "." + slot, dtype); };
  p.W_enc = read("W_enc");
  if (unit.has_b_enc()) p.b_enc = read("b_enc");
  p.W_dec = read("W_dec");
  p.b_dec = read("b_dec");
  for (const std::string& own : unit.own_tensors()) p.own.push_back({own, read(own)});
  if (c.unit == "topk" || c.unit == "batchtopk") p.settings["k"] = fx.integer("cfg.k");
  if (c.unit == "batchtopk") p.settings["threshold"] = part == "param" ? fx.scalar("batchtopk.state.threshold") : 0.0;
  return p;
}

inline Tensor arch_case_tensor(const ArchCase& c, const std::string& what, DType dtype) {
  return arch_fixture().tensor(c.name + "." + what, dtype);
}

}  // namespace sae::testing
