// Shared command-line options, profiles and the exit-code wrapper (see cli.h).
#include "sae/cli/cli.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "sae/train/trainer.h"

namespace sae {

void add_training_options(cxxopts::Options& options, const Profile& shown_defaults,
                          const std::vector<std::string>& leave_out) {
  TrainConfig d;  // defaults
  const SyntheticOptions& s = d.synthetic;
  auto add = [&](const char* group, const std::string& name, const std::string& help,
                 std::shared_ptr<cxxopts::Value> value, const std::string& fallback) {
    if (std::find(leave_out.begin(), leave_out.end(), name) != leave_out.end()) return;
    auto it = shown_defaults.find(name);
    options.add_options(group)(name, help, value->default_value(it != shown_defaults.end() ? it->second : fallback));
  };
  const char* training = "Training";
  const char* synthetic = "Synthetic data (--data synthetic)";
  add(training, "data", "activations: 'synthetic' or a .safetensors/.npy file", cxxopts::value<std::string>(), d.data);
  add(training, "features", "number of SAE features F (d_sae)", cxxopts::value<int64_t>(), std::to_string(d.features));
  add(training, "l1", "L1 coefficient lambda", cxxopts::value<double>(), "0");
  add(training, "lr", "Adam learning rate", cxxopts::value<double>(), "1e-5");
  add(training, "beta1", "Adam beta1", cxxopts::value<double>(), "0.9");
  add(training, "beta2", "Adam beta2", cxxopts::value<double>(), "0.999");
  add(training, "eps", "Adam epsilon", cxxopts::value<double>(), "1e-8");
  add(training, "steps", "optimizer steps in total", cxxopts::value<int64_t>(), std::to_string(d.steps));
  add(training, "batch", "'story' (one story per step) or N (shuffled N-token batches)", cxxopts::value<std::string>(), "story");
  add(training, "normalize", "story | dataset | none", cxxopts::value<std::string>(), d.normalize);
  add(training, "init", "start from this SAELens-format checkpoint directory", cxxopts::value<std::string>(), "");
  add(training, "resume", "continue the run in this directory to --steps", cxxopts::value<std::string>(), "");
  add(training, "out", "output directory", cxxopts::value<std::string>(), d.out);
  add(training, "seed", "random seed (initialisation, token shuffling)", cxxopts::value<uint64_t>(), "0");
  add(training, "device", "cpu | cuda | auto", cxxopts::value<std::string>(), d.device);
  add(training, "tf32", "on CUDA, TF32 tensor-core GEMMs (faster; float32 GEMMs by default)", cxxopts::value<bool>(), "false");
  add(training, "prefetch", "prepare the next batch on a worker thread: auto (on for CUDA) | on | off",
      cxxopts::value<std::string>(), d.prefetch);
  add(training, "sparse",
      "auto | on | off: sparse decoder and gradients, Adam fused in (auto: on steps whose feature density is low)",
      cxxopts::value<std::string>(), d.sparse);
  add(training, "checkpoint-every", "steps between checkpoints", cxxopts::value<int64_t>(), std::to_string(d.checkpoint_every));
  add(training, "log-every", "steps between metrics rows", cxxopts::value<int64_t>(), std::to_string(d.log_every));
  add(training, "lr-warmup-steps", "linear learning-rate warm-up", cxxopts::value<int64_t>(), "0");
  add(training, "lr-decay-steps", "linear learning-rate decay to 0 over the last N steps", cxxopts::value<int64_t>(), "0");
  add(training, "l1-warmup-steps", "linear lambda warm-up", cxxopts::value<int64_t>(), "0");
  add(training, "dead-window", "tokens without firing before a feature counts as dead", cxxopts::value<int64_t>(), std::to_string(d.dead_window));
  add(training, "progress", "auto | bar | lines | none", cxxopts::value<std::string>(), d.progress);
  add(synthetic, "synthetic-d", "activation width D", cxxopts::value<int64_t>(), std::to_string(s.d));
  add(synthetic, "synthetic-concepts", "number of true concepts C", cxxopts::value<int64_t>(), std::to_string(s.concepts));
  add(synthetic, "synthetic-story-concepts", "how many of them are story-level", cxxopts::value<int64_t>(), std::to_string(s.story_concepts));
  add(synthetic, "synthetic-stories", "number of stories", cxxopts::value<int64_t>(), std::to_string(s.stories));
  add(synthetic, "synthetic-mean-length", "mean story length in tokens", cxxopts::value<double>(), "218");
  add(synthetic, "synthetic-active", "mean token-level concepts per token", cxxopts::value<double>(), "20");
  add(synthetic, "synthetic-story-active", "story-level concepts per story", cxxopts::value<int64_t>(), std::to_string(s.story_active));
  add(synthetic, "synthetic-story-presence", "chance a story concept is on for a token", cxxopts::value<double>(), "0.8");
  add(synthetic, "synthetic-zipf", "power-law exponent of concept frequencies", cxxopts::value<double>(), "1");
  add(synthetic, "synthetic-magnitude", "scale of concept magnitudes", cxxopts::value<double>(), "1");
  add(synthetic, "synthetic-mean-norm", "norm of the shared mean vector", cxxopts::value<double>(), "2");
  add(synthetic, "synthetic-noise", "per-dimension noise standard deviation", cxxopts::value<double>(), "0.02");
  add(synthetic, "synthetic-seed", "seed of the generator", cxxopts::value<uint64_t>(), "0");
}

std::string option_value(const cxxopts::ParseResult& parsed, const Profile& profile, const std::string& name) {
  if (parsed.count(name) == 0) {
    auto it = profile.find(name);
    if (it != profile.end()) return it->second;
  }
  return parsed[name].as<std::string>();
}

namespace {
template <typename T>
T typed_value(const cxxopts::ParseResult& parsed, const Profile& profile, const std::string& name) {
  if (parsed.count(name) == 0) {
    auto it = profile.find(name);
    if (it != profile.end()) {
      // Profile values are text; parse them the way cxxopts would.
      T value{};
      cxxopts::values::parse_value(it->second, value);
      return value;
    }
  }
  return parsed[name].as<T>();
}
}  // namespace

TrainConfig training_config(const cxxopts::ParseResult& p, const Profile& profile) {
  TrainConfig c;
  c.data = typed_value<std::string>(p, profile, "data");
  c.features = typed_value<int64_t>(p, profile, "features");
  c.l1 = typed_value<double>(p, profile, "l1");
  c.lr = typed_value<double>(p, profile, "lr");
  c.beta1 = typed_value<double>(p, profile, "beta1");
  c.beta2 = typed_value<double>(p, profile, "beta2");
  c.eps = typed_value<double>(p, profile, "eps");
  c.steps = typed_value<int64_t>(p, profile, "steps");
  c.batch_tokens = parse_batch(typed_value<std::string>(p, profile, "batch"));
  c.normalize = typed_value<std::string>(p, profile, "normalize");
  c.init = typed_value<std::string>(p, profile, "init");
  c.resume = typed_value<std::string>(p, profile, "resume");
  c.out = typed_value<std::string>(p, profile, "out");
  c.seed = typed_value<uint64_t>(p, profile, "seed");
  c.device = typed_value<std::string>(p, profile, "device");
  c.sparse = typed_value<std::string>(p, profile, "sparse");
  c.prefetch = typed_value<std::string>(p, profile, "prefetch");
  c.tf32 = typed_value<bool>(p, profile, "tf32");
  c.checkpoint_every = typed_value<int64_t>(p, profile, "checkpoint-every");
  c.log_every = typed_value<int64_t>(p, profile, "log-every");
  c.lr_warmup_steps = typed_value<int64_t>(p, profile, "lr-warmup-steps");
  c.lr_decay_steps = typed_value<int64_t>(p, profile, "lr-decay-steps");
  c.l1_warmup_steps = typed_value<int64_t>(p, profile, "l1-warmup-steps");
  c.dead_window = typed_value<int64_t>(p, profile, "dead-window");
  c.progress = typed_value<std::string>(p, profile, "progress");
  SyntheticOptions& s = c.synthetic;
  s.d = typed_value<int64_t>(p, profile, "synthetic-d");
  s.concepts = typed_value<int64_t>(p, profile, "synthetic-concepts");
  s.story_concepts = typed_value<int64_t>(p, profile, "synthetic-story-concepts");
  s.stories = typed_value<int64_t>(p, profile, "synthetic-stories");
  s.mean_length = typed_value<double>(p, profile, "synthetic-mean-length");
  s.active = typed_value<double>(p, profile, "synthetic-active");
  s.story_active = typed_value<int64_t>(p, profile, "synthetic-story-active");
  s.story_presence = typed_value<double>(p, profile, "synthetic-story-presence");
  s.zipf = typed_value<double>(p, profile, "synthetic-zipf");
  s.magnitude = typed_value<double>(p, profile, "synthetic-magnitude");
  s.mean_norm = typed_value<double>(p, profile, "synthetic-mean-norm");
  s.noise = typed_value<double>(p, profile, "synthetic-noise");
  s.seed = typed_value<uint64_t>(p, profile, "synthetic-seed");
  c.validate();
  return c;
}

std::string option_default(const cxxopts::Options& options, const std::string& name) {
  for (const std::string& group : options.groups())
    for (const cxxopts::HelpOptionDetails& o : options.group_help(group).options)
      if (!o.l.empty() && o.l[0] == name) return o.has_default ? o.default_value : "";
  throw Error(cat("option_default: no option --", name));
}

std::string profile_text(const Profile& profile) {
  std::string text;
  for (const auto& [name, value] : profile) text += (text.empty() ? "--" : ", --") + name + " " + value;
  return text;
}

Profile study_profile(const cxxopts::Options& options, const cxxopts::ParseResult& parsed, const Profile& quick) {
  const std::string name = parsed["profile"].as<std::string>();
  if (name == "full") return {};
  if (name != "quick") throw UsageError("--profile: expected full or quick, got '" + name + "'");
  if (option_value(parsed, quick, "data") != "synthetic")
    throw UsageError("--profile quick is sized for the synthetic data; use --profile full with --data FILE");
  std::printf("profile quick changes (the command line overrides these):\n");
  for (const auto& [option, value] : quick)
    std::printf("  --%s %s (full: %s)%s\n", option.c_str(), value.c_str(), option_default(options, option).c_str(),
                parsed.count(option) ? " [overridden on the command line]" : "");
  return quick;
}

bool parse_command_line(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& out) {
  options.add_options()("h,help", "show this help");
  try {
    out = options.parse(argc, argv);
  } catch (const cxxopts::exceptions::incorrect_argument_type& e) {
    // cxxopts names only the bad value; find the option it was given to.
    std::string message = e.what();
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      const size_t eq = arg.find('=');
      if (arg.rfind("--", 0) == 0 && eq != std::string::npos && message.find("'" + arg.substr(eq + 1) + "'") != std::string::npos)
        message = arg.substr(0, eq) + ": " + message;
      else if (i + 1 < argc && arg.rfind("--", 0) == 0 && message.find(std::string("‘") + argv[i + 1] + "’") != std::string::npos)
        message = arg + ": " + message;
    }
    throw UsageError(message);
  } catch (const cxxopts::exceptions::exception& e) {
    throw UsageError(e.what());
  }
  if (!out.unmatched().empty()) throw UsageError(cat("unexpected argument '", out.unmatched()[0], "'"));
  if (out.count("help")) {
    std::cout << options.help() << std::endl;
    return false;
  }
  return true;
}

int run_main(const char* program, const std::function<int()>& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", program, e.what());
    return 2;
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", program, e.what());
    return 2;
  } catch (const TrainingDiverged& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 1;
  }
}

Profile quick_study_data() {
  return {{"synthetic-d", "64"},
          {"synthetic-concepts", "341"},
          {"synthetic-story-concepts", "21"},
          {"synthetic-active", "1.67"},
          {"synthetic-story-active", "1"}};
}

std::vector<std::string> split_option_list(const std::string& option, const std::string& text) {
  std::vector<std::string> items;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    items.push_back(text.substr(begin, end - begin));
    if (items.back().empty())
      throw UsageError(cat("--", option, ": expected a comma-separated list, got '", text, "'"));
    begin = end + 1;
  }
  return items;
}

}  // namespace sae
