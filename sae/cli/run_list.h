// sae_train's lists (docs/contract.md §5): several SAEs trained together on one stream of batches,
// one per value of --l1-list, --k-list, --layer-list (an SAE at hidden_states[L]) or
// --transcoder-list (a transcoder of block L's MLP), each into OUT/<option>_<value>/ (layer_<L>/ for
// the last two), and OUT/sweep.json, the list's record (the option, its values and the options its
// SAEs share), written before any of them starts, so that `--resume OUT` after a crash continues
// every one, also one killed before it wrote its config.json. A list's process holds OUT/.lock
// while it runs (ListFolder): a second list into OUT, or a --resume of it, stops with one line
// before it rewrites sweep.json. A list that fails before any of its SAEs began (its data missing,
// say) leaves OUT as it found it: the sweep.json it replaced is put back (a failed --overwrite kept
// the old SAEs but had lost their list) or its own removed, and OUT, when made for the list,
// removed once empty.
// Library code: throws, never exits.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/file_lock.h"
#include "sae/train/train_config.h"

namespace sae {

// The command line's list options, as given.
struct ListOptions {
  std::optional<std::string> l1s, ks, layers, transcoders, hooks;
  bool any() const { return l1s || ks || layers || transcoders || hooks; }
};

// A list's OUT, held while this object lives: its lock, and what the list wrote there, undone when
// it ends with none of its SAEs begun (see the header).
class ListFolder {
 public:
  ~ListFolder();

 private:
  friend std::vector<TrainConfig> list_configs(const TrainConfig&, const ListOptions&, bool,
                                               std::unique_ptr<ListFolder>&);
  friend std::vector<TrainConfig> resumed_list_configs(const TrainConfig&, bool, std::unique_ptr<ListFolder>&);
  std::unique_ptr<FileLock> lock_;
  std::string file_;                      // OUT/sweep.json, when this list wrote it ("" on --resume)
  std::vector<std::string> made_;         // the folders made for it (missing_folders)
  std::optional<std::string> replaced_;   // the sweep.json it replaced
  std::vector<std::string> paths_, stamps_;  // each SAE's config.json and its identity at the start
};

// The SAEs of a fresh list, one config per value (none when no list option is given). UsageError for
// two list options, a list beside its single option (--l1 with --l1-list, ...), --k-list for an
// architecture without k, --layer-list / --transcoder-list from activation files, a list with
// --resume, values not increasing, and an OUT that holds a list's begun SAEs without --overwrite.
// owner: this process claims OUT (`held`) and writes sweep.json (under mpirun rank 0; the other ranks
// make the same configs without touching the folder).
std::vector<TrainConfig> list_configs(const TrainConfig& base, const ListOptions& lists, bool owner,
                                      std::unique_ptr<ListFolder>& held);

// --resume OUT of a list's run: every SAE of OUT/sweep.json (each continued from its folder, or
// started there when it had not begun), else every run folder under OUT; none when OUT is a run.
// owner: holds OUT when it has a sweep.json (`held`). DataError naming sweep.json when it is bad.
std::vector<TrainConfig> resumed_list_configs(const TrainConfig& cli, bool owner, std::unique_ptr<ListFolder>& held);

}  // namespace sae
