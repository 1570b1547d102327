// The architecture options of a training run (rows of the option table, sae/train/options.cpp):
// their choice types, the rules of which option applies to which architecture (validate), and
// what they resolve to for the step (ArchOptions) and for a fresh initialisation (ArchInit).
// Defaults that depend on the architecture ("auto"), docs/architectures.md §2:
//   unit-norm decoder: on for topk, batchtopk and jumprelu with the step penalty; off otherwise
//   tied init:         on for every architecture but standard (which keeps the study's init)
//   b_dec:             the geometric median for topk and batchtopk; the init's own otherwise
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sae/arch.h"
#include "sae/arch_init.h"

namespace sae {

struct TrainConfig;
struct TrainingData;

enum class Toggle { Auto, On, Off };
Toggle parse_unit_norm_decoder(const std::string& text);  // UsageError naming --unit-norm-decoder
Toggle parse_init_tied(const std::string& text);          // UsageError naming --init-tied
const char* toggle_name(Toggle t);                        // "auto", "on", "off"

enum class BDecChoice { Auto, Zero, GeometricMedian };
BDecChoice parse_init_b_dec(const std::string& text);  // UsageError naming --init-b-dec
const char* b_dec_choice_name(BDecChoice c);

// UsageError (one line naming the option) for an architecture option out of range, or given with
// an architecture it does not apply to (given = a value other than the default).
void validate_architecture_options(const TrainConfig& c);

bool resolved_unit_norm_decoder(const TrainConfig& c);
// What the step needs (d_in: AuxK's default k_aux is d_in / 2).
ArchOptions arch_options(const TrainConfig& c, int64_t d_in);
// How a fresh run starts.
ArchInit arch_init(const TrainConfig& c);

// A fresh run's parameters (the standard init for the standard SAE with default options, exactly
// as before the architectures existed).
SaeParams fresh_params(const TrainConfig& c, TrainingData& data);
// --init: the folder's architecture must be the run's (UsageError otherwise); a topk or batchtopk
// run without --k takes the folder's.
void adopt_init_architecture(TrainConfig& c, const SaeParams& loaded);
// AuxK's clock (tokens since each latent fired) from the dead-feature tracker's last-fired token
// counts; `clock` is empty when the step has no AuxK.
void set_dead_clock(std::vector<int64_t>& clock, const std::vector<int64_t>& last_fired, int64_t tokens);

// Tokens of the first batches a run will train on (normalised as it will see them), up to
// `max_tokens` and, for activation data, never more than the data holds, as float64 [n, d] (the
// geometric median's sample). The batch source is put back where it was.
std::vector<double> first_training_tokens(TrainingData& data, const TrainConfig& c, int64_t max_tokens = 32768);

}  // namespace sae
