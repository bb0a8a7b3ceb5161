#include "c10dtest/comm.hpp"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
// C10DTEST_WITH_NCCL is set by CMake when this LibTorch has NCCL (USE_C10D_NCCL) and nccl.h
// was found (cmake/C10dtestBackends.cmake).
#ifdef C10DTEST_WITH_NCCL
#ifndef USE_C10D_NCCL
#error "C10DTEST_WITH_NCCL needs a LibTorch built with NCCL (USE_C10D_NCCL)"
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "c10dtest/error.hpp"

#ifndef USE_C10D_GLOO
#error "c10dtest needs a LibTorch built with Gloo (USE_C10D_GLOO)"
#endif

namespace c10dtest {

const char* to_string(BackendKind kind) {
  return kind == BackendKind::kNccl ? "nccl" : "gloo";
}

BackendKind parse_backend(const std::string& name) {
  if (name == "gloo") return BackendKind::kGloo;
  if (name == "nccl") return BackendKind::kNccl;
  throw ConfigError("backend '" + name + "' is not gloo or nccl");
}

bool nccl_available() { return nccl_unavailable_reason().empty(); }

std::string nccl_unavailable_reason() {
#if defined(C10DTEST_WITH_NCCL)
  return "";
#elif defined(USE_C10D_NCCL)
  return "c10dtest was configured without its NCCL backend (C10DTEST_WITH_NCCL=OFF, or nccl.h "
         "was not found: set C10DTEST_NCCL_INCLUDE_DIR)";
#else
  return "this LibTorch was built without NCCL";
#endif
}

std::string cuda_device_pci_id(int index) {
#ifdef C10DTEST_WITH_NCCL
  char id[64] = {0};
  if (index < 0 || cudaDeviceGetPCIBusId(id, sizeof(id), index) != cudaSuccess) {
    (void)cudaGetLastError();  // clears the error for later CUDA calls
    return "";
  }
  return id;
#else
  (void)index;
  return "";
#endif
}

namespace {

#if TORCH_VERSION_MAJOR >= 2
using NativeBackend = c10d::Backend;

// 2.x: wrap a backend in the ProcessGroup that user code and the dispatcher expect.
ProcessGroupPtr wrap(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                     c10d::ProcessGroup::BackendType type,
                     const c10::intrusive_ptr<c10d::Backend>& backend,
                     std::chrono::milliseconds timeout, int cuda_device) {
#if C10DTEST_TORCH_GE(2, 6)
  (void)timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size);
  pg->setDefaultBackend(type);
  // setBackend copies the wrapper's bound device into the backend: bind the wrapper first, or
  // NCCL guesses a device from the global rank for collectives that name none (barrier).
  if (type == c10d::ProcessGroup::BackendType::NCCL) {
    pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_device)));
  }
#else
  (void)cuda_device;
  auto opts = c10::make_intrusive<c10d::ProcessGroup::Options>(
      type == c10d::ProcessGroup::BackendType::NCCL ? "nccl" : "gloo", timeout);
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size, opts);
#endif
  // Gloo serves CPU and CUDA tensors; NCCL only CUDA ones.
  if (type == c10d::ProcessGroup::BackendType::GLOO) {
    pg->setBackend(c10::DeviceType::CPU, type, backend);
  }
  pg->setBackend(c10::DeviceType::CUDA, type, backend);
  return pg;
}
#endif

// One Gloo device per interface or host name, shared by every group of the process (a Gloo
// device serves any number of contexts). A device per group would add, per group and process,
// an event-loop thread that wakes every 10 ms: with meshes at 64 ranks on a small machine, a
// measurable share of the CPU. Never destroyed: its thread may outlive static destruction.
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& hostname) {
  static std::mutex mu;
  static auto* devices = new std::map<std::string, std::shared_ptr<::gloo::transport::Device>>();
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  const bool by_interface = ifname != nullptr && *ifname != '\0';
  const std::string key = by_interface ? "interface " + std::string(ifname) : "host " + hostname;
  std::lock_guard<std::mutex> lock(mu);
  auto& device = (*devices)[key];
  if (!device) {
    device = by_interface ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                          : c10d::ProcessGroupGloo::createDeviceForHostname(hostname);
  }
  return device;
}

ProcessGroupPtr make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                          const GroupOptions& options) {
  auto opts = c10d::ProcessGroupGloo::Options::create(options.timeout);
  opts->devices.push_back(gloo_device(options.gloo_hostname));
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts);
#if TORCH_VERSION_MAJOR >= 2
  return wrap(store, rank, size, c10d::ProcessGroup::BackendType::GLOO, gloo, options.timeout,
              options.cuda_device);
#else
  return gloo;
#endif
}

ProcessGroupPtr make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                          const GroupOptions& options) {
#ifdef C10DTEST_WITH_NCCL
  // NCCL binds a communicator to the current device: one device per rank.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(options.cuda_device));
  auto opts = c10d::ProcessGroupNCCL::Options::create(false);
  opts->timeout = options.timeout;
  auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
#if TORCH_VERSION_MAJOR >= 2
  return wrap(store, rank, size, c10d::ProcessGroup::BackendType::NCCL, nccl, options.timeout,
              options.cuda_device);
#else
  return nccl;
#endif
#else
  (void)store;
  (void)rank;
  (void)size;
  throw ConfigError("the nccl backend was asked for (" + options.name + ") but " +
                    nccl_unavailable_reason());
#endif
}

}  // namespace

void release_process_group(ProcessGroupPtr& group, bool failed) {
  if (!group) return;
#if TORCH_VERSION_MAJOR >= 2 && defined(C10DTEST_WITH_NCCL)
  // Gloo closes its connections when the last reference goes; NCCL wants an explicit shutdown
  // (abort after a failure, so that peers' pending collectives do not wait for this rank).
  // Called on the backend: ProcessGroup::abort/shutdown only exist from LibTorch 2.7.
  if (group->getBackendName() == "nccl") {
    auto* nccl = dynamic_cast<c10d::ProcessGroupNCCL*>(
        group->getBackend(c10::DeviceType::CUDA).get());
    if (nccl != nullptr && !failed) {
      try {
        nccl->shutdown();  // from about 2.8 it waits for the group's kernels, and may throw
      } catch (const std::exception&) {
        failed = true;
      }
    }
    if (nccl != nullptr && failed) nccl->abort();
  }
#else
  (void)failed;
#endif
  group.reset();
}

ProcessGroupPtr make_process_group(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                   int size, const GroupOptions& options) {
  if (options.backend == BackendKind::kNccl) return make_nccl(store, rank, size, options);
  return make_gloo(store, rank, size, options);
}

}  // namespace c10dtest
