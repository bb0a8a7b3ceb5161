#include "c10dtest/comm.hpp"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>

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

bool nccl_available() {
#ifdef USE_C10D_NCCL
  return true;
#else
  return false;
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

ProcessGroupPtr make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                          const GroupOptions& options) {
  auto opts = c10d::ProcessGroupGloo::Options::create(options.timeout);
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname != nullptr && *ifname != '\0') {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else {
    opts->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname(options.gloo_hostname));
  }
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
#ifdef USE_C10D_NCCL
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
  throw ConfigError("the nccl backend was asked for (" + options.name +
                    ") but this LibTorch was built without NCCL (USE_C10D_NCCL)");
#endif
}

}  // namespace

void release_process_group(ProcessGroupPtr& group, bool failed) {
  if (!group) return;
#if C10DTEST_TORCH_GE(2, 6)
  // Gloo closes its connections when the last reference goes; NCCL wants an explicit shutdown
  // (abort after a failure, so that peers' pending collectives do not wait for this rank).
  if (group->getBackendName() == "nccl") {
    if (failed) {
      group->abort();
    } else {
      group->shutdown();
    }
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
