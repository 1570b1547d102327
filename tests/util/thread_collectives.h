// Collectives over threads of one process (sae/arch/collectives.h), for tests of the units' sharded
// and replicated steps without MPI: run_ranks(S, R, body) runs body(collectives) on S x R threads,
// each a rank. Every operation copies each rank's data into its slot, waits for all, and each rank
// combines its group's slots in group order (so every rank of a group gets the same result).
#pragma once
#include <barrier>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "sae/arch/collectives.h"
#include "tensor/ops.h"
#include "tensor/threads.h"

namespace sae::testing {

class ThreadHub {
 public:
  ThreadHub(int shards, int replicas)
      : shards(shards), replicas(replicas), slots(shards * replicas), sync(shards * replicas) {}
  const int shards, replicas;
  std::vector<std::vector<char>> slots;
  std::barrier<> sync;
};

class ThreadCollectives : public Collectives {
 public:
  ThreadCollectives(ThreadHub& hub, int rank) : Collectives(hub.shards, hub.replicas, rank), hub_(hub) {}

  void sum(Group g, Tensor& t) override {
    Tensor host = t.to(Device::CPU).clone();
    if (host.dtype() == DType::F32)
      combine<float>(g, host.data<float>(), host.numel(), [](float& a, float b) { a += b; });
    else
      combine<double>(g, host.data<double>(), host.numel(), [](double& a, double b) { a += b; });
    Tensor back = host.to(t.device());
    copy_(t, back);
  }
  void sum(Group g, double* v, int64_t n) override { combine<double>(g, v, n, [](double& a, double b) { a += b; }); }
  void max(Group g, double* v, int64_t n) override {
    combine<double>(g, v, n, [](double& a, double b) { a = b > a ? b : a; });
  }
  void sum(Group g, int64_t* v, int64_t n) override { combine<int64_t>(g, v, n, [](int64_t& a, int64_t b) { a += b; }); }
  void gather(Group g, const void* mine, int64_t bytes, void* out) override {
    post(mine, bytes);
    const std::vector<int> members = group(g);
    for (size_t q = 0; q < members.size(); ++q)
      std::memcpy(static_cast<char*>(out) + q * bytes, hub_.slots[members[q]].data(), bytes);
    count(g, double(bytes), true, 0.0);
    hub_.sync.arrive_and_wait();
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    post(data, rank() == root ? bytes : 0);
    if (rank() != root) std::memcpy(data, hub_.slots[root].data(), bytes);
    hub_.sync.arrive_and_wait();
  }
  void barrier() override { hub_.sync.arrive_and_wait(); }

 private:
  std::vector<int> group(Group g) const {
    std::vector<int> members;
    for (int r = 0; r < ranks(); ++r) {
      const bool same_replica = r / shards() == replica(), same_shard = r % shards() == shard();
      if (g == Group::All || (g == Group::Shards && same_replica) || (g == Group::Replicas && same_shard))
        members.push_back(r);
    }
    return members;
  }
  void post(const void* data, int64_t bytes) {
    hub_.slots[rank()].assign(static_cast<const char*>(data), static_cast<const char*>(data) + bytes);
    hub_.sync.arrive_and_wait();
  }
  template <typename T, typename Op>
  void combine(Group g, T* values, int64_t n, Op op) {
    post(values, n * int64_t(sizeof(T)));
    const std::vector<int> members = group(g);
    std::vector<T> out(n);
    std::memcpy(out.data(), hub_.slots[members[0]].data(), n * sizeof(T));
    for (size_t q = 1; q < members.size(); ++q) {
      const T* other = reinterpret_cast<const T*>(hub_.slots[members[q]].data());
      for (int64_t i = 0; i < n; ++i) op(out[i], other[i]);
    }
    std::memcpy(values, out.data(), n * sizeof(T));
    count(g, double(n * sizeof(T)), false, 0.0);
    hub_.sync.arrive_and_wait();
  }
  ThreadHub& hub_;
};

// Runs body on S x R threads (rank = replica * S + shard); rethrows the first exception. A rank that
// throws while others wait in a collective would hang them: bodies must not throw in tests that pass.
// While the ranks run, GEMMs on several threads at once must not switch OpenBLAS's one global
// thread count (tensor/threads.h): that raced with the other ranks' calls and crashed OpenBLAS 0.3.21
// now and then ("precompiled NUM_THREADS exceeded", then SIGSEGV or abort).
inline void run_ranks(int shards, int replicas, const std::function<void(Collectives&)>& body) {
  const BlasSharedScope shared_blas;
  ThreadHub hub(shards, replicas);
  std::vector<std::thread> threads;
  std::mutex lock;
  std::exception_ptr failure;
  for (int rank = 0; rank < shards * replicas; ++rank)
    threads.emplace_back([&, rank] {
      ThreadCollectives c(hub, rank);
      try {
        body(c);
      } catch (...) {
        std::lock_guard<std::mutex> guard(lock);
        if (!failure) failure = std::current_exception();
      }
    });
  for (std::thread& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace sae::testing
