// What the tests of SAEs saved by other tools (sparsify's folders, dictionary_learning's ae.pt)
// share: sae_apply's features and reconstruction of an SAE on an .npy of inputs, and their
// comparison with what the other tool computed.
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "io/npy.h"
#include "tests/util/compare.h"
#include "tests/util/test_util.h"

namespace sae::testing {

// sae_apply's features [N, F] and reconstruction [N, d] of `sae` on `inputs` (run as a program).
inline std::pair<Tensor, Tensor> sae_apply_outputs(const std::string& sae, const std::string& inputs,
                                                   const TempDir& dir) {
  const std::string f = dir.str("f.npy"), out = dir.str("out.npy");
  const CommandResult r = run_binary(
      "sae_apply", cat("--sae ", sae, " --input ", inputs, " --features-out ", f, " --reconstruction-out ", out), dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  return {NpyFile::open(f).read_f32(), NpyFile::open(out).read_f32()};
}

// Equal shapes, and values within 1e-5 of 1 + the largest |want| (float32 sums in another order).
inline void expect_same_outputs(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  EXPECT_LE(max_abs_diff(got, want), 1e-5 * (1.0 + max_abs(want))) << what;
}

}  // namespace sae::testing
