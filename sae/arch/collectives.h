// Collectives: what the ranks of a distributed run do together (docs/distributed.md), as the units'
// training steps, SaeStep, the trainer and the checkpoints need it. The interface lives here so that
// the units call it at their defined points; sae/dist implements it over MPI (and NCCL for device
// tensors), and tests implement it over threads. A null Collectives* is one process: the helpers
// below then do nothing, and every unit runs exactly as it did before.
//
// The ranks form a grid of S latent shards times R data-parallel replicas, rank = replica * S + shard:
//   Group::Shards    the S ranks of one replica: the same tokens, the latents split between them
//   Group::Replicas  the R ranks of one shard: the same latents, each its own part of the batch
//   Group::All       every rank
// Shard s holds latents [s F/S, (s + 1) F/S) of the SAE: those columns of W_enc, rows of W_dec and
// entries of every [F] tensor; b_dec and W_skip are replicated on every rank.
//
// Every rank of a group makes the same calls in the same order. Sums are in place, in the tensor's
// dtype (float32 or float64, on the tensor's device); every rank gets the same result.
// Letters: N tokens, D width, F latents (of the whole SAE), S shards, R replicas, P = S R ranks.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sae/step/sae_kernels.h"
#include "tensor/tensor.h"

namespace sae {

enum class Group { Shards, Replicas, All };
struct StepSums;  // unit.h

// The rows of an N-token batch that replica r of R holds: [N r / R, N (r + 1) / R) (the data sources
// split batches the same way, sae/data/batches.h).
inline int64_t part_begin(int64_t n, int64_t parts, int64_t part) { return n * part / parts; }

// What the collectives of a run cost: calls, the bytes each rank handed over (payload), the bytes a
// ring algorithm sends from each rank for them (all-reduce 2 (G-1)/G B, all-gather (G-1) B_rank), and
// the wall time spent inside them (waiting for slower ranks included).
// A failure on one rank, known to every rank (Collectives::agree): the failing rank's message (prefixed
// with "rank r of P: " when r is not 0) and the exit code its error means (2 usage, 1 otherwise).
struct RankFailure : Error {
  RankFailure(const std::string& message, int exit_code) : Error(message), code(exit_code) {}
  int code;
};

struct CollectiveStats {
  int64_t calls = 0;
  double payload_bytes = 0, ring_bytes = 0, seconds = 0;
};

class Collectives {
 public:
  Collectives(int shards, int replicas, int rank);
  virtual ~Collectives() = default;

  int rank() const { return rank_; }
  int ranks() const { return shards_ * replicas_; }
  int shards() const { return shards_; }
  int replicas() const { return replicas_; }
  int shard() const { return rank_ % shards_; }
  int replica() const { return rank_ / shards_; }
  int size(Group g) const { return g == Group::Shards ? shards_ : g == Group::Replicas ? replicas_ : ranks(); }
  int index_in(Group g) const { return g == Group::Shards ? shard() : g == Group::Replicas ? replica() : rank_; }

  // Sums over the group, in place.
  virtual void sum(Group g, Tensor& t) = 0;
  virtual void sum(Group g, double* values, int64_t count) = 0;   // host doubles
  virtual void max(Group g, double* values, int64_t count) = 0;   // host doubles
  virtual void sum(Group g, int64_t* values, int64_t count) = 0;  // host integers (exact)
  // Each rank's `bytes` bytes, in the group's order, into `out` (size(g) * bytes).
  virtual void gather(Group g, const void* mine, int64_t bytes, void* out) = 0;
  // root's bytes to every rank (over all).
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;

  // Every rank runs phase (which must make no collective call of its own); when it throws on any
  // rank, every rank throws RankFailure with the lowest failing rank's message, so one rank's bad
  // input stops every rank at the same point instead of leaving the others waiting.
  void agree(const std::function<void()>& phase);

  // Conveniences over the above.
  double sum(Group g, double value);
  int64_t sum(Group g, int64_t value);
  double max(Group g, double value);
  double min(Group g, double value);
  std::string broadcast(const std::string& text, int root);

  const CollectiveStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 protected:
  void count(Group g, double payload, bool gather_kind, double seconds);
  CollectiveStats stats_;

 private:
  int shards_, replicas_, rank_;
};

// True when c spans more than one rank of group g (null: one process).
bool spans(const Collectives* c, Group g);
// t summed over g when spans(c, g); nothing otherwise.
void sum_over(Collectives* c, Group g, Tensor& t);
double sum_over(Collectives* c, Group g, double value);
int64_t sum_over(Collectives* c, Group g, int64_t value);

// Completes a unit's StepSums over the ranks: rec and the token-only part of aux (terms of complete
// reconstructions, the same on every shard) are summed over the replicas; l1, active and the
// latent part of aux (sums over this shard's latents) over every rank; tokens over the replicas;
// loss = rec + lambda l1 + aux again.
void complete_step_sums(Collectives* c, StepSums& s, double lambda, double aux_over_latents);

// Sharded TopK's exact global selection per token (docs/distributed.md §2). The by-token lists rows
// row0 .. row0+n-1 of `s` hold each row's local candidates (at most k entries > 0 of this shard's
// latents, in feature order, as topk_select_ writes them). Every shard sends its candidates, k
// (value, global latent index) pairs per token, pads included: n k (sizeof(T) + 4) bytes (plus the
// pair's padding for float64); each keeps the entries among the k best of the S k candidates (larger
// value, then lower global index, as one process's selection). first_latent: this shard's first.
void shard_topk_cut(Collectives& c, SparseFeatures& s, int64_t row0, int64_t n, int64_t k, int64_t first_latent);

// Distributed BatchTopK's exact selection: the `total` largest relu(P) of the whole batch (every
// shard's latents, every replica's tokens), ties to the lower index of the global row-major order
// (token, latent), as batchtopk_select_ in one process. The value's key is found by a radix search
// over every rank (8 bits a pass: 4 all-reduces of 256 counts for float32, 8 for float64); ties are
// shared out in the global order, which needs an all-gather of the tied counts per row only when the
// threshold value occurs more often than it is taken. Writes rows 0 .. n-1 of s (a host computation;
// pre [n, F/S] and bias may live on a device). tokens_total: the batch's N (replicas split it by
// part_begin).
void distributed_batchtopk_select(Collectives& c, SparseFeatures& s, const Tensor& pre, const Tensor& bias,
                                  int64_t total, int64_t tokens_total);


}  // namespace sae
