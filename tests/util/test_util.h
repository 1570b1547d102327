// Helpers shared by the tests: one-line error checks, temporary directories, whole-file reads, a small synthetic training
// configuration, running a built binary and capturing its exit code and stderr, and writing
// activation files with any dtype.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "sae/train/train_config.h"
#include "io/json.h"

namespace sae::testing {

// Runs f and checks it throws ErrorType (or a type derived from it), as one line holding every one
// of parts.
template <typename ErrorType, typename F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected an exception mentioning '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const ErrorType& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
    for (const std::string& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// A committed fixture: tests/ref/<path> of the source tree.
inline std::string ref_path(const std::string& path) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/" + path; }

// The whole file as bytes; throws when it cannot be opened.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes `bytes` as the whole file (a fixture made in a test).
inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// A small CPU training run on synthetic data (D 32, 64 concepts, 64-token batches, dataset
// normalisation, quiet): the tests that train set features, lr, l1, steps and checkpoints on top.
inline TrainConfig small_synthetic_config(const std::string& out) {
  TrainConfig c;
  c.data = "synthetic";
  c.synthetic.d = 32;
  c.synthetic.concepts = 64;
  c.synthetic.story_concepts = 8;
  c.synthetic.story_active = 2;
  c.synthetic.stories = 2000;
  c.synthetic.active = 4;
  c.synthetic.seed = 5;
  c.batch_tokens = 64;
  c.normalize = Normalization::Dataset;
  c.log_every = 10;
  c.progress = ProgressMode::None;
  c.device = DeviceChoice::Cpu;
  c.seed = 3;
  c.out = out;
  return c;
}

// small_synthetic_config with a 48-feature SAE, 30 steps logged every step and checkpointed every 10:
// the runs of the resume and train-together tests.
inline TrainConfig tiny_training_config(const std::string& out) {
  TrainConfig c = small_synthetic_config(out);
  c.features = 48;
  c.lr = 3e-3;
  c.l1 = 0.5;
  c.steps = 30;
  c.log_every = 1;
  c.checkpoint_every = 10;
  return c;
}

// A few seconds of training on tiny synthetic stories (d 16, 24 concepts, 200 stories of ~12 tokens;
// 32 features, lr 1e-3, lambda 0.2, 40 steps of one story, every step logged, a checkpoint every 1000).
inline TrainConfig tiny_story_run_config(const std::string& out) {
  TrainConfig c;
  c.synthetic.d = 16;
  c.synthetic.concepts = 24;
  c.synthetic.story_concepts = 4;
  c.synthetic.story_active = 1;
  c.synthetic.stories = 200;
  c.synthetic.mean_length = 12;
  c.synthetic.active = 2;
  c.features = 32;
  c.lr = 1e-3;
  c.l1 = 0.2;
  c.steps = 40;
  c.log_every = 1;
  c.checkpoint_every = 1000;
  c.progress = ProgressMode::None;
  c.device = DeviceChoice::Cpu;
  c.out = out;
  return c;
}

// The planted dictionary: 48 unit directions in width 32, 3 active per token, every concept equally
// frequent (zipf 0), token batches of 256, dataset normalisation; 96 features, 1200 steps at lr 3e-3.
// A standard SAE should find >= 90% of the concepts at cosine >= 0.9 (tests/sae/train/test_trainer.cpp).
inline TrainConfig planted_dictionary_config(const std::string& out) {
  TrainConfig c;
  c.synthetic.d = 32;
  c.synthetic.concepts = 48;
  c.synthetic.story_concepts = 0;
  c.synthetic.story_active = 0;
  c.synthetic.stories = 2000;
  c.synthetic.mean_length = 32;
  c.synthetic.active = 3;
  c.synthetic.zipf = 0.0;
  c.synthetic.mean_norm = 0.0;
  c.synthetic.noise = 0.01;
  c.synthetic.seed = 1;
  c.features = 96;
  c.batch_tokens = 256;
  c.normalize = Normalization::Dataset;
  c.lr = 3e-3;
  c.steps = 1200;
  c.log_every = 100;
  c.checkpoint_every = 100000;
  c.progress = ProgressMode::None;
  c.device = DeviceChoice::Cpu;
  c.out = out;
  return c;
}

// A fresh directory under the system temp dir, removed when the object dies.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    path = std::filesystem::temp_directory_path() / ("sae_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
                                                     std::to_string(std::rand()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string str(const std::string& child = "") const { return child.empty() ? path.string() : (path / child).string(); }
};

struct CommandResult {
  int exit_code = -1;
  std::string err, out;
};

// The lines of a program's output (its newlines): a refusal is one.
inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// Runs build/bin/<program> with `args` (a shell-quoted string), capturing stdout and stderr.
inline CommandResult run_binary(const std::string& program, const std::string& args, const TempDir& scratch) {
  const std::string out_file = scratch.str("stdout.txt"), err_file = scratch.str("stderr.txt");
  const std::string cmd = std::string(SAE_BIN_DIR) + "/" + program + " " + args + " > " + out_file + " 2> " + err_file;
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  r.out = slurp(out_file);
  r.err = slurp(err_file);
  return r;
}

// One array of a hand-built safetensors file: any dtype name, raw little-endian bytes.
struct RawArray {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <typename T>
std::string raw_bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

inline void write_raw_safetensors(const std::string& path, const std::vector<RawArray>& arrays,
                                  const std::string& metadata_json = "") {
  Json header = Json::object();
  if (!metadata_json.empty()) header["__metadata__"] = Json::parse(metadata_json);
  size_t offset = 0;
  std::string data;
  for (const RawArray& a : arrays) {
    Json entry = Json::object();
    entry["dtype"] = a.dtype;
    Json shape = Json::array();
    for (int64_t s : a.shape) shape.push_back(s);
    entry["shape"] = shape;
    Json offsets = Json::array();
    offsets.push_back(static_cast<int64_t>(offset));
    offsets.push_back(static_cast<int64_t>(offset + a.bytes.size()));
    entry["data_offsets"] = offsets;
    header[a.name] = entry;
    offset += a.bytes.size();
    data += a.bytes;
  }
  std::string text = header.dump();
  while (text.size() % 8) text += ' ';
  const uint64_t n = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << text << data;
}

// A story-structured float32 activation file [sum(lengths), d] with values from `value(t, j)`.
template <typename Value>
void write_activation_file(const std::string& path, int64_t d, const std::vector<int64_t>& lengths, Value value) {
  int64_t tokens = 0;
  for (int64_t l : lengths) tokens += l;
  std::vector<float> x(tokens * d);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < d; ++j) x[t * d + j] = static_cast<float>(value(t, j));
  write_raw_safetensors(path, {{"activations", "F32", {tokens, d}, raw_bytes(x)},
                               {"story_lengths", "I64", {static_cast<int64_t>(lengths.size())}, raw_bytes(lengths)}});
}

}  // namespace sae::testing
