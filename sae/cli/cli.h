// The command-line layer shared by every binary (docs/contract.md §5): the training options (one
// definition, so the binaries share names and defaults), profiles, and run_main(), which turns
// exceptions into one-line messages and exit codes (2 usage, 1 data/IO or training failure).
#pragma once
#include <cxxopts.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lm/hook_points.h"
#include "sae/data/activations.h"
#include "sae/train/train_config.h"

namespace sae {

// A profile is a set of option values applied before the command line, which overrides them.
using Profile = std::map<std::string, std::string>;
// Adds the training options of sae_train (defaults = the original study) to `options`.
// `shown_defaults` replaces some defaults (a study's --out); options named in `leave_out` are not
// added (a study sweeps them: give their values through the profile of training_config()).
void add_training_options(cxxopts::Options& options, const Profile& shown_defaults = {},
                          const std::vector<std::string>& leave_out = {});
// Builds a TrainConfig from the parsed options, with `profile` values for options not given;
// validated unless `validate` is false (sae_train --k-list: valid once k is set per SAE).
TrainConfig training_config(const cxxopts::ParseResult& parsed, const Profile& profile = {}, bool validate = true);
// The value of an option: from the command line if given, else the profile, else its default.
std::string option_value(const cxxopts::ParseResult& parsed, const Profile& profile, const std::string& name);

// The default of an option as --help shows it ("" when it has none). Error for an unknown name.
std::string option_default(const cxxopts::Options& options, const std::string& name);

// "--a 1, --b 2": a profile as it reads in --help.
std::string profile_text(const Profile& profile);
// The synthetic data of both studies' --profile quick: the default generator scaled from d = 768 to
// d = 64 (concept counts and active concepts per token by 1/12; one story concept per story).
Profile quick_study_data();
// Output files named before the work, so that a path that cannot be written is said at once, not
// after it: UsageError when two outputs are one path (the second would replace the first), DataError
// when an output's folder is missing or not a folder, or the output is there and not a regular file
// (a folder, a device: it would be replaced). `outputs`: each
// option's name and its path ("" when not given); an output that is one of `inputs` (an input
// option's name and path) is a UsageError too (it would replace what it was made from).
void check_output_files(const std::vector<std::pair<std::string, std::string>>& outputs,
                        const std::vector<std::pair<std::string, std::string>>& inputs = {});
// An output folder made only when the results are written: DataError "DIR: cannot create the output
// directory: ..." now, before the work, when DIR or its nearest existing parent is not a folder or
// cannot be written.
void check_output_folder(const std::string& dir);
// --hook / --layer of a program that reads a hook point (lm/hook_points.h hook_choice): not given,
// one of them, or a UsageError for both or a bad value.
HookChoice hook_choice_given(const cxxopts::ParseResult& parsed);
// The value of a number option declared as a string (cxxopts' value<double> keeps a number's first
// digits and drops the rest: "0,5" read as 0, "0x10" as 0): the whole text must be one number, else
// UsageError "--option: expected a number, got 'text'" (or "is out of range" for 1e400 / 1e-400).
// The comma lists below read their items the same way.
double number_option(const cxxopts::ParseResult& parsed, const std::string& option);
double number_value(const std::string& option, const std::string& text);  // the same for a text in hand
// Splits a comma-separated option value ("100,767,768") into its items; UsageError naming --option
// when an item is empty.
std::vector<std::string> split_option_list(const std::string& option, const std::string& text);
// Prints `line` and a newline on stdout at once (the lines of progress a person watches).
void print_line(const std::string& line);
// The activation files a dictionary reads from --OPTION: one file, or a crosscoder's one per source
// (`sources` of them, comma-separated, read side by side as a ConcatSource). UsageError for a path
// with a comma that exists (refuse_path_with_comma) or a file count other than `sources`.
std::unique_ptr<ActivationSource> open_dictionary_inputs(const std::string& option, const std::string& text,
                                                         int64_t sources, const std::string& sae_dir);
// Comma lists of the study drivers, each in increasing order (a value twice would name one run
// folder twice): positive integers (--features-list, --k-list), or non-negative numbers (--l1-list).
// UsageError naming --option otherwise.
std::vector<int64_t> parse_increasing_int_list(const std::string& option, const std::string& text);
std::vector<double> parse_increasing_number_list(const std::string& option, const std::string& text);
// The study drivers' --profile full|quick: an empty profile for full (the defaults); for quick,
// `quick`, after printing each value with the default it replaces. UsageError for other names and
// for quick on non-synthetic data (its values are sized for the synthetic generator).
Profile study_profile(const cxxopts::Options& options, const cxxopts::ParseResult& parsed, const Profile& quick);

// An input file named by --option (a corpus, ...) must be a regular file: a FIFO or a directory is
// refused at once with the message of io/mapped_file.h open_regular_file, the same in every program
// (DataError).
void require_input_file(const std::string& path);

// Parses argv; prints help and returns false when --help was asked for. UsageError otherwise.
bool parse_command_line(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& out);

// Runs body() and maps what it throws to a message on stderr and an exit code (UsageError 2, other
// errors 1, TrainingInterrupted 128 + its signal: "PROGRAM: stopped by ..."). First, unless the
// environment already says otherwise, it restarts the program with the CPU runtime's start-up
// settings (tensor/cpu_runtime.h: OMP_WAIT_POLICY=passive, and OPENBLAS_CORETYPE when OpenBLAS
// does not know this CPU).
int run_main(const char* program, int argc, char** argv, const std::function<int()>& body);

}  // namespace sae
