// MpiWorld and the MPI Collectives (see mpi_world.h). Built with MPI when CMake found it
// (SAE_WITH_MPI); otherwise only the refusal is here.
#include "sae/dist/mpi_world.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "sae/dist/nccl_groups.h"
#include "tensor/ops.h"

#if SAE_WITH_MPI
#include <mpi.h>
#endif

namespace sae {

bool launched_by_mpirun() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

#if !SAE_WITH_MPI

bool mpi_built() { return false; }

std::unique_ptr<MpiWorld> start_mpi_world(bool shards_given, int*, char***) {
  if (shards_given)
    throw UsageError("--shards needs a build with MPI (scripts/install-deps.sh installs Open MPI; then rebuild)");
  if (launched_by_mpirun())
    throw UsageError("launched by mpirun, but this build has no MPI (scripts/install-deps.sh installs Open MPI; "
                     "then rebuild)");
  return nullptr;
}

#else

bool mpi_built() { return true; }

namespace {

void check_mpi(int status, const char* what) {
  if (status != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(status, text, &length);
    throw Error(cat("MPI: ", what, ": ", std::string(text, length)));
  }
}

MPI_Datatype mpi_type(DType dtype) {
  if (dtype == DType::F32) return MPI_FLOAT;
  if (dtype == DType::F64) return MPI_DOUBLE;
  throw Error(cat("MPI: cannot sum a tensor of ", dtype_name(dtype)));
}

// MPI counts are int: big buffers go in pieces of 2^30 elements.
constexpr int64_t kPiece = int64_t(1) << 30;

// Test hook: SAE_TEST_GATHER_PIECE_BYTES=N gathers more than N bytes a rank in pieces of N
// (tests/dist: the pieced path gives the same bytes as one call).
int64_t gather_piece_bytes(int64_t normal) {
  const char* test = std::getenv("SAE_TEST_GATHER_PIECE_BYTES");
  return test ? std::max<int64_t>(1, std::atoll(test)) : normal;
}

class MpiCollectives : public Collectives {
 public:
  // nccl: every rank has a GPU of its own (NCCL refuses two ranks on one device).
  MpiCollectives(int shards, int replicas, int rank, Device device, bool nccl)
      : Collectives(shards, replicas, rank), device_(device) {
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &all_), "MPI_Comm_dup");
    check_mpi(MPI_Comm_split(MPI_COMM_WORLD, replica(), shard(), &shards_), "MPI_Comm_split (shards)");
    check_mpi(MPI_Comm_split(MPI_COMM_WORLD, shard(), replica(), &replicas_), "MPI_Comm_split (replicas)");
    if (device != Device::CPU && nccl_built() && nccl) {
      nccl_ = std::make_unique<NcclGroups>();
      for (Group g : {Group::Shards, Group::Replicas, Group::All}) {
        NcclId id{};
        if (index_in(g) == 0) id = nccl_unique_id();
        check_mpi(MPI_Bcast(id.bytes, sizeof id.bytes, MPI_BYTE, 0, comm(g)), "MPI_Bcast (NCCL id)");
        nccl_->join(static_cast<int>(g), id, size(g), index_in(g));
      }
    }
  }
  ~MpiCollectives() override {
    nccl_.reset();
    MPI_Comm_free(&shards_);
    MPI_Comm_free(&replicas_);
    MPI_Comm_free(&all_);
  }

  void sum(Group g, Tensor& t) override {
    const auto begin = std::chrono::steady_clock::now();
    if (t.device() != Device::CPU && nccl_) {
      nccl_->sum(static_cast<int>(g), t.raw(), t.numel(), t.dtype() == DType::F64);
    } else if (t.device() != Device::CPU) {  // through the host
      Tensor host = t.to(Device::CPU);
      sum_host(g, host);
      Tensor back = host.to(t.device());
      copy_(t, back);
    } else {
      sum_host(g, t);
    }
    count(g, double(t.nbytes()), false, seconds_since(begin));
  }
  void sum(Group g, double* values, int64_t n) override { reduce(g, values, n, MPI_DOUBLE, MPI_SUM); }
  void max(Group g, double* values, int64_t n) override { reduce(g, values, n, MPI_DOUBLE, MPI_MAX); }
  void sum(Group g, int64_t* values, int64_t n) override { reduce(g, values, n, MPI_INT64_T, MPI_SUM); }
  // Up to 2^30 bytes a rank in one call; more (AuxK's candidates at large batches once many latents
  // are dead) in pieces through a staging buffer of ranks x 2^26 bytes, each rank's piece then put
  // at its place in `out`.
  void gather(Group g, const void* mine, int64_t bytes, void* out) override {
    const auto begin = std::chrono::steady_clock::now();
    const int64_t whole = gather_piece_bytes(kPiece), piece = gather_piece_bytes(int64_t(1) << 26);
    if (bytes <= whole) {
      check_mpi(MPI_Allgather(mine, static_cast<int>(bytes), MPI_BYTE, out, static_cast<int>(bytes), MPI_BYTE, comm(g)),
                "MPI_Allgather");
    } else {
      const int ranks = size(g);
      std::vector<char> staging(static_cast<size_t>(ranks) * static_cast<size_t>(piece));
      for (int64_t at = 0; at < bytes; at += piece) {
        const int64_t length = std::min(piece, bytes - at);
        check_mpi(MPI_Allgather(static_cast<const char*>(mine) + at, static_cast<int>(length), MPI_BYTE, staging.data(),
                                static_cast<int>(length), MPI_BYTE, comm(g)),
                  "MPI_Allgather");
        for (int r = 0; r < ranks; ++r)
          std::memcpy(static_cast<char*>(out) + r * bytes + at, staging.data() + r * length, static_cast<size_t>(length));
      }
    }
    count(g, double(bytes), true, seconds_since(begin));
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    if (bytes > kPiece) throw Error(cat("MPI: a broadcast of ", bytes, " bytes (at most 2^30)"));
    check_mpi(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, all_), "MPI_Bcast");
  }
  void barrier() override { check_mpi(MPI_Barrier(all_), "MPI_Barrier"); }

 private:
  static double seconds_since(std::chrono::steady_clock::time_point begin) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  }
  MPI_Comm comm(Group g) const { return g == Group::Shards ? shards_ : g == Group::Replicas ? replicas_ : all_; }
  void sum_host(Group g, Tensor& t) {
    const MPI_Datatype type = mpi_type(t.dtype());
    char* data = static_cast<char*>(t.raw());
    const size_t element = t.nbytes() / std::max<int64_t>(t.numel(), 1);
    for (int64_t at = 0; at < t.numel(); at += kPiece) {
      const int64_t n = std::min(kPiece, t.numel() - at);
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + at * element, static_cast<int>(n), type, MPI_SUM, comm(g)),
                "MPI_Allreduce");
    }
  }
  void reduce(Group g, void* values, int64_t n, MPI_Datatype type, MPI_Op op) {
    const auto begin = std::chrono::steady_clock::now();
    if (n > kPiece) throw Error("MPI: too many host values in one reduction");
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, values, static_cast<int>(n), type, op, comm(g)), "MPI_Allreduce");
    count(g, double(n * 8), false, seconds_since(begin));
  }

  Device device_;
  MPI_Comm shards_, replicas_, all_;
  std::unique_ptr<NcclGroups> nccl_;
};

// The line rank 0 prints when mpirun stops it (another rank died); set before the handler is.
char termination_line[512];
volatile sig_atomic_t termination_announced = 1;  // 0 once this rank has printed the job's error itself

extern "C" void on_sigterm(int) {
  if (termination_announced) {
    const ssize_t ignored = ::write(STDERR_FILENO, termination_line, std::strlen(termination_line));
    (void)ignored;
  }
  ::_exit(143);
}

class OpenMpiWorld : public MpiWorld {
 public:
  OpenMpiWorld(int* argc, char*** argv) : launched_(launched_by_mpirun()) {  // (MPI_Init sets mpirun's variables)
    int started = 0;
    MPI_Initialized(&started);
    if (!started) check_mpi(MPI_Init(argc, argv), "MPI_Init");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
    // Ranks on one machine take its GPUs in turn (before anything touches CUDA).
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    int local_rank = 0, local_ranks = 1;
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_size(local, &local_ranks);
    MPI_Comm_free(&local);
    const int gpus = cuda_select_device_for_rank(local_rank);
    int own_gpu = gpus >= local_ranks ? 1 : 0;  // on every machine: NCCL can carry device tensors
    MPI_Allreduce(MPI_IN_PLACE, &own_gpu, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    own_gpu_ = own_gpu == 1;
  }
  ~OpenMpiWorld() override {
    grids_.clear();
    int finished = 0;
    MPI_Finalized(&finished);
    if (!finished) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int ranks() const override { return ranks_; }
  void check_grid(int shards) const override {
    if (shards < 1 || ranks_ % shards != 0)
      throw UsageError(launched_
                           ? cat("--shards ", shards, " does not divide the ", ranks_, " ranks mpirun started (ranks = "
                                 "shards x data-parallel replicas)")
                           : cat("--shards ", shards, " needs mpirun -np P with P a multiple of ", shards,
                                 " (this process runs alone)"));
  }
  Collectives& collectives(int shards, Device device) override {
    check_grid(shards);
    const auto key = std::make_pair(shards, static_cast<int>(device));
    auto found = grids_.find(key);
    if (found == grids_.end())
      found = grids_.emplace(key, std::make_unique<MpiCollectives>(shards, ranks_ / shards, rank_, device, own_gpu_))
                  .first;
    return *found->second;
  }
  [[noreturn]] void fail(const std::string& program, const std::exception& e, int code) override {
    std::fprintf(stderr, "%s: error: rank %d of %d: %s\n", program.c_str(), rank_, ranks_, error_text(e).c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    termination_announced = 0;  // this rank's line is the job's: no second one when the job is stopped
    // The whole job ends under any launcher (srun's default leaves the others waiting for this
    // rank after a plain exit); alone, a plain exit (MPI_Abort would add its banner to the line).
    if (ranks_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
    ::_exit(code);
  }
  void announce_termination(const std::string& program) override {
    if (rank_ != 0) return;
    std::snprintf(termination_line, sizeof termination_line,
                  "%s: error: the job was stopped (another rank failed or died: its line or mpirun's says why); "
                  "checkpoints already complete are kept (--resume continues from the last, once the cause is "
                  "fixed)\n",
                  program.c_str());
    struct sigaction action {};
    action.sa_handler = on_sigterm;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
  }
  void error_reported() override { termination_announced = 0; }

 private:
  bool launched_;
  bool own_gpu_ = false;  // every rank has a GPU of its own: device tensors go through NCCL
  int rank_ = 0, ranks_ = 1;
  std::map<std::pair<int, int>, std::unique_ptr<MpiCollectives>> grids_;
};

}  // namespace

std::unique_ptr<MpiWorld> start_mpi_world(bool shards_given, int* argc, char*** argv) {
  if (!shards_given && !launched_by_mpirun()) return nullptr;
  return std::make_unique<OpenMpiWorld>(argc, argv);
}

#endif

}  // namespace sae
