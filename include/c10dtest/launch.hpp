// Launch layer: who am I (rank, world size, local rank) and how do the ranks meet.
//
// Read from the launcher's environment, first match wins:
//   self-spawned child  C10DTEST_SPAWN_RANK / C10DTEST_SPAWN_WORLD_SIZE / C10DTEST_RDZV_DIR
//   OpenMPI             OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
//   MPICH (Hydra)       PMI_RANK / PMI_SIZE / MPI_LOCALRANKID / MPI_LOCALNRANKS
//   Slurm (srun)        SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NNODES
//   torchrun-style      RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE
//   self-spawn parent   --c10dtest_world_size=N or C10DTEST_WORLD_SIZE=N (N > 1)
//   bare                world size 1
//
// Example:
//   auto info = c10dtest::detect_launch(c10dtest::process_env(), /*spawn_world_size=*/0);
//   std::cout << info.describe();  // "rank 2 of 4 (OpenMPI, local rank 2)"
#pragma once

#include <functional>
#include <string>

namespace c10dtest {

enum class Launcher {
  kBare,              // no launcher: world size 1
  kOpenMPI,
  kMPICH,
  kSlurm,
  kTorchrun,
  kSelfSpawnParent,   // this process forks the ranks and supervises them
  kSelfSpawnChild,    // a rank forked by a self-spawn parent
};

const char* to_string(Launcher launcher);

// How the ranks find rank 0's control-plane store.
enum class RendezvousKind {
  kNone,     // world size 1 or self-spawn parent: nothing to meet
  kFile,     // one host: rank 0 serves on an ephemeral loopback port and publishes it in a
             // private (0700) directory; the others read it there
  kAddress,  // MASTER_ADDR:MASTER_PORT given by the environment (rank 0 serves there, or the
             // torchrun agent already does)
};

struct LaunchInfo {
  Launcher launcher = Launcher::kBare;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;

  RendezvousKind rendezvous = RendezvousKind::kNone;
  // kFile: the file rank 0 writes its port to (the directory is created 0700 if missing).
  std::string rendezvous_file;
  // kAddress: where the store is.
  std::string master_addr;
  int master_port = 0;
  // kAddress: the store already exists (torchrun agent); rank 0 must not serve it.
  bool store_is_external = false;
  // Identifies this job; used as the control-plane key prefix.
  std::string job_id;

  // "rank 2 of 4 (OpenMPI, local rank 2)".
  std::string describe() const;
};

// Returns the value of an environment variable, or nullptr when unset.
using EnvLookup = std::function<const char*(const char*)>;

// The real process environment.
EnvLookup process_env();

// Reads the launch from `env`. `spawn_world_size` is the value of --c10dtest_world_size (0 when the
// flag was not given; C10DTEST_WORLD_SIZE is read from `env`). Throws ConfigError naming the variable
// when a value is missing, not an integer or out of range, or when self-spawn is asked for under a
// launcher that started a different number of ranks.
LaunchInfo detect_launch(const EnvLookup& env, int spawn_world_size);

// The per-user private directory for rendezvous files: $TMPDIR (or /tmp)/c10dtest-<uid>, created
// with mode 0700. Throws ConfigError if it exists but is not a directory owned by this user with
// mode 0700.
std::string private_runtime_dir(const EnvLookup& env);

namespace detail {
// Strict integer parse: "12" -> 12; "", "1x", "99999999999" -> throws ConfigError naming `what`.
int parse_int(const std::string& text, const std::string& what);
}  // namespace detail

}  // namespace c10dtest
