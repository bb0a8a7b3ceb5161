// comm: one small facade over c10d process groups for LibTorch 1.13 and 2.x.
//
// On 1.13 ProcessGroupGloo/NCCL are ProcessGroups; on 2.x they are Backends wrapped by a
// ProcessGroup. Either way callers get the native `c10d::ProcessGroup` that user code expects.
//
// Example:
//   c10dtest::GroupOptions o;                       // Gloo on loopback
//   auto pg = c10dtest::make_process_group(store, rank, size, o);
//   std::vector<at::Tensor> t{at::ones({4})};
//   pg->allreduce(t)->wait();
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/version.h>

#include <chrono>
#include <string>

namespace c10dtest {

#define C10DTEST_TORCH_GE(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||     \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

enum class BackendKind { kGloo, kNccl };

const char* to_string(BackendKind kind);
// "gloo" or "nccl"; throws ConfigError otherwise.
BackendKind parse_backend(const std::string& name);
// Whether make_process_group can build NCCL groups: this LibTorch has NCCL (USE_C10D_NCCL) and
// c10dtest was configured with it (C10DTEST_WITH_NCCL; nccl.h found).
bool nccl_available();
// "" when nccl_available(); otherwise why not, as a sentence part ("this LibTorch was built
// without NCCL").
std::string nccl_unavailable_reason();
// The PCI bus id of CUDA device `index` ("0000:1b:00.0"): the same in every process that uses
// that GPU, whatever CUDA_VISIBLE_DEVICES each has. "" where this build cannot tell (without
// NCCL compiled in) or the device does not exist.
std::string cuda_device_pci_id(int index);

using ProcessGroupPtr = c10::intrusive_ptr<c10d::ProcessGroup>;

struct GroupOptions {
  BackendKind backend = BackendKind::kGloo;
  // Collective timeout of the group; keep it below the test watchdog.
  std::chrono::milliseconds timeout{60000};
  // Gloo: the address this rank's transport binds to. Loopback keeps one-host runs private;
  // multi-host runs need an address peers can reach (or set GLOO_SOCKET_IFNAME).
  std::string gloo_hostname = "127.0.0.1";
  // NCCL: the CUDA device of this rank (one per rank).
  int cuda_device = 0;
  // Only for error messages: "world", "group [0, 2]".
  std::string name = "world";
};

// Creates a process group over `store` (which must be private to this group: use a PrefixStore).
// Collective across the `size` members. Throws ConfigError when the backend is not compiled in.
ProcessGroupPtr make_process_group(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                   int size, const GroupOptions& options);

// Drops this reference to `group` (and resets it). On LibTorch 2.x an NCCL group is shut down
// first, or aborted when `failed`. A Gloo group closes its connections once its last reference
// and its last Work are gone: after any queued or running collective of this rank has finished
// or timed out, so never keep Work objects across tests.
void release_process_group(ProcessGroupPtr& group, bool failed);

}  // namespace c10dtest
