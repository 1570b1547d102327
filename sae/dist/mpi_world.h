// The ranks of a distributed run over MPI (docs/distributed.md): MpiWorld starts MPI (when the
// process was launched by mpirun, or when --shards asks for it), knows this rank and the number of
// ranks, makes the shards x replicas grid's Collectives (MPI for host buffers; NCCL, bootstrapped
// over MPI, for device tensors when the build has it) and turns failures into one line and a
// non-zero exit from every rank:
//   Collectives::agree(phase) (collectives.h): a check that fails on one rank stops all of them at
//     the same point, without a hang; rank 0 alone prints it, every rank exits with its code.
//   fail(e): an error on one rank inside the training loop: the rank prints its one line and ends
//     the job (MPI_Abort); mpirun stops every other rank (SIGTERM), and rank 0 prints one line
//     saying so.
// Without MPI in the build (SAE_WITH_MPI off) MpiWorld cannot be made: start_mpi_world throws a
// UsageError when --shards is given, and returns null otherwise.
// Library code: throws, never exits, except fail(), whose purpose is to end this rank at once.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "sae/arch/collectives.h"
#include "tensor/error.h"

namespace sae {

bool mpi_built();   // the build has MPI
bool nccl_built();  // the build has NCCL (and CUDA)
// Launched as one of several MPI ranks (mpirun's environment: OMPI_COMM_WORLD_SIZE, PMI_SIZE,
// PMIX_RANK or MPI_LOCALNRANKS).
bool launched_by_mpirun();

class MpiWorld {
 public:
  virtual ~MpiWorld() = default;
  virtual int rank() const = 0;
  virtual int ranks() const = 0;
  // The grid of `shards` x ranks()/shards (UsageError when shards does not divide the ranks).
  // device: where the step's tensors live (CUDA: NCCL when built, else copies through the host).
  virtual Collectives& collectives(int shards, Device device) = 0;
  // collectives()'s own check alone (no collective call: for an agree phase before the grid is made).
  virtual void check_grid(int shards) const = 0;
  [[noreturn]] virtual void fail(const std::string& program, const std::exception& e, int code) = 0;
  // On rank 0: a SIGTERM (mpirun stopping the job after another rank died) prints one line naming
  // the program before this rank exits.
  virtual void announce_termination(const std::string& program) = 0;
  // Rank 0 has printed the job's one error line: a SIGTERM from now on (mpirun stopping the ranks
  // that are still finishing) ends this rank without a second line.
  virtual void error_reported() = 0;
};

// MPI when launched by mpirun or when shards_given (then UsageError without MPI in the build); null
// when neither. Call once, before any other thread starts.
std::unique_ptr<MpiWorld> start_mpi_world(bool shards_given, int* argc, char*** argv);

}  // namespace sae
