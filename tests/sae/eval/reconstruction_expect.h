// Checks SAELens's reconstruction metrics (sae/eval ReconstructionMetrics) against a fixture's
// `{prefix}mse`, `cossim`, `l1`, `l2_norm_in`, `l2_norm_out`, `l2_ratio` and
// `relative_reconstruction_bias`, each to 1e-5 relative.
#pragma once

#include <string>

#include "sae/eval/evaluate.h"
#include "tests/util/compare.h"
#include "tests/util/fixture.h"

namespace sae::testing {

inline void expect_reconstruction_metrics(const ReconstructionMetrics& m, const test::Fixture& e,
                                          const std::string& prefix) {
  const std::pair<const char*, double> values[] = {
      {"mse", m.mse},       {"cossim", m.cossim},           {"l1", m.l1},
      {"l2_norm_in", m.l2_norm_in}, {"l2_norm_out", m.l2_norm_out}, {"l2_ratio", m.l2_ratio},
      {"relative_reconstruction_bias", m.relative_reconstruction_bias}};
  for (const auto& [key, value] : values) expect_relative(value, e.scalar(prefix + key), 1e-5, prefix + key);
}

}  // namespace sae::testing
