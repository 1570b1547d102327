// Shared command-line options, profiles and the exit-code wrapper (see cli.h).
#include "sae/cli/cli.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <new>

#include "io/mapped_file.h"
#include "io/utf8.h"
#include "sae/data/concat_source.h"
#include "sae/data/synthetic.h"
#include "sae/train/dictionary_reads.h"
#include "sae/train/interrupt.h"
#include "sae/train/options.h"
#include "sae/train/trainer.h"
#include "tensor/cpu_runtime.h"

namespace sae {

void add_training_options(cxxopts::Options& options, const Profile& shown_defaults,
                          const std::vector<std::string>& leave_out) {
  const TrainConfig defaults;
  for (const TrainOption& o : train_options()) {
    if (std::find(leave_out.begin(), leave_out.end(), o.name) != leave_out.end()) continue;
    auto shown = shown_defaults.find(o.name);
    auto value = cxxopts::value<std::string>()->default_value(shown != shown_defaults.end() ? shown->second
                                                                                             : o.text(defaults));
    if (!o.implicit_value.empty()) value->implicit_value(o.implicit_value);
    options.add_options(o.group)(o.name, o.help, value);
  }
}

std::string option_value(const cxxopts::ParseResult& parsed, const Profile& profile, const std::string& name) {
  if (parsed.count(name) == 0) {
    auto it = profile.find(name);
    if (it != profile.end()) return it->second;
  }
  return parsed[name].as<std::string>();
}

TrainConfig training_config(const cxxopts::ParseResult& parsed, const Profile& profile, bool validate) {
  TrainConfig c;
  for (const TrainOption& o : train_options()) {
    if (parsed.count(o.name) == 0 && !profile.count(o.name)) {
      // Left out of this program's options (a study sets it per run) and not in the profile: default.
      bool known = true;
      try {
        (void)parsed[o.name];
      } catch (const cxxopts::exceptions::exception&) {
        known = false;
      }
      if (!known) continue;
    }
    o.parse(c, option_value(parsed, profile, o.name));
    if (parsed.count(o.name) > 0 || profile.count(o.name) > 0) c.given.push_back(o.name);
    if (parsed.count(o.name) == 0 && profile.count(o.name) > 0) c.from_profile.push_back(o.name);
  }
  if (!c.init.empty() && !c.resume.empty()) throw UsageError("--init and --resume cannot be used together");
  if (!c.model.empty() || !c.text.empty()) {  // text through the model: no activation --data
    if (c.was_given("data")) throw UsageError("--data and --model/--text are two ways to give the data: choose one");
    c.data = "text";
  }
  if (!c.text.empty()) require_input_file(c.text);  // a FIFO would block the reader: refused here, at once
  // A --resume is validated once merged with the run's own config.json (start_run): its checks that
  // join options (--shards dividing --features, --target-l0 within --features) would otherwise
  // judge the defaults of what the command line leaves out. An --init run likewise, once it has
  // taken the folder's width and k (--architecture topk --init DIR without --k was refused).
  resolve_expansion_factor(c);  // (a --resume keeps its width)
  if (c.resume.empty()) resolve_training_tokens(c);  // (a --resume's, once merged with its batch: resumed_config)
  if (validate && c.resume.empty() && c.init.empty()) c.validate();
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
  // (--model / --text train from text, whatever --data says: the profile's widths would not be the model's.)
  if (option_value(parsed, quick, "data") != "synthetic" || parsed.count("model") || parsed.count("text"))
    throw UsageError("--profile quick is sized for the synthetic data; use --profile full with --data FILE or "
                     "--model / --text");
  std::printf("profile quick changes (the command line overrides these):\n");
  for (const auto& [option, value] : quick)
    std::printf("  --%s %s (full: %s)%s\n", option.c_str(), value.c_str(), option_default(options, option).c_str(),
                parsed.count(option) ? " [overridden on the command line]" : "");
  return quick;
}

namespace {
// cxxopts takes a one-letter name as a short option (-k 32) and rejects "--k": single-letter long
// options (--k 32, --k=32) are handed to it in the short form.
std::vector<std::string> short_form_of_one_letter_options(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() >= 3 && a[0] == '-' && a[1] == '-' && std::isalnum(static_cast<unsigned char>(a[2])) &&
        (a.size() == 3 || a[3] == '='))
      args[i] = a.size() == 3 ? "-" + a.substr(2, 1) : "-" + a.substr(2, 1) + a.substr(4);
  }
  return args;
}
}  // namespace

bool parse_command_line(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& out) {
  options.add_options()("h,help", "show this help");
  const std::vector<std::string> args = short_form_of_one_letter_options(argc, argv);
  std::vector<const char*> pointers;
  for (const std::string& a : args) pointers.push_back(a.c_str());
  try {
    out = options.parse(static_cast<int>(pointers.size()), pointers.data());
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
    std::string message = e.what();
    // Options that were replaced: say by what.
    for (const auto& [old_option, replacement] : {std::pair<std::string, std::string>{"tf32", "--precision tf32"}})
      if (message.find("'" + old_option + "'") != std::string::npos ||
          message.find("\u2018" + old_option + "\u2019") != std::string::npos)  // cxxopts quotes it so
        message += cat(" (--", old_option, " was replaced by ", replacement, ")");
    throw UsageError(message);
  }
  if (!out.unmatched().empty()) {
    // Right after a flag or an option whose value is optional ("--init-tied off"): its value needs "=".
    const std::string& stray = out.unmatched()[0];
    auto takes_no_separate_value = [&](const std::string& arg) {
      if (arg.size() < 3 || arg.rfind("--", 0) != 0 || arg.find('=') != std::string::npos) return false;
      for (const std::string& group : options.groups())
        for (const cxxopts::HelpOptionDetails& o : options.group_help(group).options)
          if (!o.l.empty() && o.l[0] == arg.substr(2)) return o.is_boolean || o.has_implicit;
      return false;
    };
    for (size_t i = 2; i < args.size(); ++i)
      if (args[i] == stray && takes_no_separate_value(args[i - 1]))
        throw UsageError(cat("unexpected argument '", stray, "' after ", args[i - 1], ": a flag or an option whose value "
                             "is optional takes its value with '=' (", args[i - 1], "=", stray, ")"));
    throw UsageError(cat("unexpected argument '", stray, "'"));
  }
  if (out.count("help")) {
    std::cout << options.help() << std::endl;
    return false;
  }
  return true;
}

void require_input_file(const std::string& path) { ::close(open_regular_file(path)); }

int run_main(const char* program, int argc, char** argv, const std::function<int()>& body) {
  if (argc > 0) restart_with_cpu_runtime_environment(argv);
  report_truncated_mappings(program);  // a mapped input cut short by another program: one line, exit 1
  try {
    for (int i = 1; i < argc; ++i)  // paths and values are recorded in JSON, which holds UTF-8 text only
      if (!utf8::is_valid(argv[i]))
        throw UsageError(cat("argument ", i, " '", printable(argv[i]), "' is not UTF-8 text (paths and values are "
                             "recorded in JSON files, which hold UTF-8 only)"));
    const int code = body();
    // What the program printed must have reached its file: a full disk under `> FILE` is not exit 0.
    errno = 0;
    std::cout.flush();
    int reason = errno;
    const bool flushed = std::fflush(stdout) == 0;
    if (reason == 0) reason = errno;
    if (code == 0 && (!flushed || std::ferror(stdout) || std::cout.fail()))
      throw DataError(cat("cannot write the standard output", reason != 0 ? cat(": ", std::strerror(reason)) : ""));
    return code;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", program, e.what());
    return 2;
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", program, e.what());
    return 2;
  } catch (const TrainingInterrupted& e) {  // saved what it had trained: the exit status of a process the signal ended
    std::fprintf(stderr, "%s: stopped by %s\n", program, e.what());
    return 128 + e.signal;
  } catch (const std::bad_alloc&) {  // an allocation the library did not size-check itself
    std::fprintf(stderr, "%s: error: out of host memory (std::bad_alloc): the sizes this run asks for (features, "
                         "batch, stories, statistics) need more memory than this machine gives it\n", program);
    return 1;
  } catch (const std::exception& e) {  // a std::filesystem error's text put as ours (error_text)
    std::fprintf(stderr, "%s: error: %s\n", program, error_text(e).c_str());
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

void check_output_files(const std::vector<std::pair<std::string, std::string>>& outputs,
                        const std::vector<std::pair<std::string, std::string>>& inputs) {
  namespace fs = std::filesystem;
  auto same = [](const std::string& a, const std::string& b) {
    std::error_code ec1, ec2;
    const fs::path x = fs::weakly_canonical(a, ec1), y = fs::weakly_canonical(b, ec2);
    return !ec1 && !ec2 && x == y;
  };
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& [option, path] = outputs[i];
    if (path.empty()) continue;
    for (size_t k = 0; k < i; ++k)
      if (!outputs[k].second.empty() && same(outputs[k].second, path))
        throw UsageError(cat("--", outputs[k].first, " and --", option, " name one file, ", path,
                             ": the second would replace the first"));
    for (const auto& [input_option, input] : inputs)
      if (!input.empty() && same(input, path))
        throw UsageError(cat("--", option, " ", path, " is an input (of --", input_option,
                             "): it would replace what it is made from"));
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw DataError(cat("--", option, " ", path, ": is a folder, not a file"));
    // A device, a FIFO or a socket would be replaced by the file (as root: /dev/null itself).
    if (fs::exists(path, ec) && !fs::is_regular_file(path, ec))
      throw DataError(cat("--", option, " ", path, ": is not a regular file (a device, a FIFO?): give a file path"));
    const fs::path folder = fs::path(path).parent_path();
    if (!folder.empty() && !fs::is_directory(folder, ec))
      throw DataError(cat("--", option, " ", path, ": its folder ", folder.string(),
                          fs::exists(folder, ec) ? " is not a folder" : " does not exist"));
  }
}

void check_output_folder(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::absolute(dir, ec);
  while (!p.empty() && !fs::exists(p, ec) && p != p.parent_path()) p = p.parent_path();
  if (!fs::is_directory(p, ec))
    throw DataError(cat(dir, ": cannot create the output directory: ", p.string(), " is not a folder"));
  if (::access(p.c_str(), W_OK | X_OK) != 0)
    throw DataError(cat(dir, ": cannot create the output directory: ", p.string(), " cannot be written"));
}

HookChoice hook_choice_given(const cxxopts::ParseResult& parsed) {
  return hook_choice(parsed.count("hook") ? parsed["hook"].as<std::string>() : std::string(),
                     parsed.count("layer") ? parsed["layer"].as<int64_t>() : -1, parsed.count("layer") > 0);
}

namespace {
// The whole text as one decimal number (no sign '+', spaces, hex or trailing characters); UsageError
// naming --option otherwise, or when it is out of double's range (1e400, or 1e-400, not 0).
template <typename T>
T parse_entire_text(const std::string& option, const std::string& text, const char* expected) {
  T value{};
  const auto r = std::from_chars(text.data(), text.data() + text.size(), value);
  if (r.ec == std::errc::result_out_of_range && r.ptr == text.data() + text.size())
    throw UsageError(cat("--", option, ": '", printable(text), "' is out of range"));
  if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size())
    throw UsageError(cat("--", option, ": expected ", expected, ", got '", printable(text), "'"));
  return value;
}
}  // namespace

double number_value(const std::string& option, const std::string& text) {
  return parse_entire_text<double>(option, text, "a number");
}

double number_option(const cxxopts::ParseResult& parsed, const std::string& option) {
  return number_value(option, parsed[option].as<std::string>());
}

std::vector<std::string> split_option_list(const std::string& option, const std::string& text) {
  std::vector<std::string> items;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    items.push_back(text.substr(begin, end - begin));
    if (items.back().empty())
      throw UsageError(cat("--", option, ": an empty item in the comma-separated list '", text, "'"));
    begin = end + 1;
  }
  return items;
}

void print_line(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

std::unique_ptr<ActivationSource> open_dictionary_inputs(const std::string& option, const std::string& text,
                                                         int64_t sources, const std::string& sae_dir) {
  refuse_path_with_comma("--" + option, text);
  const std::vector<std::string> files = split_option_list(option, text);
  if (sources > 1 && static_cast<int64_t>(files.size()) != sources)
    throw UsageError(cat("--", option, ": ", sae_dir, " is a crosscoder of ", sources,
                         " sources: give one activation file per source, comma-separated (got ", files.size(), ")"));
  if (sources == 1 && files.size() > 1)
    throw UsageError(cat("--", option, ": several files are a crosscoder's sources; ", sae_dir, " reads one"));
  if (files.size() == 1) return open_activations(files[0], SyntheticOptions{});
  std::vector<std::unique_ptr<ActivationSource>> opened;
  for (const std::string& file : files) opened.push_back(open_activations(file, SyntheticOptions{}));
  return std::make_unique<ConcatSource>(std::move(opened));
}

std::vector<int64_t> parse_increasing_int_list(const std::string& option, const std::string& text) {
  std::vector<int64_t> values;
  for (const std::string& item : split_option_list(option, text)) {
    const int64_t v = parse_entire_text<int64_t>(option, item, "positive integers separated by commas");
    if (v <= 0)
      throw UsageError(cat("--", option, ": expected positive integers separated by commas, got '", text, "'"));
    if (!values.empty() && v <= values.back())
      throw UsageError(cat("--", option, ": give the values in increasing order, got '", text, "'"));
    values.push_back(v);
  }
  return values;
}

std::vector<double> parse_increasing_number_list(const std::string& option, const std::string& text) {
  std::vector<double> values;
  for (const std::string& item : split_option_list(option, text)) {
    const double v = parse_entire_text<double>(option, item, "non-negative numbers separated by commas");
    if (!std::isfinite(v) || v < 0)
      throw UsageError(cat("--", option, ": expected non-negative numbers separated by commas, got '", text, "'"));
    if (!values.empty() && v <= values.back())
      throw UsageError(cat("--", option, ": give the values in increasing order, got '", text, "'"));
    values.push_back(v == 0 ? 0.0 : v);  // -0 is 0 (and names its folder so)
  }
  return values;
}

}  // namespace sae
