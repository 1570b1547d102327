// Collectives' conveniences, the step sums over ranks and the TopK family's exact distributed
// selections (see collectives.h; docs/distributed.md §2).
#include "sae/arch/collectives.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sae/arch/unit.h"
#include "sae/step/selection_math.h"
#include "tensor/dispatch.h"
#include "tensor/ops.h"

namespace sae {

Collectives::Collectives(int shards, int replicas, int rank) : shards_(shards), replicas_(replicas), rank_(rank) {
  if (shards < 1 || replicas < 1 || rank < 0 || rank >= shards * replicas)
    throw Error(cat("Collectives: rank ", rank, " of ", shards, " shards x ", replicas, " replicas"));
}

double Collectives::sum(Group g, double value) {
  sum(g, &value, 1);
  return value;
}

int64_t Collectives::sum(Group g, int64_t value) {
  sum(g, &value, 1);
  return value;
}

double Collectives::max(Group g, double value) {
  max(g, &value, 1);
  return value;
}

double Collectives::min(Group g, double value) {
  double negated = -value;
  max(g, &negated, 1);
  return -negated;
}

std::string Collectives::broadcast(const std::string& text, int root) {
  int64_t length = static_cast<int64_t>(text.size());
  broadcast(&length, sizeof length, root);
  std::string out = rank_ == root ? text : std::string(static_cast<size_t>(length), '\0');
  if (length > 0) broadcast(out.data(), length, root);
  return out;
}

void Collectives::agree(const std::function<void()>& phase) {
  std::string message;
  int64_t code = 0;
  try {
    phase();
  } catch (const UsageError& e) {
    message = e.what();
    code = 2;
  } catch (const std::exception& e) {
    message = error_text(e);
    code = 1;
  } catch (...) {  // (nothing here throws another kind; were it to, the others must not wait)
    message = "an unknown error";
    code = 1;
  }
  std::vector<int64_t> codes(ranks());
  gather(Group::All, &code, sizeof code, codes.data());
  int first = -1;
  for (int r = 0; r < ranks() && first < 0; ++r)
    if (codes[r] != 0) first = r;
  if (first < 0) return;
  message = broadcast(message, first);
  throw RankFailure(first == 0 ? message : cat("rank ", first, " of ", ranks(), ": ", message),
                    static_cast<int>(codes[first]));
}

void Collectives::count(Group g, double payload, bool gather_kind, double seconds) {
  const double members = size(g);
  stats_.calls += 1;
  stats_.payload_bytes += payload;
  stats_.ring_bytes += gather_kind ? (members - 1) * payload : 2 * (members - 1) / members * payload;
  stats_.seconds += seconds;
}

bool spans(const Collectives* c, Group g) { return c != nullptr && c->size(g) > 1; }

void sum_over(Collectives* c, Group g, Tensor& t) {
  if (spans(c, g)) c->sum(g, t);
}

double sum_over(Collectives* c, Group g, double value) { return spans(c, g) ? c->sum(g, value) : value; }

int64_t sum_over(Collectives* c, Group g, int64_t value) { return spans(c, g) ? c->sum(g, value) : value; }

void complete_step_sums(Collectives* c, StepSums& s, double lambda, double aux_over_latents) {
  if (c == nullptr || c->ranks() == 1) return;
  double by_tokens[3] = {s.rec, s.aux - aux_over_latents, double(s.tokens)};
  double by_all[3] = {s.l1, s.active, aux_over_latents};
  if (spans(c, Group::Replicas)) c->sum(Group::Replicas, by_tokens, 3);
  c->sum(Group::All, by_all, 3);
  s.rec = by_tokens[0];
  s.aux = by_tokens[1] + by_all[2];
  s.tokens = static_cast<int64_t>(by_tokens[2]);
  s.l1 = by_all[0];
  s.active = by_all[1];
  s.loss = s.rec + lambda * s.l1 + s.aux;
}

// ---------------------------------------------------------------- host views of lists

namespace {

// A tensor's values on the host (a copy for device tensors), written back by put().
template <typename T>
struct HostView {
  Tensor source, host;
  explicit HostView(const Tensor& t) : source(t), host(t.device() == Device::CPU ? t : t.to(Device::CPU)) {}
  T* data() { return host.data<T>(); }
  void put() {
    if (source.device() == Device::CPU) return;
    Tensor back = host.to(source.device());
    copy_(source, back);
  }
};

template <typename T>
struct Candidate {
  T value;
  int32_t index;  // global latent index; -1: a pad
};

template <typename T>
bool better(const Candidate<T>& a, const Candidate<T>& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

template <typename T>
void shard_topk_cut_typed(Collectives& c, SparseFeatures& s, int64_t row0, int64_t n, int64_t k,
                          int64_t first_latent) {
  const int shards = c.shards();
  HostView<int32_t> ptr_view(s.row_ptr.slice_rows(row0, row0 + n + 1));
  int32_t* row_ptr = ptr_view.data();
  const int32_t begin = row_ptr[0], end = row_ptr[n];
  HostView<int32_t> cols_view(s.cols.slice_rows(begin, std::max(end, begin)));
  HostView<T> vals_view(s.row_vals.slice_rows(begin, std::max(end, begin)));
  int32_t* cols = cols_view.data();
  T* vals = vals_view.data();
  // This shard's candidates, k slots per row.
  std::vector<Candidate<T>> mine(static_cast<size_t>(n * k), Candidate<T>{T(0), -1});
  for (int64_t r = 0; r < n; ++r)
    for (int32_t e = row_ptr[r], q = 0; e < row_ptr[r + 1]; ++e, ++q)
      mine[r * k + q] = {vals[e - begin], static_cast<int32_t>(first_latent + cols[e - begin])};
  std::vector<Candidate<T>> all(static_cast<size_t>(shards * n * k));
  c.gather(Group::Shards, mine.data(), static_cast<int64_t>(mine.size() * sizeof(Candidate<T>)), all.data());
  // Per row: the k-th best candidate of every shard's, then this shard's entries at or above it.
  std::vector<Candidate<T>> row;
  int32_t out = begin;
  for (int64_t r = 0; r < n; ++r) {
    row.clear();
    for (int q = 0; q < shards; ++q)
      for (int64_t j = 0; j < k; ++j) {
        const Candidate<T>& cand = all[(q * n + r) * k + j];
        if (cand.index >= 0) row.push_back(cand);
      }
    const bool cut = static_cast<int64_t>(row.size()) > k;
    Candidate<T> last{T(0), -1};
    if (cut) {
      std::nth_element(row.begin(), row.begin() + (k - 1), row.end(), better<T>);
      last = row[k - 1];
    }
    const int32_t from = row_ptr[r], to = row_ptr[r + 1];
    row_ptr[r] = out;
    for (int32_t e = from; e < to; ++e) {
      const Candidate<T> entry{vals[e - begin], static_cast<int32_t>(first_latent + cols[e - begin])};
      if (cut && better(last, entry)) continue;
      cols[out - begin] = cols[e - begin];
      vals[out - begin] = vals[e - begin];
      ++out;
    }
  }
  row_ptr[n] = out;
  ptr_view.put();
  cols_view.put();
  vals_view.put();
}

}  // namespace

void shard_topk_cut(Collectives& c, SparseFeatures& s, int64_t row0, int64_t n, int64_t k, int64_t first_latent) {
  dispatch_float(s.row_vals.dtype(), "shard_topk_cut", [&](auto zero) {
    using T = decltype(zero);
    shard_topk_cut_typed<T>(c, s, row0, n, k, first_latent);
  });
}

// ---------------------------------------------------------------- distributed BatchTopK

namespace {

template <typename T>
void distributed_batchtopk_typed(Collectives& c, SparseFeatures& s, const Tensor& pre_t, const Tensor& bias_t,
                                 int64_t total, int64_t tokens_total) {
  using Key = decltype(order_key(T(0)));
  constexpr int kKeyBits = 8 * sizeof(Key), kDigitBits = 8;
  constexpr int64_t kBins = int64_t(1) << kDigitBits;
  const Tensor pre_host = pre_t.to(Device::CPU), bias_host = bias_t.to(Device::CPU);
  const T* pre = pre_host.data<T>();
  const T* bias = bias_host.data<T>();
  const int64_t n = pre_t.size(0), cols = pre_t.size(1);
  // The keys of this rank's positive relu(P), row-major.
  std::vector<Key> keys(static_cast<size_t>(n * cols));
  std::vector<uint8_t> positive(static_cast<size_t>(n * cols));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const T v = pre[r * cols + j] + bias[j];
      positive[r * cols + j] = v > T(0);
      keys[r * cols + j] = order_key(v);
    }
  // The total-th largest key of every rank's, kDigitBits at a time.
  Key prefix = 0, prefix_mask = 0, threshold = order_key(T(0));
  int64_t rank = total, ties = 0, tied_everywhere = 0;
  bool take_all = false;
  std::vector<int64_t> histogram(kBins);
  for (int pass = 0; pass * kDigitBits < kKeyBits; ++pass) {
    const int shift = kKeyBits - kDigitBits * (pass + 1);
    std::fill(histogram.begin(), histogram.end(), int64_t(0));
    for (size_t e = 0; e < keys.size(); ++e)
      if (positive[e] && (keys[e] & prefix_mask) == prefix) ++histogram[(keys[e] >> shift) & Key(kBins - 1)];
    c.sum(Group::All, histogram.data(), kBins);
    if (pass == 0) {
      int64_t positives = 0;
      for (int64_t b = 0; b < kBins; ++b) positives += histogram[b];
      if (positives <= total) {
        take_all = true;
        break;
      }
    }
    int64_t above = 0, digit = kBins - 1;
    for (; digit > 0 && above + histogram[digit] < rank; --digit) above += histogram[digit];
    rank -= above;
    prefix |= Key(digit) << shift;
    prefix_mask |= Key(kBins - 1) << shift;
    if (shift == 0) {
      threshold = prefix;
      ties = rank;
      tied_everywhere = histogram[digit];
    }
  }
  // Per row: values above the threshold key, and equal to it.
  std::vector<int64_t> count_gt(n, 0), count_eq(n, 0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t e = r * cols + j;
      if (!positive[e]) continue;
      count_gt[r] += take_all || keys[e] > threshold;
      count_eq[r] += !take_all && keys[e] == threshold;
    }
  // The ties this rank takes, row by row: all of them when every tie is taken, else in the global
  // order (replicas' tokens in order, within a token the shards in order).
  std::vector<int64_t> take(n, 0);
  if (!take_all && ties == tied_everywhere) {
    take = count_eq;
  } else if (!take_all) {
    const int replicas = c.replicas(), shards = c.shards();
    const int64_t rows_max = (tokens_total + replicas - 1) / replicas;
    std::vector<int64_t> mine(rows_max, 0), every(static_cast<size_t>(c.ranks() * rows_max));
    std::copy(count_eq.begin(), count_eq.end(), mine.begin());
    c.gather(Group::All, mine.data(), rows_max * int64_t(sizeof(int64_t)), every.data());
    int64_t before = 0;  // ties ahead of this rank's row r in the global order
    for (int rep = 0; rep < replicas; ++rep) {
      const int64_t rows = part_begin(tokens_total, replicas, rep + 1) - part_begin(tokens_total, replicas, rep);
      for (int64_t r = 0; r < rows; ++r)
        for (int sh = 0; sh < shards; ++sh) {
          const int64_t eq = every[(int64_t(rep) * shards + sh) * rows_max + r];
          if (rep == c.replica() && sh == c.shard()) take[r] = std::max<int64_t>(0, std::min(eq, ties - before));
          before += eq;
        }
    }
  }
  // The lists.
  HostView<int32_t> ptr_view(s.row_ptr.slice_rows(0, n + 1));
  int32_t* row_ptr = ptr_view.data();
  row_ptr[0] = 0;
  for (int64_t r = 0; r < n; ++r) row_ptr[r + 1] = static_cast<int32_t>(row_ptr[r] + count_gt[r] + take[r]);
  const int32_t entries = row_ptr[n];
  HostView<int32_t> cols_view(s.cols.slice_rows(0, std::max<int32_t>(entries, 1)));
  HostView<T> vals_view(s.row_vals.slice_rows(0, std::max<int32_t>(entries, 1)));
  int32_t* out_cols = cols_view.data();
  T* out_vals = vals_view.data();
  for (int64_t r = 0; r < n; ++r) {
    int32_t e = row_ptr[r];
    int64_t ties_here = take[r];
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t at = r * cols + j;
      if (!positive[at]) continue;
      if (take_all || keys[at] > threshold || (keys[at] == threshold && ties_here-- > 0)) {
        out_cols[e] = static_cast<int32_t>(j);
        out_vals[e] = pre[at] + bias[j];
        ++e;
      }
    }
  }
  ptr_view.put();
  cols_view.put();
  vals_view.put();
}

}  // namespace

void distributed_batchtopk_select(Collectives& c, SparseFeatures& s, const Tensor& pre, const Tensor& bias,
                                  int64_t total, int64_t tokens_total) {
  // bf16 pre-activations (--precision bf16) are read widened, as the selection kernels read them.
  const Tensor values = pre.dtype() == DType::BF16 ? pre.to(DType::F32) : pre;
  dispatch_float(values.dtype(), "distributed_batchtopk_select", [&](auto zero) {
    using T = decltype(zero);
    distributed_batchtopk_typed<T>(c, s, values, bias, total, tokens_total);
  });
}

}  // namespace sae
