// Context: who this rank is among its peers and how it talks to them. It is all that the layers
// below the test runner need (DeviceMesh, DTensor, ShardedTensor, the state-dict functions,
// gather and verify), so they work on any c10d group, in any program:
//
//   // A plain program (no gtest, no c10dtest::main), launched by mpirun or torchrun:
//   auto store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
//   auto ctx = c10dtest::make_context(store, rank, size);          // collective: the world group
//   auto mesh = c10dtest::DeviceMesh::create(ctx, {2, size / 2});  // its groups come from ctx
//   c10dtest::ScopedContext use(ctx);   // optional: the default for calls that take no context
//
// Inside a test binary linked with c10dtest::main the runner's world is the default context
// (process-wide), so tests never name one. Elsewhere a function that is given no context uses
// this thread's ScopedContext, then the process default (set_default_context), and throws
// ConfigError when there is none. Ranks may be threads of one process: each thread makes its own
// context (over one c10d::HashStore, say) and installs it with ScopedContext.
#pragma once

#include <c10/core/Device.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "c10dtest/comm.hpp"

namespace c10dtest {

class Context {
 public:
  virtual ~Context() = default;

  // This rank and the number of ranks of the context's world.
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Where this rank's tensors live (CPU with Gloo, the rank's GPU with NCCL).
  virtual c10::Device device() const = 0;

  // The group over every rank of the context.
  virtual ProcessGroupPtr process_group() = 0;
  // Collective over every rank, in the same order everywhere: a group over `ranks` (world ranks,
  // each once); nullptr on the ranks outside it.
  virtual ProcessGroupPtr new_group(const std::vector<int>& ranks);
  // Collective: disjoint groups at once; returns the one that holds this rank, nullptr if none.
  virtual ProcessGroupPtr new_subgroups(const std::vector<std::vector<int>>& groups) = 0;

  // Collective over every rank: each rank's `value`, in rank order. For the small texts the
  // verifier exchanges (descriptions, verdicts); `what` names the exchange in errors.
  virtual std::vector<std::string> all_gather_text(const std::string& what,
                                                   const std::string& value) = 0;

  // What VerifyStrategy::kAuto means here: "auto", "shard-local" or "gather" (the runner's
  // --c10dtest_verify_strategy).
  virtual std::string verify_strategy() const { return "auto"; }
};

using ContextPtr = std::shared_ptr<Context>;

struct ContextOptions {
  // The backend, timeout and Gloo address of every group the context makes.
  GroupOptions group;
  // Where this rank's tensors live; defaults to CPU (Gloo) or cuda:<group.cuda_device> (NCCL).
  std::optional<c10::Device> device;
  // Prefix of every store key the context writes, so that several contexts (or the user's own
  // keys) share one store.
  std::string prefix = "c10dtest";
};

// A context over `store` (shared by every rank) that makes its own world group: collective over
// the `size` ranks. Groups made later live under `options.prefix` in the same store.
ContextPtr make_context(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                        const ContextOptions& options = {});
// A context over a group the program already has. `store` lets it make sub-groups (a DeviceMesh
// needs one per dimension); without one, new_group/new_subgroups throw ConfigError.
ContextPtr make_context(ProcessGroupPtr world_group,
                        const c10::intrusive_ptr<c10d::Store>& store = {},
                        const ContextOptions& options = {});

// The context a call uses when it is given none: this thread's ScopedContext, else the process
// default. Throws ConfigError naming both ways to provide one.
ContextPtr current_context();
bool has_context();
// The process default (the runner sets its world); nullptr clears it.
void set_default_context(ContextPtr context);

// Makes `context` this thread's current context until the object goes out of scope.
class ScopedContext {
 public:
  explicit ScopedContext(ContextPtr context);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

 private:
  ContextPtr previous_;
};

}  // namespace c10dtest
