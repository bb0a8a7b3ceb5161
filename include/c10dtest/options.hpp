// Run-wide settings of c10dtest, from --c10dtest_* flags (which win) or C10DTEST_* variables.
//
//   --c10dtest_world_size=N          self-spawn N ranks when no launcher started the binary
//   --c10dtest_timeout=SECONDS       per-test watchdog (default 300); C10DTEST_TIMEOUT
//   --c10dtest_collective_timeout=S  timeout of the process groups' collectives (default: 4/5 of
//                                    the test timeout, so a stuck collective fails before the
//                                    watchdog fires); C10DTEST_COLLECTIVE_TIMEOUT
//   --c10dtest_heartbeat_timeout=S   a rank silent this long is declared dead (default 15)
//   --c10dtest_rendezvous_timeout=S  how long ranks wait for each other at start and end (60)
//   --c10dtest_backend=gloo|nccl     backend of the world group (default gloo); C10DTEST_BACKEND
//   --c10dtest_device=cpu|cuda       what DistributedTest::device() returns (default: cpu with
//                                    gloo, cuda with nccl). cuda with gloo runs several ranks on
//                                    one GPU: rank r uses GPU (local rank % GPUs visible).
//                                    C10DTEST_DEVICE
//   --c10dtest_log_dir=DIR           ranks > 0 write their stdout/stderr to DIR/rank-N.log
//   --c10dtest_seed=N                mixed into every per-test seed (default 0)
//   --c10dtest_verify_strategy=S     auto, shard-local or gather: how state-dict verifications
//                                    that ask for kAuto run (default auto)
//
// Seconds may have a fraction ("0.5").
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "c10dtest/launch.hpp"

namespace c10dtest {

// Exit codes shared by every rank of a run.
inline constexpr int kExitTestsFailed = 1;  // a test failed on some rank (gtest's own code)
inline constexpr int kExitConfigError = 2;  // bad flags or environment, rendezvous failed,
                                            // test lists differ between ranks
inline constexpr int kExitTimeout = 3;      // the watchdog ended the run
inline constexpr int kExitRankDied = 4;     // a rank crashed, was killed or lost the control plane

inline constexpr std::chrono::milliseconds kDefaultTestTimeout{300000};
inline constexpr std::chrono::milliseconds kDefaultHeartbeatTimeout{15000};
inline constexpr std::chrono::milliseconds kDefaultRendezvousTimeout{60000};

struct RunOptions {
  int spawn_world_size = 0;
  std::chrono::milliseconds test_timeout = kDefaultTestTimeout;
  // Zero means "4/5 of test_timeout".
  std::chrono::milliseconds collective_timeout{0};
  std::chrono::milliseconds heartbeat_timeout = kDefaultHeartbeatTimeout;
  std::chrono::milliseconds rendezvous_timeout = kDefaultRendezvousTimeout;
  std::string backend = "gloo";
  // "cpu", "cuda", or "" for the backend's own (cpu for gloo, cuda for nccl).
  std::string device;
  std::string log_dir;
  std::uint64_t seed = 0;
  std::string verify_strategy = "auto";

  std::chrono::milliseconds effective_collective_timeout() const;
};

// Reads C10DTEST_* variables from `env`, then removes every --c10dtest_* flag from argv (they
// override the variables). Throws ConfigError naming an unknown flag or a bad value.
RunOptions parse_run_options(int* argc, char** argv, const EnvLookup& env);

}  // namespace c10dtest
