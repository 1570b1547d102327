// PyTorch reference test of autograd, nn::Linear, the losses and nn::Adam, on a 2-layer MLP
// (Linear(D_in -> H) -> ReLU -> Linear(H -> D_out), float32, N samples): forward values, both
// losses, every gradient (parameters and input), and the per-step losses and final parameters of
// Adam runs with and without weight decay. The numbers come from tests/ref/mlp_adam.safetensors,
// written by scripts/gen_torch_mlp_fixture.py (see there to regenerate). Also tests the fixture
// reader itself (tests/util/fixture.h): exact decoding, and clean errors for damaged files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nn/adam.h"
#include "nn/module.h"
#include "tensor/ops.h"
#include "tests/util/fixture.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::test::Closeness;
using sae::test::Fixture;

using sae::testing::read_file;

namespace {

// float32 against float32 PyTorch: the test tolerance is |ours - torch| <= kAtol + kRtol |torch|.
constexpr double kAtol = 1e-5, kRtol = 1e-4;

const std::string kFixturePath = SAE_SOURCE_DIR "/tests/ref/mlp_adam.safetensors";
const std::vector<std::string> kParamNames = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};

const Fixture& fixture() {
  static const Fixture f = test::load_fixture(kFixturePath);
  return f;
}

// Checks every element and prints the observed errors (they are part of what this test reports).
void expect_close(const std::string& what, const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.shape(), want.shape()) << what << ": " << got.describe() << " vs " << want.describe();
  Closeness c = test::closeness(got, want, kAtol, kRtol);
  EXPECT_EQ(c.violations, 0) << what << ": " << c.str();
  std::printf("  %-26s max abs err %-10.3g max rel err %.3g\n", what.c_str(), c.max_abs, c.max_rel);
}

// The fixture's MLP as our modules, with PyTorch's initial parameters copied in.
struct Mlp : nn::Module {
  Rng rng{7};  // the random init is overwritten below
  nn::Linear fc1, fc2;
  explicit Mlp(const Fixture& f)
      : fc1(f.tensor("fc1.weight").size(1), f.tensor("fc1.weight").size(0), rng),
        fc2(f.tensor("fc2.weight").size(1), f.tensor("fc2.weight").size(0), rng) {
    register_module("fc1", &fc1);
    register_module("fc2", &fc2);
    for (auto& [name, param] : named_parameters()) {
      Tensor init = f.tensor(name);
      if (init.shape() != param.shape())
        throw Error(cat("fixture ", name, " is ", init.describe(), ", the module has ", param.data().describe()));
      copy_(param.data(), init);
    }
  }
  struct Out {
    Variable hidden_pre, output;
  };
  Out forward(const Variable& x) const {
    Variable hidden_pre = fc1.forward(x);
    return {hidden_pre, fc2.forward(nn::relu(hidden_pre))};
  }
};

nn::AdamOptions adam_options(const Fixture& f, const std::string& prefix) {
  nn::AdamOptions o;
  o.lr = f.scalar(prefix + ".lr");
  o.beta1 = f.scalar(prefix + ".beta1");
  o.beta2 = f.scalar(prefix + ".beta2");
  o.eps = f.scalar(prefix + ".eps");
  o.weight_decay = f.scalar(prefix + ".weight_decay");
  return o;
}

// Runs one Adam case of the fixture (zero_grad, forward, backward, step on the same batch) and
// compares the per-step losses and the final parameters.
void check_adam_case(const std::string& prefix) {
  const Fixture& f = fixture();
  Mlp mlp(f);
  Variable x(f.tensor("input")), target(f.tensor("target"));
  nn::Adam adam(mlp.parameters(), adam_options(f, prefix));
  const int64_t steps = f.integer(prefix + ".steps");
  ASSERT_GE(steps, 1);
  std::vector<double> losses;
  for (int64_t t = 0; t < steps; ++t) {
    adam.zero_grad();
    Variable loss = nn::sum_squared_error(mlp.forward(x).output, target);
    loss.backward();
    losses.push_back(loss.data().item());
    adam.step();
  }
  EXPECT_EQ(adam.steps_taken(), steps);
  expect_close(prefix + ".losses", Tensor::from_vector(losses, Shape{steps}), f.tensor(prefix + ".losses"));
  for (auto& [name, param] : mlp.named_parameters())
    expect_close(prefix + ".final." + name, param.data(), f.tensor(prefix + ".final." + name));
  // The run must have moved every parameter well beyond the tolerance, or the check above is vacuous.
  for (const std::string& name : kParamNames) {
    Closeness moved = test::closeness(f.tensor(prefix + ".final." + name), f.tensor(name), kAtol, kRtol);
    EXPECT_GT(moved.max_abs, 100 * kAtol) << prefix << ": " << name << " barely moved";
  }
}

}  // namespace

TEST(TorchReference, FixtureHeader) {
  const Fixture& f = fixture();
  const std::string version = f.text("meta.torch_version");
  EXPECT_FALSE(version.empty());
  std::printf("  fixture %s: %zu arrays, torch %s, seed %lld, min |hidden_pre| %.3g\n", kFixturePath.c_str(),
              f.names().size(), version.c_str(), static_cast<long long>(f.integer("meta.seed")),
              f.scalar("meta.min_abs_hidden_pre"));
  for (const char* name : {"input", "target", "hidden_pre", "output", "loss_sse", "loss_mse", "grad.input"})
    EXPECT_TRUE(f.has(name)) << name;
  for (const std::string& name : kParamNames) {
    EXPECT_TRUE(f.has(name)) << name;
    EXPECT_TRUE(f.has("grad." + name)) << name;
  }
  // Gradients at a ReLU kink are a convention, not a fact: the generator keeps away from them.
  EXPECT_GE(f.scalar("meta.min_abs_hidden_pre"), 1e-3);
  Closeness zero = test::closeness(f.tensor("hidden_pre"), Tensor::zeros(f.tensor("hidden_pre").shape()), 0, 0);
  EXPECT_GT(zero.max_abs, 0.1);  // not a constant fixture
}

TEST(TorchReference, ForwardLossesAndGradients) {
  const Fixture& f = fixture();
  Mlp mlp(f);
  Variable x(f.tensor("input"), /*requires_grad=*/true), target(f.tensor("target"));
  Mlp::Out out = mlp.forward(x);
  Variable loss = nn::sum_squared_error(out.output, target);
  Variable mse = nn::mean_squared_error(out.output, target);
  loss.backward();

  expect_close("hidden_pre", out.hidden_pre.data(), f.tensor("hidden_pre"));
  expect_close("output", out.output.data(), f.tensor("output"));
  expect_close("loss_sse", loss.data(), f.tensor("loss_sse"));
  expect_close("loss_mse", mse.data(), f.tensor("loss_mse"));
  for (auto& [name, param] : mlp.named_parameters()) {
    ASSERT_TRUE(param.grad().defined()) << name;
    expect_close("grad." + name, param.grad(), f.tensor("grad." + name));
  }
  ASSERT_TRUE(x.grad().defined());
  expect_close("grad.input", x.grad(), f.tensor("grad.input"));
}

TEST(TorchReference, MeanSquaredErrorGradientIsScaledSum) {
  // MSE = SSE / (N D_out), so its gradients are the stored SSE gradients scaled by 1 / (N D_out).
  const Fixture& f = fixture();
  Mlp mlp(f);
  Variable x(f.tensor("input"), true), target(f.tensor("target"));
  nn::mean_squared_error(mlp.forward(x).output, target).backward();
  const double scale = 1.0 / static_cast<double>(f.tensor("target").numel());
  for (auto& [name, param] : mlp.named_parameters())
    expect_close("mse grad." + name, param.grad(), f.tensor("grad." + name) * scale);
  expect_close("mse grad.input", x.grad(), f.tensor("grad.input") * scale);
}

TEST(TorchReference, AdamTenSteps) { check_adam_case("adam"); }

TEST(TorchReference, AdamWeightDecay) { check_adam_case("adam_wd"); }

TEST(FixtureReader, DecodesEveryDtypeExactly) {
  sae::testing::TempDir dir("fixture_reader");
  const std::string path = dir.str("f.safetensors");
  const std::vector<float> w = {1.5f, -2.25f, 3e-8f, 0.f, 7.f, -1e30f};
  using sae::testing::raw_bytes;
  sae::testing::write_raw_safetensors(
      path,
      {{"w", "F32", {2, 3}, raw_bytes(w)},
       {"lr", "F64", {}, raw_bytes(std::vector<double>{0.123456789012345})},
       {"ids", "I64", {3}, raw_bytes(std::vector<int64_t>{-1, int64_t{1} << 40, 5})},
       {"empty", "F64", {0, 4}, ""}},
      R"({"note": "text"})");
  Fixture f = test::load_fixture(path);
  EXPECT_TRUE(f.has("lr"));
  EXPECT_FALSE(f.has("nope"));
  Tensor wt = f.tensor("w");
  EXPECT_EQ(wt.dtype(), DType::F32);
  EXPECT_EQ(wt.shape(), (Shape{2, 3}));
  EXPECT_EQ(wt.to_vector(), (std::vector<double>{1.5, -2.25, double(3e-8f), 0, 7, double(-1e30f)}));
  EXPECT_EQ(f.scalar("lr"), 0.123456789012345);  // float64 kept exactly
  EXPECT_EQ(f.tensor("lr").shape(), Shape{1});
  EXPECT_EQ(f.tensor("lr").dtype(), DType::F64);
  EXPECT_EQ(f.tensor("w", DType::F64).dtype(), DType::F64);
  EXPECT_EQ(f.ints("ids"), (std::vector<int64_t>{-1, int64_t{1} << 40, 5}));
  EXPECT_EQ(f.tensor("empty").numel(), 0);
  EXPECT_EQ(f.text("note"), "text");
  EXPECT_THROW(f.tensor("nope"), DataError);
  EXPECT_THROW(f.tensor("ids"), DataError);   // int64 is not a float tensor
  EXPECT_THROW(f.scalar("w"), DataError);     // six values
  EXPECT_THROW(f.ints("w"), DataError);       // not an integer array
  EXPECT_THROW(f.integer("ids"), DataError);  // three values
  EXPECT_THROW(f.text("nope"), DataError);
}

TEST(FixtureReader, DamagedFileNamesThePath) {
  // The safetensors reader's own checks (tests/io) cover every kind of damage; here: the fixture
  // layer passes them on with the path.
  const std::string good = read_file(kFixturePath);
  sae::testing::TempDir dir("fixture_damaged");
  const std::string path = dir.str("truncated.safetensors");
  {
    std::ofstream out(path, std::ios::binary);
    out << good.substr(0, good.size() / 2);
  }
  try {
    test::load_fixture(path);
    ADD_FAILURE() << "truncated file loaded";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
  EXPECT_THROW(test::load_fixture(path), DataError);  // now missing: cannot open
}
