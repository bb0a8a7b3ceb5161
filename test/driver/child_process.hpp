// Runs child suites for the driver tests: a command through sh, its exit code and output.
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>

namespace c10dtest_driver {

struct Outcome {
  int exit_code = -1;
  std::string output;
  double seconds = 0;
};

// A tag that no other run on this machine carries.
inline std::string unique_tag() {
  std::random_device rd;
  return std::to_string(getpid()) + "-" + std::to_string(rd());
}

// Runs `command` through sh (stdout and stderr together), bounded by `limit_s` seconds.
inline Outcome run(const std::string& command, int limit_s = 180) {
  const std::string full = "timeout -k 5 " + std::to_string(limit_s) + " sh -c '" + command +
                           "' 2>&1";
  const auto start = std::chrono::steady_clock::now();
  Outcome out;
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) {
    out.output = "popen failed";
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.output.append(buf, n);
  const int status = pclose(pipe);
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

inline int count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (auto pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + 1)) {
    ++n;
  }
  return n;
}

// OpenMPI refuses to run as root and to put more ranks than cores on a machine unless told (set
// once per program that includes this, before main).
[[maybe_unused]] const bool kOpenMpiSettings = [] {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 0);        // Open MPI 4
  setenv("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe", 0);  // Open MPI 5
  setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0);
  return true;
}();

}  // namespace c10dtest_driver
