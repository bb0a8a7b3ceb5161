// The world: this process's rank, the control plane and the process groups, created once per
// launch by c10dtest's main (or c10dtest::init) and shared by every test. It is the runner's
// Context (c10dtest/context.hpp), the default one while it runs: DeviceMesh, DTensor, the
// state-dict functions and verify use it when they are given no other.
#pragma once

#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "c10dtest/comm.hpp"
#include "c10dtest/context.hpp"
#include "c10dtest/launch.hpp"
#include "c10dtest/options.hpp"

namespace c10dtest {

class ControlPlane;

namespace detail {
class Watchdog;
class DistributedListener;
class Lifeline;
class Report;
}  // namespace detail

class World final : public Context {
 public:
  // Throws Error when c10dtest was not initialised (the binary must link c10dtest::main, or call
  // c10dtest::init before RUN_ALL_TESTS).
  static World& instance();
  static bool initialized();

  const LaunchInfo& launch() const { return launch_; }
  const RunOptions& options() const { return options_; }
  int rank() const override { return launch_.rank; }
  int world_size() const override { return launch_.world_size; }
  int local_rank() const { return launch_.local_rank; }
  BackendKind backend() const { return backend_; }
  // Where tests put their tensors: CPU with Gloo, cuda:<local rank> with NCCL, and with
  // --c10dtest_device=cuda on Gloo cuda:<local rank % GPUs visible>.
  c10::Device device() const override { return device_; }

  // Why this run's world cannot work here, the same text on every rank ("" when it can):
  // NCCL without NCCL compiled in, a CUDA device that no GPU backs, two NCCL ranks on one GPU.
  // DistributedTest then skips every test with this reason, and process_group() throws it.
  const std::string& unavailable_reason() const { return unavailable_; }

  // The world group. Do not keep it across tests: after a failed test every rank rebuilds it.
  ProcessGroupPtr process_group() override;

  // A group of `ranks` (world ranks, each once, ascending or not). Collective: every rank must
  // call it, in the same order; ranks outside the group get nullptr. Uses the world's backend.
  //
  // Groups are cached by (ranks in their order, backend) for the life of the world: asking again
  // for a group this rank already belongs to returns the same group, with no store traffic (a
  // DeviceMesh made in every test costs its groups once). Every member of a group decides alike,
  // because every rank makes the same calls in the same order. After a failed test the world is
  // rebuilt and the cache dropped with it: every cached group is released (NCCL ones aborted),
  // and the next request makes a new group.
  ProcessGroupPtr new_group(const std::vector<int>& ranks) override;
  // The same with another backend than the world's (e.g. a Gloo group beside an NCCL world, or
  // a test parameterised over backends). ConfigError if it is not compiled in.
  ProcessGroupPtr new_group(const std::vector<int>& ranks, BackendKind backend);
  // Splits the world into disjoint groups (e.g. the rows of a 2-D mesh) and returns the one that
  // holds this rank (nullptr if none does). Collective, like new_group.
  ProcessGroupPtr new_subgroups(const std::vector<std::vector<int>>& groups) override;
  ProcessGroupPtr new_subgroups(const std::vector<std::vector<int>>& groups, BackendKind backend);

  ControlPlane& control();

  // Per-test watchdog override: the current test may run `timeout` from its start.
  void set_test_timeout(std::chrono::milliseconds timeout);

  // Collective over the control plane (all ranks, same order, inside a test): the minimum of
  // every rank's `value`. Used to make skip decisions identical on every rank.
  std::int64_t min_over_ranks(std::int64_t value);

  // Context: every rank's `value` through the control plane (not a process group, which a failed
  // test may have broken), under next_tag(what).
  std::vector<std::string> all_gather_text(const std::string& what,
                                           const std::string& value) override;
  std::string verify_strategy() const override { return options_.verify_strategy; }

  // DistributedTest::temp_dir(): this test's directory, the same path on every rank. Collective
  // on the first call in a test; removed by rank 0 once every rank has ended the test.
  const std::string& test_temp_dir();

  // A control-plane tag for the next collective of the running test ("t/0/3/2/<what>/5"): the
  // same on every rank as long as every rank makes the same calls in the same order.
  std::string next_tag(const std::string& what);

  ~World() override;

 private:
  friend int init(int* argc, char** argv);
  friend int finalize(int exit_code);
  friend class detail::DistributedListener;

  World(LaunchInfo launch, RunOptions options);
  void start();
  int stop(int exit_code);

  GroupOptions group_options(const std::string& name, BackendKind backend) const;
  // Picks device_ and, when this world cannot run here, unavailable_ (collective, at start).
  void choose_device();
  // Drops the world group and every cached group; `failed`: abort NCCL groups instead of
  // shutting them down (a peer may be inside a collective).
  void release_process_groups(bool failed = true);
  void rebuild_process_groups();
  // After a test's result exchange (every rank is done with it): rank 0 removes the test's
  // directory, every rank forgets it.
  void remove_test_temp_dir();
  // Control-plane key prefix of the running test ("t/<iteration>/<suite>/<test>"), or of the
  // running suite's own code between tests (test index -1).
  std::string test_key() const;

  LaunchInfo launch_;
  RunOptions options_;
  BackendKind backend_;
  c10::Device device_{c10::DeviceType::CPU};
  std::string unavailable_;
  std::unique_ptr<ControlPlane> control_;
  std::unique_ptr<detail::Watchdog> watchdog_;
  detail::Report* report_ = nullptr;      // set by init(); lives as long as the process
  detail::Lifeline* lifeline_ = nullptr;  // the same
  ProcessGroupPtr world_group_;
  // This rank's groups by (world ranks in group order, backend); see new_group.
  std::map<std::pair<std::vector<int>, int>, ProcessGroupPtr> group_cache_;
  int generation_ = 0;
  int group_seq_ = 0;
  int iteration_ = 0;
  int suite_index_ = -1;
  int test_index_ = -1;  // within the running suite
  bool in_test_ = false;
  int phase_ = 0;        // numbers each stretch of suite-level code
  int call_seq_ = 0;
  std::string temp_dir_;  // the running test's temp_dir(), once asked for
  std::string rebuild_error_;  // why the last rebuild of the world group failed, on some rank
};

}  // namespace c10dtest
