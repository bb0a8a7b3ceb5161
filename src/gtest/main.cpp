#include "c10dtest/main.hpp"

#include <fcntl.h>
#include <strings.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "c10dtest/control_plane.hpp"
#include "c10dtest/error.hpp"
#include "c10dtest/world.hpp"
#include "internal.hpp"
#include "launch/spawn.hpp"
#include "lifeline.hpp"
#include "report.hpp"

namespace c10dtest {

namespace detail {
std::unique_ptr<World>& world_slot();
}  // namespace detail

namespace {

void redirect_output(const std::string& dir, int rank) {
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/rank-" + std::to_string(rank) + ".log";
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw ConfigError("--c10dtest_log_dir: cannot open " + path);
  std::fflush(stdout);
  std::fflush(stderr);
  dup2(fd, STDOUT_FILENO);
  dup2(fd, STDERR_FILENO);
  close(fd);
}

// Every rank must shuffle with the same seed: rank 0's (from --gtest_random_seed or the clock).
void agree_on_shuffle_seed(ControlPlane& cp, const RunOptions& options) {
  if (cp.rank() == 0) {
    int seed = GTEST_FLAG_GET(random_seed);
    if (seed == 0) {
      const auto now = std::chrono::system_clock::now().time_since_epoch();
      seed = static_cast<int>(
                 std::chrono::duration_cast<std::chrono::milliseconds>(now).count() % 99999) +
             1;
    }
    cp.set("random_seed", std::to_string(seed));
  }
  GTEST_FLAG_SET(random_seed, std::stoi(cp.get("random_seed", options.rendezvous_timeout)));
}

// The rank and world size the launcher's environment suggests, read before anything can fail, so
// that the crash handlers name the rank from the first moment; -1 when none is set.
// After a self-spawned run that the supervisor ended: when rank 0 left no report at all (it was
// still starting, or the fault came before it wrote one), the supervisor writes one that names
// what it saw, so that CI never finds a missing or empty report after a fault.
void complete_report_after_spawn(int world_size, const std::string& fault) {
  const std::string path = detail::Report::path_from_gtest_flag();
  if (path.empty() || fault.empty()) return;
  {
    std::ifstream in(path);
    const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (xml.find("<testcase") != std::string::npos) return;  // a rank reported
  }
  detail::Report report(path, true, 0, world_size);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  report.start_iteration(std::chrono::duration_cast<std::chrono::milliseconds>(now).count(),
                         GTEST_FLAG_GET(random_seed));
  report.begin("c10dtest", "start-up", "", 0, "start-up");
  report.write_fault("c10dtest: " + fault + "; the run ended before rank 0 reported any test "
                     "(written by the self-spawn supervisor)");
}

void guess_rank(int* rank, int* size) {
  const char* pairs[][2] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                            {"C10DTEST_SPAWN_RANK", "C10DTEST_SPAWN_WORLD_SIZE"},
                            {"PMI_RANK", "PMI_SIZE"},
                            {"SLURM_PROCID", "SLURM_NTASKS"},
                            {"RANK", "WORLD_SIZE"}};
  for (const auto& p : pairs) {
    const char* r = std::getenv(p[0]);
    const char* w = std::getenv(p[1]);
    if (r == nullptr || w == nullptr) continue;
    char* end = nullptr;
    const long rv = std::strtol(r, &end, 10);
    if (end == r || *end != '\0') continue;
    const long wv = std::strtol(w, &end, 10);
    if (end == w || *end != '\0') continue;
    *rank = static_cast<int>(rv);
    *size = static_cast<int>(wv);
    return;
  }
}

}  // namespace

int init(int* argc, char** argv) {
  const std::vector<std::string> original(argv, argv + *argc);
  {
    int rank = -1;
    int size = -1;
    guess_rank(&rank, &size);
    detail::install_fatal_signal_handlers(rank, size);
    detail::mark_rank_process(true);
  }
  detail::Report* report = nullptr;
  try {
    const EnvLookup env = process_env();
    const RunOptions options = parse_run_options(argc, argv, env);
    ::testing::InitGoogleMock(argc, argv);
    const LaunchInfo launch = detect_launch(env, options.spawn_world_size);
    if (launch.launcher == Launcher::kSelfSpawnParent) {
      detail::mark_rank_process(false);
      std::string fault;
      const int code = detail::spawn_and_supervise(original, launch.world_size, &fault);
      complete_report_after_spawn(launch.world_size, fault);
      return code;
    }
    // A death test's child re-runs this binary inside one rank: it must not join the world.
    if (!GTEST_FLAG_GET(internal_run_death_test).empty()) {
      detail::mark_rank_process(false);
      return -1;
    }
    if (GTEST_FLAG_GET(list_tests)) {
      detail::mark_rank_process(false);
      if (launch.rank != 0 && std::freopen("/dev/null", "w", stdout) == nullptr) return 1;
      return -1;
    }
    if (!options.log_dir.empty() && launch.rank != 0) redirect_output(options.log_dir, launch.rank);
    // gtest colours "auto" output when stdout is a terminal. MPI launchers and srun give every
    // rank a pseudo-terminal whatever their own output is (a CI log, a file), so there "auto"
    // means no colour; "yes" (or GTEST_COLOR=yes) still colours, as gtest does.
    if ((launch.launcher == Launcher::kOpenMPI || launch.launcher == Launcher::kMPICH ||
         launch.launcher == Launcher::kSlurm) &&
        strcasecmp(GTEST_FLAG_GET(color).c_str(), "auto") == 0) {
      GTEST_FLAG_SET(color, "no");
    }
    // A peer that drops its group closes its sockets; Gloo writes (writev, no MSG_NOSIGNAL) to
    // such a socket would kill this rank with SIGPIPE instead of failing the collective with
    // "Connection closed by peer". Python ignores SIGPIPE for the same reason.
    std::signal(SIGPIPE, SIG_IGN);
    detail::install_fatal_signal_handlers(launch.rank, launch.world_size);
    detail::register_main_thread();
    detail::set_current_activity("during start-up");

    // One report file, which holds every rank's failures: rank 0 writes it as tests finish (an
    // empty one from now on), and a survivor completes it when the run ends by a fault.
    report = new detail::Report(detail::Report::path_from_gtest_flag(), launch.rank == 0,
                                launch.rank, launch.world_size);
    report->write();
    auto& lifeline = detail::Lifeline::start(launch, *report, options.heartbeat_timeout);

    auto& slot = detail::world_slot();
    slot.reset(new World(launch, options));
    slot->report_ = report;
    slot->lifeline_ = &lifeline;
    slot->start();
    agree_on_shuffle_seed(slot->control(), options);

    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    // gtest's printer (pretty or brief, as its flags say) prints on rank 0 only, fed by c10dtest
    // with every rank's results.
    std::unique_ptr<::testing::TestEventListener> printer(
        listeners.Release(listeners.default_result_printer()));
    if (launch.rank != 0) printer.reset();
    // gtest would write its XML once, at the end, from every rank; c10dtest's report replaces
    // it. Another format (JSON) stays gtest's, written by rank 0 only.
    if (launch.rank != 0 || report->enabled()) {
      delete listeners.Release(listeners.default_xml_generator());
    }
    listeners.Append(new detail::DistributedListener(*slot, *slot->watchdog_, std::move(printer)));
    return -1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "c10dtest: %s\n", e.what());
    std::fflush(stderr);
    // Rank 0 writes the report; so does a rank that never reached rank 0, which may be the one
    // that stopped or died (each writes a whole file and renames it into place). At once, and
    // again after the wait below: a launcher that ends the job when another rank exits may kill
    // this one within that wait.
    detail::Lifeline* lifeline = detail::Lifeline::get();
    const bool writes = report != nullptr &&
                        (report->writer() || (lifeline != nullptr && !lifeline->reached_rank_zero()));
    const std::string cause = std::string("c10dtest: ") + e.what();
    if (writes) report->write_provisional_fault(cause);
    // A start-up that failed because a rank died or stopped is reported by the lifeline: let it
    // name the rank before this error is taken for the cause.
    if (lifeline != nullptr) lifeline->await_explanation(std::chrono::milliseconds(500));
    if (writes) report->write_fault(cause);
    // Each rank stops with its own reason: closing the lifeline now is no death.
    if (detail::Lifeline* lifeline = detail::Lifeline::get()) lifeline->say_bye();
    return kExitConfigError;
  }
}

int finalize(int exit_code) {
  auto& slot = detail::world_slot();
  if (!slot) return exit_code;
  const int code = slot->stop(exit_code);
  slot.reset();
  std::fflush(stdout);
  std::fflush(stderr);
  return code;
}

int run_main(int argc, char** argv) {
  const int done = init(&argc, argv);
  if (done >= 0) return done;
  return finalize(RUN_ALL_TESTS());
}

}  // namespace c10dtest
