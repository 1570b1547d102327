// The training metrics of sae/train/metrics.h on cases worked out by hand: the fraction of variance
// unexplained (against the batch's mean token, not the mean of all values, and not uncentred) and
// concept recovery (cosines of unit concepts with decoder rows of any norm and sign, zero rows,
// dead features left out of purity, the threshold inclusive).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "sae/train/metrics.h"
#include "tensor/precision.h"
#include "tensor/rng.h"
#include "tests/util/random_inputs.h"
#include "tensor/tensor.h"

using namespace sae;

TEST(Metrics, FractionOfVarianceUnexplainedByHand) {
  // x [3, 2]: column means (2, 10); centred x: (-1, -2), (0, 0), (1, 2): total 1 + 4 + 0 + 0 + 1 + 4 = 10.
  const std::vector<float> x = {1, 8, 2, 10, 3, 12};
  // Residuals (0, 1), (-1, 0), (0, 2): 1 + 1 + 4 = 6, FVU = 0.6.
  const std::vector<float> x_hat = {1, 7, 3, 10, 3, 10};
  EXPECT_NEAR(fraction_of_variance_unexplained(x.data(), x_hat.data(), 3, 2), 0.6, 1e-12);
  // (With the mean of all values, 6, the total would be 25+4+16+16+9+36 = 106; uncentred, 322.)
  // A perfect reconstruction, and the mean token as the reconstruction (FVU 1).
  EXPECT_EQ(fraction_of_variance_unexplained(x.data(), x.data(), 3, 2), 0.0);
  const std::vector<float> mean_token = {2, 10, 2, 10, 2, 10};
  EXPECT_NEAR(fraction_of_variance_unexplained(x.data(), mean_token.data(), 3, 2), 1.0, 1e-12);
  // Every token the same (a batch of one token): no variance to explain, so no fraction of it: NaN
  // (as sae_eval's n/a; it was 0, which read as a perfect reconstruction beside a large rec_loss).
  const std::vector<float> same = {4, 5, 4, 5};
  EXPECT_TRUE(std::isnan(fraction_of_variance_unexplained(same.data(), x.data(), 2, 2)));
}

TEST(Metrics, ConceptRecoveryByHand) {
  // Concepts (unit rows): e1, e2, (0.6, 0.8).
  const Tensor concepts = Tensor::from_vector({1, 0, 0, 1, 0.6, 0.8}, Shape{3, 2});
  // Decoder rows of other norms: 3 e1 (cos 1, 0, 0.6), -2 e2 (cos 0, -1, -0.8),
  // (4, 3) (cos 0.8, 0.6, 0.96), and a zero row (cos 0 with everything).
  const Tensor decoder = Tensor::from_vector({3, 0, 0, -2, 4, 3, 0, 0}, Shape{4, 2});
  // Best per concept: 1, 0.6, 0.96 -> MMCS 2.56 / 3; recovered at 0.9: e1 and (0.6, 0.8).
  // Best per feature: 1, 0, 0.96, 0 -> pure at 0.9: features 0 and 2.
  const ConceptRecovery all = concept_recovery(concepts, decoder, {});
  EXPECT_EQ(all.concepts, 3);
  EXPECT_EQ(all.alive_features, 4);
  EXPECT_NEAR(all.mmcs, 2.56 / 3, 1e-6);
  EXPECT_NEAR(all.recovered, 2.0 / 3, 1e-12);
  EXPECT_NEAR(all.purity, 2.0 / 4, 1e-12);
  // Feature 2 dead: purity over the three alive ones (feature 0 pure); MMCS and recovery still use
  // every row.
  const ConceptRecovery alive = concept_recovery(concepts, decoder, {true, true, false, true});
  EXPECT_EQ(alive.alive_features, 3);
  EXPECT_NEAR(alive.purity, 1.0 / 3, 1e-12);
  EXPECT_NEAR(alive.mmcs, 2.56 / 3, 1e-6);
  EXPECT_NEAR(alive.recovered, 2.0 / 3, 1e-12);
  // Threshold 0.5: e2 (0.6) recovered too; feature 1 (best cosine 0) and the zero row still not pure.
  const ConceptRecovery loose = concept_recovery(concepts, decoder, {}, 0.5);
  EXPECT_NEAR(loose.recovered, 1.0, 1e-12);
  EXPECT_NEAR(loose.purity, 2.0 / 4, 1e-12);
  // The threshold is inclusive: a cosine of exactly 1 counts at threshold 1.
  const ConceptRecovery exact = concept_recovery(concepts, decoder, {}, 1.0);
  EXPECT_NEAR(exact.recovered, 1.0 / 3, 1e-12);
  EXPECT_NEAR(exact.purity, 1.0 / 4, 1e-12);
  // The matches feature by feature.
  const std::vector<ConceptMatch> best = best_concept_per_feature(concepts, decoder);
  ASSERT_EQ(best.size(), 4u);
  EXPECT_EQ(best[0].index, 0);
  EXPECT_NEAR(best[0].cosine, 1.0, 1e-6);
  EXPECT_EQ(best[1].index, 0);  // cosines 0, -1, -0.8: the first concept, at 0
  EXPECT_NEAR(best[1].cosine, 0.0, 1e-6);
  EXPECT_EQ(best[2].index, 2);
  EXPECT_NEAR(best[2].cosine, 0.96, 1e-6);
  EXPECT_EQ(best[3].index, 0);
  EXPECT_EQ(best[3].cosine, 0.0);
  // Decoder and concepts of different widths: one error naming both.
  EXPECT_THROW(concept_recovery(concepts, Tensor::zeros(Shape{4, 3}), {}), Error);
}

TEST(Metrics, ConceptRecoveryIsTheSameAtEveryRunPrecision) {
  // An evaluation: a run at --precision tf32 or bf16 reports the cosines float32 gives (before, the
  // run's precision rounded the rows first and moved MMCS and recovery).
  Rng rng(5);
  const Tensor concepts = sae::testing::random_cpu(Shape{40, 24}, DType::F32, rng);
  const Tensor noise = sae::testing::random_cpu(Shape{60, 24}, DType::F32, rng);
  Tensor decoder = Tensor::empty(Shape{60, 24});  // near the concepts: cosines around the 0.9 threshold
  const float *c = concepts.data<float>(), *e = noise.data<float>();
  for (int64_t i = 0; i < 60; ++i)
    for (int64_t j = 0; j < 24; ++j) decoder.data<float>()[i * 24 + j] = c[(i % 40) * 24 + j] + 0.3f * e[i * 24 + j];
  const ConceptRecovery want = concept_recovery(concepts, decoder, {});
  for (Precision p : {Precision::TF32, Precision::BF16}) {
    const ScopedMatmulPrecision run(p);
    const ConceptRecovery got = concept_recovery(concepts, decoder, {});
    EXPECT_EQ(got.mmcs, want.mmcs) << precision_name(p);
    EXPECT_EQ(got.recovered, want.recovered) << precision_name(p);
    EXPECT_EQ(got.purity, want.purity) << precision_name(p);
    EXPECT_EQ(matmul_precision(), p);  // put back
  }
}

TEST(Metrics, ConceptRecoveryOverManyBlocksOfFeaturesAndConceptsMatchesDoublePrecision) {
  // More decoder rows than one feature block (16384) and more concepts than one concept block (512):
  // the cosines are computed block by block (no whole normalised decoder, no [C, F] matrix), and every
  // best match must still land on its own feature and concept. Reference: plain double loops.
  const int64_t n_concepts = 600, n_features = 2 * 16384 + 101, d = 32;
  Rng rng(11);
  Tensor concepts = sae::testing::random_cpu(Shape{n_concepts, d}, DType::F32, rng);
  float* c = concepts.data<float>();
  for (int64_t r = 0; r < n_concepts; ++r) {  // unit rows
    double sq = 0;
    for (int64_t j = 0; j < d; ++j) sq += double(c[r * d + j]) * c[r * d + j];
    for (int64_t j = 0; j < d; ++j) c[r * d + j] = float(c[r * d + j] / std::sqrt(sq));
  }
  Tensor decoder = sae::testing::random_cpu(Shape{n_features, d}, DType::F32, rng);
  float* w = decoder.data<float>();
  for (int64_t i = 0; i < n_features; i += 4)  // every fourth row a scaled concept (cosine 1)
    for (int64_t j = 0; j < d; ++j) w[i * d + j] = 2.5f * c[(((i / 4) * 7) % n_concepts) * d + j];
  for (int64_t j = 0; j < d; ++j) w[(n_features - 1) * d + j] = 0;  // a zero row, in the last block
  std::vector<double> best_concept(n_concepts, -1), best_feature(n_features, -1);
  std::vector<int64_t> best_index(n_features, -1);
  for (int64_t i = 0; i < n_features; ++i) {
    double norm = 0;
    for (int64_t j = 0; j < d; ++j) norm += double(w[i * d + j]) * w[i * d + j];
    norm = std::sqrt(norm);
    for (int64_t r = 0; r < n_concepts; ++r) {
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += double(c[r * d + j]) * w[i * d + j];
      const double cos = norm > 0 ? dot / norm : 0.0;
      best_concept[r] = std::max(best_concept[r], cos);
      if (best_index[i] < 0 || cos > best_feature[i] + 1e-6) {
        best_index[i] = r;
        best_feature[i] = cos;
      }
    }
  }
  double sum = 0;
  int64_t recovered = 0, pure = 0;
  for (double v : best_concept) {
    ASSERT_GT(std::fabs(v - 0.9), 1e-4);  // no case that float rounding could put on either side
    sum += v;
    recovered += v >= 0.9;
  }
  for (double v : best_feature) {
    ASSERT_GT(std::fabs(v - 0.9), 1e-4);
    pure += v >= 0.9;
  }
  const ConceptRecovery got = concept_recovery(concepts, decoder, {});
  EXPECT_NEAR(got.mmcs, sum / n_concepts, 1e-6);
  EXPECT_EQ(got.recovered, double(recovered) / n_concepts);
  EXPECT_EQ(got.purity, double(pure) / n_features);
  EXPECT_EQ(recovered, n_concepts);  // the planted rows recover every concept
  const std::vector<ConceptMatch> best = best_concept_per_feature(concepts, decoder);
  ASSERT_EQ(int64_t(best.size()), n_features);
  int64_t wrong = 0;
  for (int64_t i = 0; i < n_features; ++i) {
    wrong += std::fabs(best[i].cosine - best_feature[i]) > 1e-5;
    if (i % 4 == 0 && i != n_features - 1) wrong += best[i].index != ((i / 4) * 7) % n_concepts;
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(best[n_features - 1].index, 0);  // the zero row: concept 0 at cosine 0
  EXPECT_EQ(best[n_features - 1].cosine, 0.0);
}
