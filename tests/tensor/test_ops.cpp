// Per-op tests of the tensor library: hand-computed values, broadcasting, reductions, matmul with
// every transpose flag, views, dtype conversion, and the errors the front-end must throw.
#include <gtest/gtest.h>

#include <tuple>

#include <cmath>

#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tensor/rng.h"

using namespace sae;

namespace {
Tensor t32(std::vector<double> v, Shape s) { return Tensor::from_vector(v, s, DType::F32); }
Tensor t64(std::vector<double> v, Shape s) { return Tensor::from_vector(v, s, DType::F64); }

void expect_values(const Tensor& t, const std::vector<double>& expected, double tol = 1e-6) {
  std::vector<double> got = t.to_vector();
  ASSERT_EQ(got.size(), expected.size()) << t.describe();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], tol) << "index " << i << " of " << t.describe();
}
}  // namespace

// Empty tensors to and from host vectors: an empty std::vector's data() is null, and memcpy with a
// null pointer is undefined even for 0 bytes (make sanitize caught it in Tensor::from_vector).
TEST(Tensor, EmptyTensorsConvertFromAndToVectors) {
  for (DType dtype : {DType::F64, DType::F32}) {
    Tensor t = Tensor::from_vector({}, Shape{0, 3}, dtype);
    EXPECT_EQ(t.numel(), 0);
    EXPECT_EQ(t.shape(), (Shape{0, 3}));
    EXPECT_TRUE(t.to_vector().empty());
  }
  Tensor f = Tensor::from_data(nullptr, Shape{0});
  EXPECT_EQ(f.numel(), 0);
  EXPECT_TRUE(f.to_vector().empty());
  EXPECT_EQ(Tensor::from_vector({1.5, -2}, Shape{2}, DType::F64).to_vector(), (std::vector<double>{1.5, -2}));
}

TEST(Tensor, CreationShapesAndViews) {
  Tensor z = Tensor::zeros(Shape{2, 3});
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.shape().str(), "[2, 3]");
  expect_values(z, {0, 0, 0, 0, 0, 0});
  Tensor f = Tensor::full(Shape{2, 2}, 2.5, DType::F64);
  expect_values(f, {2.5, 2.5, 2.5, 2.5});
  Tensor a = t32({1, 2, 3, 4, 5, 6}, Shape{3, 2});
  Tensor r = a.reshape(Shape{2, -1});
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  EXPECT_TRUE(r.shares_storage(a));
  Tensor rows = a.slice_rows(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 2}));
  expect_values(rows, {3, 4, 5, 6});
  Tensor c = a.clone();
  fill_(c, 7.0);
  expect_values(a, {1, 2, 3, 4, 5, 6});  // clone does not alias
  expect_values(a.to(DType::F64), {1, 2, 3, 4, 5, 6});
  EXPECT_THROW(a.reshape(Shape{4, 2}), Error);
  EXPECT_THROW(a.slice_rows(2, 4), Error);
  EXPECT_THROW(a.data<double>(), Error);
  EXPECT_THROW(Tensor::from_vector({1, 2}, Shape{3}), Error);
  if (!cuda_available()) {
    EXPECT_THROW(Tensor::empty(Shape{2, 3}, DType::F32, Device::CUDA).numel(), Error);
  }
}

TEST(Ops, UnaryValues) {
  Tensor x = t64({-2, -0.5, 0, 0.25, 4}, Shape{5});
  expect_values(neg(x), {2, 0.5, 0, -0.25, -4});
  expect_values(square(x), {4, 0.25, 0, 0.0625, 16});
  expect_values(abs(x), {2, 0.5, 0, 0.25, 4});
  expect_values(relu(x), {0, 0, 0, 0.25, 4});
  expect_values(step(x), {0, 0, 0, 1, 1});
  expect_values(sign(x), {-1, -1, 0, 1, 1});
  Tensor p = t32({0.25, 1, 4}, Shape{3});
  expect_values(sqrt(p), {0.5, 1, 2});
  expect_values(exp(t64({0, 1}, Shape{2})), {1, std::exp(1.0)}, 1e-12);
  expect_values(log(t64({1, std::exp(2.0)}, Shape{2})), {0, 2}, 1e-12);
  expect_values(affine(p, 2.0, -1.0), {-0.5, 1, 7});
}

TEST(Ops, BinarySameShapeAndComparisons) {
  Tensor a = t32({1, 2, 3, 4}, Shape{2, 2}), b = t32({4, 3, 2, 1}, Shape{2, 2});
  expect_values(a + b, {5, 5, 5, 5});
  expect_values(a - b, {-3, -1, 1, 3});
  expect_values(a * b, {4, 6, 6, 4});
  expect_values(a / b, {0.25, 2.0 / 3.0, 1.5, 4});
  expect_values(maximum(a, b), {4, 3, 3, 4});
  expect_values(minimum(a, b), {1, 2, 2, 1});
  expect_values(gt(a, b), {0, 0, 1, 1});
  expect_values(ge(a, t32({1, 3, 3, 5}, Shape{2, 2})), {1, 0, 1, 0});
  expect_values(lt(a, b), {1, 1, 0, 0});
  expect_values(le(a, t32({1, 1, 3, 3}, Shape{2, 2})), {1, 0, 1, 0});
  expect_values(eq(a, t32({1, 0, 3, 0}, Shape{2, 2})), {1, 0, 1, 0});
  expect_values(where(gt(a, b), a, b), {4, 3, 3, 4});
}

TEST(Ops, BroadcastRowColumnScalar) {
  Tensor m = t64({1, 2, 3, 4, 5, 6}, Shape{2, 3});
  expect_values(m + t64({10, 20, 30}, Shape{3}), {11, 22, 33, 14, 25, 36});        // row vector
  expect_values(m - t64({1, 2}, Shape{2, 1}), {0, 1, 2, 2, 3, 4});                 // column vector
  expect_values(m * Tensor::scalar(2.0, DType::F64), {2, 4, 6, 8, 10, 12});         // scalar
  expect_values(t64({12}, Shape{1}) / m, {12, 6, 4, 3, 2.4, 2});                     // scalar on the left
  expect_values(t64({1, 2}, Shape{2, 1}) + t64({10, 20, 30}, Shape{1, 3}), {11, 21, 31, 12, 22, 32});  // outer
  // 4-D broadcast: [2,1,2,1] + [3,1] -> [2,1,2,3]... check shape and a few values
  Tensor x4 = t64({1, 2, 3, 4}, Shape{2, 1, 2, 1});
  Tensor y = t64({0, 10, 20}, Shape{1, 3});
  Tensor s = x4 + y;
  EXPECT_EQ(s.shape(), (Shape{2, 1, 2, 3}));
  expect_values(s, {1, 11, 21, 2, 12, 22, 3, 13, 23, 4, 14, 24});
  // large enough to take the parallel path
  Tensor big = Tensor::full(Shape{300, 400}, 1.5);
  Tensor row = Tensor::from_vector(std::vector<double>(400, 2.0), Shape{400});
  Tensor prod = big * row;
  EXPECT_DOUBLE_EQ(sum(prod).item(), 300 * 400 * 3.0);
}

TEST(Ops, InPlaceAccumulateAndOutputChecks) {
  Tensor acc = t32({1, 1, 1, 1}, Shape{2, 2});
  add_(acc, t32({1, 2}, Shape{2}));
  expect_values(acc, {2, 3, 2, 3});
  Tensor wrong = Tensor::zeros(Shape{3});
  EXPECT_THROW(binary_(BinaryOp::add, wrong, acc, acc), Error);
  EXPECT_THROW(copy_(wrong, acc), Error);
}

TEST(Ops, Reductions) {
  Tensor m = t64({1, -2, 3, 4, 5, -6}, Shape{2, 3});
  EXPECT_DOUBLE_EQ(sum(m).item(), 5);
  EXPECT_DOUBLE_EQ(mean(m).item(), 5.0 / 6.0);
  EXPECT_DOUBLE_EQ(reduce(ReduceOp::max, m).item(), 5);
  EXPECT_DOUBLE_EQ(reduce(ReduceOp::min, m).item(), -6);
  EXPECT_DOUBLE_EQ(reduce(ReduceOp::sum_squares, m).item(), 91);
  EXPECT_DOUBLE_EQ(reduce(ReduceOp::count_nonzero, t64({0, 1, 0, 2}, Shape{4})).item(), 2);
  expect_values(sum(m, 0), {5, 3, -3});
  expect_values(sum(m, 1), {2, 3});
  expect_values(sum(m, -1, true), {2, 3});
  EXPECT_EQ(sum(m, 1, true).shape(), (Shape{2, 1}));
  expect_values(mean(m, 0), {2.5, 1.5, -1.5});
  expect_values(norm2(m, 1), {std::sqrt(14.0), std::sqrt(77.0)}, 1e-12);
  expect_values(norm2(m, 0), {std::sqrt(17.0), std::sqrt(29.0), std::sqrt(45.0)}, 1e-12);
  expect_values(reduce(ReduceOp::max, m, 0), {4, 5, 3});
  expect_values(reduce(ReduceOp::min, m, 1), {-2, -6});
  // middle axis of a 3-D tensor
  Tensor c = t64({1, 2, 3, 4, 5, 6, 7, 8}, Shape{2, 2, 2});
  expect_values(sum(c, 1), {4, 6, 12, 14});
  expect_values(sum_to(c, Shape{2}), {16, 20});
  expect_values(sum_to(c, Shape{2, 1, 2}), {4, 6, 12, 14});
  EXPECT_THROW(sum(m, 2), Error);
  EXPECT_THROW(mean(Tensor::zeros(Shape{0})), Error);
  // an empty axis sums to zeros of the other dims' shape (not an error)
  expect_values(sum(Tensor::zeros(Shape{3, 0, 2}), 1), {0, 0, 0, 0, 0, 0});
  expect_values(reduce(ReduceOp::count_nonzero, Tensor::zeros(Shape{0, 4}), 0), {0, 0, 0, 0});
  Tensor wrong = Tensor::empty(Shape{5});
  EXPECT_THROW(reduce_axis_(ReduceOp::sum, wrong, Tensor::zeros(Shape{3, 0, 2}), 1), Error);
  // float32 sums accumulate in double: 1e6 ones plus a small value stay exact
  Tensor ones = Tensor::full(Shape{1000000}, 1.0);
  EXPECT_DOUBLE_EQ(sum(ones).item(), 1e6);
}

TEST(Ops, MatmulAllTransposeFlags) {
  // A [2,3], B [3,2]; A B computed by hand.
  Tensor a = t64({1, 2, 3, 4, 5, 6}, Shape{2, 3});
  Tensor b = t64({7, 8, 9, 10, 11, 12}, Shape{3, 2});
  std::vector<double> ab = {58, 64, 139, 154};
  expect_values(matmul(a, b), ab);
  expect_values(matmul(transpose(a), b, true, false), ab);
  expect_values(matmul(a, transpose(b), false, true), ab);
  expect_values(matmul(transpose(a), transpose(b), true, true), ab);
  expect_values(matmul(a.to(DType::F32), b.to(DType::F32)), ab, 1e-4);
  // alpha/beta accumulate into an existing output
  Tensor out = t64({1, 1, 1, 1}, Shape{2, 2});
  matmul_(out, a, false, b, false, 2.0, 1.0);
  expect_values(out, {117, 129, 279, 309});
  EXPECT_THROW(matmul(a, a), Error);
  EXPECT_THROW(matmul(a, b.to(DType::F32)), Error);
  EXPECT_THROW(matmul(a, Tensor::zeros(Shape{3}, DType::F64)), Error);
  try {
    matmul(a, a);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
  }
}

// One row or one column (a matrix-vector product inside the kernel) in every transpose case, with
// alpha and beta, against a float64 loop.
TEST(Ops, MatmulOfOneRowOrColumnEveryCase) {
  Rng rng(31);
  for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{1, 37, 53}, {41, 29, 1}, {1, 1, 9}, {1, 7, 1}}) {
    for (int flags = 0; flags < 4; ++flags) {
      const bool ta = flags & 1, tb = flags & 2;
      for (DType d : {DType::F32, DType::F64}) {
        const Tensor a = uniform_tensor(ta ? Shape{k, m} : Shape{m, k}, -1, 1, rng, d);
        const Tensor b = uniform_tensor(tb ? Shape{n, k} : Shape{k, n}, -1, 1, rng, d);
        Tensor out = uniform_tensor(Shape{m, n}, -1, 1, rng, d);
        const std::vector<double> av = a.to_vector(), bv = b.to_vector(), before = out.to_vector();
        matmul_(out, a, ta, b, tb, 1.5, 0.5);
        const std::vector<double> got = out.to_vector();
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double want = 0;
            for (int64_t p = 0; p < k; ++p)
              want += (ta ? av[p * m + i] : av[i * k + p]) * (tb ? bv[j * k + p] : bv[p * n + j]);
            want = 1.5 * want + 0.5 * before[i * n + j];
            ASSERT_NEAR(got[i * n + j], want, d == DType::F32 ? 2e-5 : 1e-12)
                << m << "x" << k << "x" << n << " flags " << flags;
          }
      }
    }
  }
}

TEST(Ops, TransposeLarge) {
  Rng rng(3);
  Tensor x = uniform_tensor(Shape{70, 45}, -1, 1, rng, DType::F64);
  Tensor t = transpose(x);
  std::vector<double> xv = x.to_vector(), tv = t.to_vector();
  for (int r = 0; r < 70; ++r)
    for (int c = 0; c < 45; ++c) ASSERT_EQ(tv[c * 70 + r], xv[r * 45 + c]);
}

TEST(Ops, ErrorsNameOpAndShapes) {
  Tensor a = Tensor::zeros(Shape{2, 3}), b = Tensor::zeros(Shape{4});
  try {
    add(a, b);
    FAIL() << "add of [2,3] and [4] should throw";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("add"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4]"), std::string::npos) << msg;
  }
  EXPECT_THROW(mul(a, Tensor::zeros(Shape{2, 3}, DType::F64)), Error);
  EXPECT_THROW(add(a, Tensor()), Error);
}

TEST(Rng, DeterministicAndWellSpread) {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  EXPECT_NE(Rng(42).next_u64(), c.next_u64());
  Rng r(7);
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    double z = r.normal();
    s += z;
    s2 += z * z;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.02);
  Tensor u = uniform_tensor(Shape{100000}, -2, 3, r);
  EXPECT_GE(reduce(ReduceOp::min, u).item(), -2.0);
  EXPECT_LT(reduce(ReduceOp::max, u).item(), 3.0);
  EXPECT_NEAR(mean(u).item(), 0.5, 0.02);
  // state round trip
  Rng q(9);
  q.next_u64();
  auto st = q.state();
  uint64_t next = q.next_u64();
  Rng q2(0);
  q2.set_state(st);
  EXPECT_EQ(q2.next_u64(), next);
}

