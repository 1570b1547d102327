// Evaluation during training (see checkpoint_eval.h).
#include "sae/eval/checkpoint_eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "io/atomic_file.h"
#include "io/mapped_file.h"
#include "lm/model_loader.h"
#include "sae/eval/evaluate.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/report/run_log.h"
#include "sae/report/table.h"
#include "sae/train/checkpoint.h"
#include "tensor/precision.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

constexpr const char* kEvalFile = "eval.json";

// The model the evaluations run, loaded once.
struct EvalModel {
  std::string dir;
  Device device = Device::CPU;
  std::unique_ptr<DecoderModel> model;
  std::unique_ptr<BpeTokenizer> tokenizer;
};

// eval.json's number at `path` (keys), NaN for a null.
double number_at(const Json& j, const std::vector<const char*>& path) {
  const Json* at = &j;
  for (const char* key : path) {
    if (!at->is_object() || !at->has(key)) return std::nan("");
    at = &at->at(key);
  }
  return at->is_number() ? at->as_number() : std::nan("");
}

// The progress line of one evaluation (eval.json's numbers).
std::string evaluation_line(const Json& eval, int64_t step) {
  auto shown = [](double v) { return std::isfinite(v) ? format_number(v, 4) : std::string("n/a"); };
  return cat("evaluated step ", step, " on ", eval.at("stories").as_int(), " stories: CE score ",
             shown(number_at(eval, {"ce_loss_score"})), " (CE clean ", shown(number_at(eval, {"ce_loss", "clean"})),
             ", SAE ", shown(number_at(eval, {"ce_loss", "sae"})), ", zero ",
             shown(number_at(eval, {"ce_loss", "zero_ablation"})), "), KL score ", shown(number_at(eval, {"kl_div_score"})),
             ", FVU ", shown(number_at(eval, {"fvu"})), ", L0 ", shown(number_at(eval, {"l0"})));
}

}  // namespace

CheckpointEvaluator checkpoint_evaluator() {
  auto loaded = std::make_shared<EvalModel>();
  return [loaded](const TrainConfig& config, const std::string& folder, const std::string& dir, int64_t step,
                  int64_t tokens) {
    const Device device = resolve_device(config.device);
    if (!loaded->model || loaded->dir != config.model || loaded->device != device) {
      loaded->model = std::make_unique<DecoderModel>(load_decoder_model(config.model, device));
      loaded->tokenizer = std::make_unique<BpeTokenizer>(BpeTokenizer::from_model_dir(config.model));
      loaded->dir = config.model;
      loaded->device = device;
    }
    const ScopedMatmulPrecision fp32(Precision::FP32);  // sae_eval's numbers, whatever the run trains at
    DecoderModel& model = *loaded->model;
    SaeAtLayer sae = load_sae_at_layer(folder, model.config(), HookChoice{}, device);
    sae.dir = dir;  // the name it is put in place under
    EvalOptions options;
    options.text = config.eval_text;
    options.text_field = config.eval_text_field;
    options.max_stories = config.eval_stories;
    options.bos = bos_for_sae(BosMode::Auto, sae, *loaded->tokenizer);
    options.context_size = std::min(sae.context_size, model.config().max_positions);  // as sae_eval's default
    if (options.context_size == 0) options.context_size = model.config().max_positions;
    const EvalResult result = evaluate_sae(model, *loaded->tokenizer, sae, options);
    Json json = eval_json(result, sae, config.model, options);
    json["device"] = device_name(device);
    Json training = Json::object();
    training["step"] = step;
    training["tokens"] = tokens;
    json["training"] = training;
    write_file_atomic((fs::path(folder) / kEvalFile).string(), json.dump(2) + "\n");
    return evaluation_line(json, step);
  };
}

std::string write_evals_csv(const std::string& run_dir) {
  std::map<int64_t, Json> evals;  // by step: sae/ and a checkpoint of the same step hold the same SAE
  for (const auto& [step, dir] : run_checkpoints(run_dir)) {
    const fs::path file = fs::path(dir) / kEvalFile;
    if (evals.count(step) || !fs::exists(file)) continue;
    evals[step] = read_json_file(file.string());
  }
  const std::string path = (fs::path(run_dir) / "evals.csv").string();
  if (evals.empty()) {
    std::error_code ec;
    fs::remove(path, ec);
    return "";
  }
  using Column = std::pair<const char*, std::vector<const char*>>;
  const std::vector<Column> columns = {
      {"ce_clean", {"ce_loss", "clean"}},
      {"ce_sae", {"ce_loss", "sae"}},
      {"ce_zero_ablation", {"ce_loss", "zero_ablation"}},
      {"ce_mean_ablation", {"ce_loss", "mean_ablation"}},
      {"kl_sae", {"kl_div", "sae"}},
      {"kl_zero_ablation", {"kl_div", "zero_ablation"}},
      {"kl_mean_ablation", {"kl_div", "mean_ablation"}},
      {"ce_loss_score", {"ce_loss_score"}},
      {"kl_div_score", {"kl_div_score"}},
      {"ce_loss_score_mean_ablation", {"ce_loss_score_mean_ablation"}},
      {"kl_div_score_mean_ablation", {"kl_div_score_mean_ablation"}},
      {"fvu", {"fvu"}},
      {"l0", {"l0"}},
      {"dead_features", {"dead_features"}},
      {"dense_features", {"dense_features"}},
      {"mse", {"mse"}},
      {"cossim", {"cossim"}},
  };
  std::string text = "step,tokens,eval_stories,eval_tokens";
  for (const Column& c : columns) text += cat(",", c.first);
  text += "\n";
  for (const auto& [step, eval] : evals) {
    text += cat(step, ",", csv_number(number_at(eval, {"training", "tokens"})), ",", csv_number(number_at(eval, {"stories"})),
                ",", csv_number(number_at(eval, {"tokens"})));
    for (const Column& c : columns) text += "," + csv_number(number_at(eval, c.second));
    text += "\n";
  }
  if (!fs::exists(path) || read_small_file(path) != text) write_file_atomic(path, text);  // (its figure stays current)
  return path;
}

}  // namespace sae
