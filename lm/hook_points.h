// Hook points: the places inside a decoder model where activations are read (an SAE's input) or
// changed (an SAE's reconstruction spliced in, a steering vector added), named as TransformerLens
// and SAELens name them (docs/models.md, "Hook points"):
//   blocks.L.hook_resid_pre          the residual stream entering block L (= hidden_states[L])
//   blocks.L.attn.hook_z             the heads' outputs before the output projection, [T, H*hd]
//                                    (head h in columns h*hd .. h*hd + hd - 1)
//   blocks.L.hook_attn_out           what attention adds to the residual stream (after its output
//                                    projection and bias)
//   blocks.L.hook_resid_mid          resid_pre + attn_out, the MLP's residual input (sequential
//                                    blocks only: refused where attention and MLP run in parallel)
//   blocks.L.ln2.hook_normalized     the MLP's normalised input BEFORE the norm's weight and bias
//                                    ((x - mean) / sqrt(var + eps)), as TransformerLens's LayerNorm
//                                    hooks it; the transcoder input
//   blocks.L.hook_mlp_out            what the MLP adds to the residual stream
//   blocks.L.hook_resid_post         the residual stream leaving block L (= hidden_states[L + 1],
//                                    but for the last block, whose output HF returns after the final norm)
// and, with no TransformerLens name, Hugging Face's last hidden state hidden_states[L] (the final
// norm's output, what the unembedding reads), written "hidden_states[N]" (N the number of blocks).
// `--layer K` is hidden_states[K]: blocks.K.hook_resid_pre for K < N, the final output for K = N.
// Letters: T tokens, d hidden size, H heads, hd head size, N blocks.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace sae {

// In the order a block computes them (ResidPost last); FinalOutput comes after every block.
enum class HookPoint { ResidPre, AttnZ, AttnOut, ResidMid, Ln2Normalized, MlpOut, ResidPost, FinalOutput };

struct HookSite {
  int64_t layer = 0;  // the block L (for FinalOutput: N, the number of blocks)
  HookPoint point = HookPoint::ResidPre;
  bool operator==(const HookSite& other) const = default;
};

// Whether a forward pass reaches site a before site b. In a block of parallel attention and MLP
// (`parallel_blocks`: GPT-NeoX's use_parallel_residual), ln2.hook_normalized comes right after
// hook_resid_pre, before the attention's hooks (both branches read the block's input).
bool reached_before(const HookSite& a, const HookSite& b, bool parallel_blocks);

// "blocks.3.hook_resid_pre", ..., "hidden_states[4]" for FinalOutput.
std::string hook_name(const HookSite& site);
// The site a name names. UsageError (one line, naming the option `what`) for anything else:
// an unknown point, a malformed index, TransformerLens names we do not hook (hook_q, hook_pattern, ...).
// Not checked against a model here (check_hook_site does that).
HookSite parse_hook_name(const std::string& name, const std::string& what = "--hook");

// A module path as Hugging Face and sparsify name hook points (layers.6, model.layers.6.mlp,
// transformer.h.6, gpt_neox.layers.6): the block's index and what follows it ("" for the block
// itself, whose output is blocks.N.hook_resid_post); nullopt for any other name.
struct ModulePath {
  int64_t layer;
  std::string rest;
};
std::optional<ModulePath> parse_module_path(const std::string& name);
// hidden_states[k] as a site: blocks.k.hook_resid_pre for k < layers, the final output for k == layers.
HookSite hidden_states_site(int64_t k, int64_t layers);
// The hidden_states index a site equals, or -1 (resid_pre L -> L, resid_post L -> L + 1 when L + 1
// < layers, the final output -> layers).
int64_t hidden_states_index(const HookSite& site, int64_t layers);
// One name for each activation of a resolved site: a hidden state as hidden_states_site gives it
// (blocks.0.hook_resid_post is blocks.1.hook_resid_pre), any other site as it is. Two sites are the
// same activations exactly when their canonical sites are equal.
HookSite canonical_site(const HookSite& site, int64_t layers);

// Where to read, as the user said it: --hook NAME or --layer K (hidden_states[K]), or neither.
struct HookChoice {
  std::string option;  // "--hook", "--layer" or "" (not given)
  HookSite site;       // hidden_states[K] is {K, FinalOutput} until a model resolves it
  bool given() const { return !option.empty(); }
};
// From the two options' values ("" / a negative layer: not given). UsageError when both are given,
// for a malformed name, or a negative or absurd layer.
HookChoice hook_choice(const std::string& hook, int64_t layer, bool layer_given);

// How many of the model's blocks a run must load and run to reach the site (its own block too when
// the site is inside it), and whether it needs the final norm (FinalOutput).
int64_t blocks_needed(const HookSite& site, int64_t layers);

}  // namespace sae
