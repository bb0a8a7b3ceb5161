#include "c10dtest/options.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "c10dtest/error.hpp"

namespace {

using namespace std::chrono_literals;

struct Args {
  std::vector<std::string> storage;
  std::vector<char*> argv;
  int argc = 0;
  explicit Args(std::vector<std::string> a) : storage(std::move(a)) {
    for (auto& s : storage) argv.push_back(s.data());
    argv.push_back(nullptr);
    argc = static_cast<int>(storage.size());
  }
};

c10dtest::EnvLookup env_of(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(RunOptions, DefaultsAreGenerousAndCollectivesTimeOutFirst) {
  Args a({"bin"});
  const auto o = c10dtest::parse_run_options(&a.argc, a.argv.data(), env_of({}));
  EXPECT_EQ(o.test_timeout, 300000ms);
  EXPECT_EQ(o.effective_collective_timeout(), 240000ms);
  EXPECT_EQ(o.backend, "gloo");
  EXPECT_EQ(o.device, "");  // the backend's own device
  EXPECT_EQ(o.spawn_world_size, 0);
}

TEST(RunOptions, BackendAndDeviceComeFromFlagsOrVariables) {
  Args a({"bin", "--c10dtest_device=cuda"});
  const auto o = c10dtest::parse_run_options(
      &a.argc, a.argv.data(), env_of({{"C10DTEST_BACKEND", "nccl"}, {"C10DTEST_DEVICE", "cpu"}}));
  EXPECT_EQ(o.backend, "nccl");
  EXPECT_EQ(o.device, "cuda");
  EXPECT_EQ(a.argc, 1);
}

TEST(RunOptions, FlagsAreRemovedAndOverrideVariables) {
  Args a({"bin", "--gtest_filter=A.*", "--c10dtest_timeout=2.5", "--c10dtest_world_size=4",
          "--c10dtest_log_dir=/tmp/logs", "--c10dtest_seed=9", "tail"});
  const auto o = c10dtest::parse_run_options(
      &a.argc, a.argv.data(), env_of({{"C10DTEST_TIMEOUT", "100"}, {"C10DTEST_BACKEND", "gloo"}}));
  EXPECT_EQ(o.test_timeout, 2500ms);
  EXPECT_EQ(o.spawn_world_size, 4);
  EXPECT_EQ(o.log_dir, "/tmp/logs");
  EXPECT_EQ(o.seed, 9u);
  ASSERT_EQ(a.argc, 3);
  EXPECT_STREQ(a.argv[1], "--gtest_filter=A.*");
  EXPECT_STREQ(a.argv[2], "tail");
  EXPECT_EQ(a.argv[3], nullptr);
}

TEST(RunOptions, VariablesApplyWithoutFlags) {
  Args a({"bin"});
  const auto o = c10dtest::parse_run_options(
      &a.argc, a.argv.data(),
      env_of({{"C10DTEST_TIMEOUT", "10"}, {"C10DTEST_COLLECTIVE_TIMEOUT", "3"},
              {"C10DTEST_HEARTBEAT_TIMEOUT", "4"}}));
  EXPECT_EQ(o.test_timeout, 10000ms);
  EXPECT_EQ(o.effective_collective_timeout(), 3000ms);
  EXPECT_EQ(o.heartbeat_timeout, 4000ms);
}

std::string error_of(std::vector<std::string> args,
                     const std::map<std::string, std::string>& vars = {}) {
  args.insert(args.begin(), "bin");
  Args a(args);
  try {
    c10dtest::parse_run_options(&a.argc, a.argv.data(), env_of(vars));
  } catch (const c10dtest::ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(RunOptions, BadValuesAreNamed) {
  EXPECT_EQ(error_of({"--c10dtest_timeout=soon"}),
            "--c10dtest_timeout='soon' is not a positive number of seconds");
  EXPECT_EQ(error_of({"--c10dtest_timeout=-1"}),
            "--c10dtest_timeout='-1' is not a positive number of seconds");
  EXPECT_EQ(error_of({"--c10dtest_backend=mpi"}),
            "--c10dtest_backend='mpi' is not a backend (gloo or nccl)");
  EXPECT_EQ(error_of({}, {{"C10DTEST_DEVICE", "gpu"}}),
            "C10DTEST_DEVICE='gpu' is not a device (cpu or cuda)");
  EXPECT_EQ(error_of({}, {{"C10DTEST_TIMEOUT", "x"}}),
            "C10DTEST_TIMEOUT='x' is not a positive number of seconds");
  EXPECT_EQ(error_of({"--c10dtest_world_size=0"}), "--c10dtest_world_size='0' must be at least 1");
  EXPECT_EQ(error_of({"--c10dtest_timeout"}),
            "flag --c10dtest_timeout needs a value (--c10dtest_timeout=...)");
  EXPECT_NE(error_of({"--c10dtest_timout=3"}).find("unknown flag --c10dtest_timout"),
            std::string::npos);
}

}  // namespace
