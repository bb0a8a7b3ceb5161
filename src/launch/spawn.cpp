#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>
#include <thread>

#include "c10dtest/error.hpp"
#include "spawn.hpp"

#include "c10dtest/launch.hpp"

namespace c10dtest::detail {

namespace {

using Clock = std::chrono::steady_clock;

// A rank that exits while others still run gets this long before they are ended: ranks that
// finish normally leave within moments of each other.
constexpr std::chrono::milliseconds kExitGrace{5000};
// A rank that exits with c10dtest's "the run was ended" codes (3, 4) was told so, or found a
// dead peer: the others follow within moments, or are stuck.
constexpr std::chrono::milliseconds kEndedGrace{500};
// A configuration error (2) at start-up is usually every rank's: each waits up to 500 ms for the
// lifeline to explain it (a dead peer) before it exits, so the others get longer than that.
constexpr std::chrono::milliseconds kConfigGrace{2000};
constexpr std::chrono::milliseconds kTermGrace{2000};

volatile sig_atomic_t g_forward_signal = 0;
void on_forward(int sig) { g_forward_signal = sig; }

struct Rank {
  pid_t pid = -1;
  bool running = false;
  int status = 0;
};

std::string describe_status(int status) {
  std::ostringstream os;
  if (WIFSIGNALED(status)) {
    os << "was killed by signal " << WTERMSIG(status) << " (" << strsignal(WTERMSIG(status))
       << ")";
  } else {
    os << "exited with code " << WEXITSTATUS(status);
  }
  return os.str();
}

// Tells the surviving ranks what the supervisor saw, before it ends them: "<rank> <text>" in
// DIR/port.ended, beside the rendezvous file (rank 0 reports it, or the others when rank 0 is the
// one that died).
void leave_note(const std::string& dir, int rank, const std::string& text) {
  const std::string tmp = dir + "/port.ended.tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(f, "%d %s\n", rank, text.c_str());
  if (std::fclose(f) == 0) std::rename(tmp.c_str(), (dir + "/port.ended").c_str());
}

}  // namespace

int spawn_and_supervise(const std::vector<std::string>& args, int world_size,
                        std::string* first_fault) {
  std::string ignored_fault;
  std::string& fault = first_fault != nullptr ? *first_fault : ignored_fault;
  const std::string base = private_runtime_dir(process_env());
  std::string dir_template = base + "/spawn-XXXXXX";
  if (mkdtemp(dir_template.data()) == nullptr) {
    throw ConfigError("cannot create a rendezvous directory under " + base + ": " +
                      std::strerror(errno));
  }
  const std::string dir = dir_template;
  const std::string spawn_id = std::to_string(getpid()) + "-" +
                               std::to_string(std::random_device{}());

  struct sigaction sa {};
  sa.sa_handler = on_forward;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);

  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = getpid();
  std::vector<Rank> ranks(static_cast<std::size_t>(world_size));
  for (int r = 0; r < world_size; ++r) {
    const pid_t pid = fork();
    if (pid < 0) throw ConfigError(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      // No rank outlives its supervisor.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(kExitRankDied);
      setenv("C10DTEST_SPAWN_RANK", std::to_string(r).c_str(), 1);
      setenv("C10DTEST_SPAWN_WORLD_SIZE", std::to_string(world_size).c_str(), 1);
      setenv("C10DTEST_RDZV_DIR", dir.c_str(), 1);
      setenv("C10DTEST_SPAWN_ID", spawn_id.c_str(), 1);
      execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "c10dtest: rank %d: cannot exec %s: %s\n", r, argv[0],
                   std::strerror(errno));
      _exit(127);
    }
    ranks[static_cast<std::size_t>(r)] = {pid, true, 0};
  }

  int live = world_size;
  bool abnormal = false;
  bool ending = false;
  Clock::time_point kill_at = Clock::time_point::max();
  Clock::time_point hard_kill_at = Clock::time_point::max();
  auto end_others = [&](int sig) {
    for (auto& rk : ranks) {
      if (!rk.running) continue;
      kill(rk.pid, sig);
      // A stopped rank handles SIGTERM only once it runs again.
      if (sig != SIGKILL) kill(rk.pid, SIGCONT);
    }
  };

  while (live > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int r = 0; r < world_size; ++r) {
        Rank& rk = ranks[static_cast<std::size_t>(r)];
        if (rk.pid != pid) continue;
        rk.running = false;
        rk.status = status;
        --live;
        const bool signaled = WIFSIGNALED(status);
        if (!ending && live > 0 && (signaled || WEXITSTATUS(status) != 0)) {
          if (signaled) {
            std::fprintf(stderr,
                         "c10dtest: rank %d of %d (pid %d) %s; ending the other ranks\n", r,
                         world_size, static_cast<int>(pid), describe_status(status).c_str());
            fault = "rank " + std::to_string(r) + " of " + std::to_string(world_size) + " (pid " +
                    std::to_string(pid) + ") " + describe_status(status);
            leave_note(dir, r, describe_status(status));
            abnormal = true;
            ending = true;
            end_others(SIGTERM);
            hard_kill_at = Clock::now() + kTermGrace;
          } else if (kill_at == Clock::time_point::max()) {
            const int code = WEXITSTATUS(status);
            const bool ended = code == kExitTimeout || code == kExitRankDied;
            kill_at = Clock::now() + (code == kExitConfigError ? kConfigGrace
                                      : ended                   ? kEndedGrace
                                                                : kExitGrace);
            // c10dtest's own codes say what happened; any other comes from the code under test.
            if (code > kExitRankDied) leave_note(dir, r, describe_status(status));
          }
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    const auto now = Clock::now();
    if (g_forward_signal != 0 && !ending) {
      fault = std::string("the self-spawn supervisor received ") + strsignal(g_forward_signal) +
              ": the launcher or a user ended the run";
      ending = true;
      abnormal = true;
      end_others(g_forward_signal);
      hard_kill_at = now + kTermGrace;
    }
    if (!ending && now >= kill_at) {
      for (int r = 0; r < world_size; ++r) {
        const Rank& rk = ranks[static_cast<std::size_t>(r)];
        if (!rk.running && WIFEXITED(rk.status) && WEXITSTATUS(rk.status) != 0) {
          std::fprintf(stderr,
                       "c10dtest: rank %d of %d (pid %d) %s while other ranks kept running; "
                       "ending them\n",
                       r, world_size, static_cast<int>(rk.pid),
                       describe_status(rk.status).c_str());
          fault = "rank " + std::to_string(r) + " of " + std::to_string(world_size) + " (pid " +
                  std::to_string(rk.pid) + ") " + describe_status(rk.status) +
                  " while other ranks kept running";
          // 3 and 4 say that the rank ended itself because of another's fault: no culprit.
          if (WEXITSTATUS(rk.status) > kExitRankDied) {
            leave_note(dir, r, describe_status(rk.status) + " while the other ranks kept running");
          }
          break;
        }
      }
      abnormal = true;
      ending = true;
      end_others(SIGTERM);
      hard_kill_at = now + kTermGrace;
    }
    if (now >= hard_kill_at) {
      end_others(SIGKILL);
      hard_kill_at = Clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  if (abnormal) return kExitRankDied;
  int code = 0;
  for (const auto& rk : ranks) {
    // An exit code that is not c10dtest's (exit(7) in a test) is a rank that died.
    const int c = WIFEXITED(rk.status) ? WEXITSTATUS(rk.status) : kExitRankDied;
    code = std::max(code, c > kExitRankDied ? kExitRankDied : c);
  }
  return code;
}

}  // namespace c10dtest::detail
