#include "c10dtest/launch.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "c10dtest/error.hpp"

namespace c10dtest {

const char* to_string(Launcher launcher) {
  switch (launcher) {
    case Launcher::kBare: return "bare";
    case Launcher::kOpenMPI: return "OpenMPI";
    case Launcher::kMPICH: return "MPICH";
    case Launcher::kSlurm: return "Slurm";
    case Launcher::kTorchrun: return "torchrun";
    case Launcher::kSelfSpawnParent: return "self-spawn parent";
    case Launcher::kSelfSpawnChild: return "self-spawn";
  }
  return "unknown";
}

std::string LaunchInfo::describe() const {
  std::ostringstream os;
  os << "rank " << rank << " of " << world_size << " (" << to_string(launcher) << ", local rank "
     << local_rank << ")";
  return os.str();
}

EnvLookup process_env() {
  return [](const char* name) -> const char* { return std::getenv(name); };
}

namespace detail {

int parse_int(const std::string& text, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || end == nullptr || *end != '\0' || errno == ERANGE || value < -(1L << 30) ||
      value > (1L << 30)) {
    throw ConfigError(what + "='" + text + "' is not an integer");
  }
  return static_cast<int>(value);
}

}  // namespace detail

namespace {

struct EnvReader {
  const EnvLookup& env;

  const char* raw(const char* name) const { return env(name); }
  bool has(const char* name) const {
    const char* v = env(name);
    return v != nullptr && *v != '\0';
  }
  std::string str(const char* name, const std::string& fallback = "") const {
    const char* v = env(name);
    return (v != nullptr && *v != '\0') ? std::string(v) : fallback;
  }
  int integer(const char* name) const {
    if (!has(name)) throw ConfigError(std::string(name) + " is not set");
    return detail::parse_int(env(name), name);
  }
  int integer_or(const char* name, int fallback) const {
    return has(name) ? integer(name) : fallback;
  }
};

void check_range(const LaunchInfo& info, const char* rank_var, const char* size_var) {
  if (info.world_size < 1) {
    throw ConfigError(std::string(size_var) + "=" + std::to_string(info.world_size) +
                      " must be at least 1");
  }
  if (info.rank < 0 || info.rank >= info.world_size) {
    throw ConfigError(std::string(rank_var) + "=" + std::to_string(info.rank) + " is not below " +
                      size_var + "=" + std::to_string(info.world_size));
  }
  if (info.local_rank < 0 || info.local_rank >= info.local_world_size ||
      info.local_world_size > info.world_size) {
    throw ConfigError("local rank " + std::to_string(info.local_rank) + " of " +
                      std::to_string(info.local_world_size) + " does not fit " + size_var + "=" +
                      std::to_string(info.world_size));
  }
}

// A stable identifier of the launching process on this host: its pid and start time, so a
// reused pid never names an older job.
std::string parent_job_id() {
  const pid_t ppid = getppid();
  std::ifstream stat("/proc/" + std::to_string(ppid) + "/stat");
  std::string line;
  std::getline(stat, line);
  std::string start = "0";
  const auto close = line.rfind(')');
  if (close != std::string::npos) {
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    // Fields after the command name start at field 3 (state); starttime is field 22.
    for (int i = 3; i <= 22 && rest >> field; ++i) {
      if (i == 22) start = field;
    }
  }
  return "ppid" + std::to_string(ppid) + "-" + start;
}

// Chooses the rendezvous for a launcher that does not name one itself.
void choose_rendezvous(LaunchInfo& info, const EnvReader& env, bool single_host) {
  if (info.world_size == 1) {
    info.rendezvous = RendezvousKind::kNone;
    return;
  }
  if (env.has("MASTER_ADDR") && env.has("MASTER_PORT")) {
    info.rendezvous = RendezvousKind::kAddress;
    info.master_addr = env.str("MASTER_ADDR");
    info.master_port = env.integer("MASTER_PORT");
    return;
  }
  if (!single_host) {
    throw ConfigError(std::string("the ") + to_string(info.launcher) +
                      " launch spans several hosts; set MASTER_ADDR and MASTER_PORT to an "
                      "address of the host of rank 0 that every host can reach");
  }
  info.rendezvous = RendezvousKind::kFile;
  info.rendezvous_file = private_runtime_dir(env.env) + "/" + info.job_id + ".port";
}

}  // namespace

std::string private_runtime_dir(const EnvLookup& lookup) {
  const EnvReader env{lookup};
  std::string base = env.str("TMPDIR", "/tmp");
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  const std::string dir = base + "/c10dtest-" + std::to_string(getuid());
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw ConfigError("cannot create " + dir + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0) {
    throw ConfigError("cannot stat " + dir + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 0077) != 0) {
    throw ConfigError(dir + " must be a directory owned by uid " + std::to_string(getuid()) +
                      " with mode 0700; refusing to rendezvous through it");
  }
  return dir;
}

LaunchInfo detect_launch(const EnvLookup& lookup, int spawn_world_size) {
  const EnvReader env{lookup};
  LaunchInfo info;
  bool single_host = true;
  const char* rank_var = "";
  const char* size_var = "";

  if (env.has("C10DTEST_SPAWN_RANK")) {
    info.launcher = Launcher::kSelfSpawnChild;
    rank_var = "C10DTEST_SPAWN_RANK";
    size_var = "C10DTEST_SPAWN_WORLD_SIZE";
    info.rank = env.integer(rank_var);
    info.world_size = env.integer(size_var);
    info.local_rank = info.rank;
    info.local_world_size = info.world_size;
    check_range(info, rank_var, size_var);
    if (!env.has("C10DTEST_RDZV_DIR")) throw ConfigError("C10DTEST_RDZV_DIR is not set");
    info.rendezvous = RendezvousKind::kFile;
    info.rendezvous_file = env.str("C10DTEST_RDZV_DIR") + "/port";
    info.job_id = "spawn-" + env.str("C10DTEST_SPAWN_ID", "0");
    return info;
  }

  if (env.has("OMPI_COMM_WORLD_RANK")) {
    info.launcher = Launcher::kOpenMPI;
    rank_var = "OMPI_COMM_WORLD_RANK";
    size_var = "OMPI_COMM_WORLD_SIZE";
    info.rank = env.integer(rank_var);
    info.world_size = env.integer(size_var);
    info.local_rank = env.integer_or("OMPI_COMM_WORLD_LOCAL_RANK", info.rank);
    info.local_world_size = env.integer_or("OMPI_COMM_WORLD_LOCAL_SIZE", info.world_size);
    info.job_id = "ompi-" + env.str("OMPI_MCA_ess_base_jobid",
                                    env.str("PMIX_NAMESPACE", parent_job_id()));
  } else if (env.has("PMI_RANK")) {
    info.launcher = Launcher::kMPICH;
    rank_var = "PMI_RANK";
    size_var = "PMI_SIZE";
    info.rank = env.integer(rank_var);
    info.world_size = env.integer(size_var);
    info.local_rank = env.integer_or("MPI_LOCALRANKID", info.rank);
    info.local_world_size = env.integer_or("MPI_LOCALNRANKS", info.world_size);
    info.job_id = "mpich-" + env.str("PMIX_NAMESPACE", parent_job_id());
  } else if (env.has("SLURM_PROCID") && env.has("SLURM_STEP_ID")) {
    info.launcher = Launcher::kSlurm;
    rank_var = "SLURM_PROCID";
    size_var = "SLURM_NTASKS";
    info.rank = env.integer(rank_var);
    info.world_size = env.integer(size_var);
    info.local_rank = env.integer_or("SLURM_LOCALID", info.rank);
    const int nodes = env.integer_or("SLURM_STEP_NUM_NODES", env.integer_or("SLURM_NNODES", 1));
    single_host = nodes <= 1;
    // Slurm gives tasks per node only as a pattern ("2(x2)"); one host holds them all.
    info.local_world_size = single_host ? info.world_size : info.local_rank + 1;
    info.job_id = "slurm-" + env.str("SLURM_JOB_ID", "0") + "." + env.str("SLURM_STEP_ID");
  } else if (env.has("RANK") && env.has("WORLD_SIZE")) {
    info.launcher = Launcher::kTorchrun;
    rank_var = "RANK";
    size_var = "WORLD_SIZE";
    info.rank = env.integer(rank_var);
    info.world_size = env.integer(size_var);
    info.local_rank = env.integer_or("LOCAL_RANK", info.rank);
    info.local_world_size = env.integer_or("LOCAL_WORLD_SIZE", info.world_size);
    check_range(info, rank_var, size_var);
    if (info.world_size > 1) {
      if (!env.has("MASTER_ADDR") || !env.has("MASTER_PORT")) {
        throw ConfigError("a torchrun-style launch (RANK=" + std::to_string(info.rank) +
                          ", WORLD_SIZE=" + std::to_string(info.world_size) +
                          ") needs MASTER_ADDR and MASTER_PORT");
      }
      info.rendezvous = RendezvousKind::kAddress;
      info.master_addr = env.str("MASTER_ADDR");
      info.master_port = env.integer("MASTER_PORT");
      if (info.master_port <= 0 || info.master_port > 65535) {
        throw ConfigError("MASTER_PORT=" + env.str("MASTER_PORT") + " is not a TCP port");
      }
      // torchrun's agent already serves a store on MASTER_PORT.
      info.store_is_external = env.str("TORCHELASTIC_USE_AGENT_STORE") == "True";
    }
    info.job_id = "torchrun-" + env.str("TORCHELASTIC_RUN_ID", info.master_addr + "-" +
                                        std::to_string(info.master_port)) +
                  "-" + env.str("TORCHELASTIC_RESTART_COUNT", "0");
    return info;
  }

  int spawn = spawn_world_size;
  if (spawn == 0 && env.has("C10DTEST_WORLD_SIZE")) {
    spawn = env.integer("C10DTEST_WORLD_SIZE");
  }
  if (spawn < 0) throw ConfigError("C10DTEST_WORLD_SIZE must be at least 1");

  if (info.launcher != Launcher::kBare) {
    check_range(info, rank_var, size_var);
    if (spawn != 0 && spawn != info.world_size) {
      throw ConfigError("self-spawn of " + std::to_string(spawn) + " ranks was asked for, but " +
                        to_string(info.launcher) + " already started " +
                        std::to_string(info.world_size) +
                        "; drop --c10dtest_world_size / C10DTEST_WORLD_SIZE or make them agree");
    }
    single_host = single_host && info.local_world_size == info.world_size;
    choose_rendezvous(info, env, single_host);
    return info;
  }

  if (spawn > 1) {
    info.launcher = Launcher::kSelfSpawnParent;
    info.world_size = spawn;
    info.local_world_size = spawn;
  }
  return info;
}

}  // namespace c10dtest
