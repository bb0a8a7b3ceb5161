#include "c10dtest/world.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>

#include "c10dtest/control_plane.hpp"
#include "c10dtest/distributed_test.hpp"
#include "c10dtest/error.hpp"
#include "context/groups.hpp"
#include "internal.hpp"
#include "lifeline.hpp"
#include "report.hpp"

namespace c10dtest {

namespace detail {
std::unique_ptr<World>& world_slot() {
  static std::unique_ptr<World> world;
  return world;
}
}  // namespace detail

World& World::instance() {
  auto& w = detail::world_slot();
  if (!w) {
    throw Error(
        "c10dtest is not initialised: link c10dtest::main instead of GTest::gtest_main, or call "
        "c10dtest::init() before RUN_ALL_TESTS()");
  }
  return *w;
}

bool World::initialized() { return detail::world_slot() != nullptr; }

World::World(LaunchInfo launch, RunOptions options)
    : launch_(std::move(launch)),
      options_(std::move(options)),
      backend_(parse_backend(options_.backend)) {}

World::~World() = default;

namespace {

// This host's address on the route to `host` (no packet is sent: a UDP socket is connected,
// which only picks the route), or "" when there is none.
std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return "";
  std::string out;
  for (addrinfo* a = found; a != nullptr && out.empty(); a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    char text[INET6_ADDRSTRLEN] = {0};
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        getnameinfo(reinterpret_cast<sockaddr*>(&local), len, text, sizeof(text), nullptr, 0,
                    NI_NUMERICHOST) == 0) {
      out = text;
    }
    close(fd);
  }
  freeaddrinfo(found);
  return out;
}

// Several hosts: Gloo listens on this host's address towards rank 0's (the network the ranks
// share; the host name often resolves to loopback), else on the host name. GLOO_SOCKET_IFNAME
// overrides both. Worked out once per process: every group (re)built uses it.
const std::string& multi_host_address(const LaunchInfo& launch) {
  static const std::string address = [&] {
    std::string a;
    if (!launch.master_addr.empty()) {
      a = local_address_towards(launch.master_addr, launch.master_port);
    }
    char host[256] = {0};
    if (a.empty() && gethostname(host, sizeof(host) - 1) == 0) a = host;
    return a;
  }();
  return address;
}

}  // namespace

GroupOptions World::group_options(const std::string& name, BackendKind backend) const {
  GroupOptions o;
  o.backend = backend;
  o.timeout = options_.effective_collective_timeout();
  o.cuda_device = device_.is_cuda() ? device_.index() : local_rank();
  o.name = name;
  if (launch_.local_world_size != launch_.world_size) o.gloo_hostname = multi_host_address(launch_);
  return o;
}

void World::start() {
  if (backend_ == BackendKind::kNccl && options_.device == "cpu") {
    throw ConfigError("--c10dtest_backend=nccl with --c10dtest_device=cpu: NCCL only serves CUDA "
                      "tensors (use gloo for CPU tensors)");
  }
  // The lifeline comes up before the start barrier: a rank that dies while the others arrive is
  // named at once.
  control_ = ControlPlane::connect(
      launch_, options_.rendezvous_timeout, options_.heartbeat_timeout,
      [this](ControlPlane& cp) { lifeline_->connect(cp, options_.rendezvous_timeout); });
  watchdog_ = std::make_unique<detail::Watchdog>(control_->another_client(), options_, *lifeline_);
  watchdog_->start();
  choose_device();
  rebuild_process_groups();  // builds nothing when the world cannot run here
  // The default context of DeviceMesh, DTensor, the state-dict functions and verify; owned by
  // the world slot, so the pointer the default holds does not delete it.
  set_default_context(std::shared_ptr<Context>(this, [](Context*) {}));
}

void World::choose_device() {
  const bool cuda = backend_ == BackendKind::kNccl || options_.device == "cuda";
  if (!cuda) return;
  // Each rank says what it would use; the first rank that cannot run gives every rank's reason.
  std::string why;
  const int gpus = local_gpu_count();
  int index = -1;
  if (backend_ == BackendKind::kNccl && !nccl_available()) {
    why = nccl_unavailable_reason();
  } else if (gpus == 0) {
    why = "no CUDA device is visible here";
  } else if (backend_ == BackendKind::kNccl && local_rank() >= gpus && gpus > 1) {
    why = "local rank " + std::to_string(local_rank()) + " has no GPU of its own (" +
          std::to_string(gpus) + " visible); NCCL needs one GPU per rank";
  } else {
    index = local_rank() % gpus;
  }
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const std::string pci = index >= 0 ? cuda_device_pci_id(index) : "";
  const auto all = control_->all_gather("start/device", why + "\n" + host + "\n" + pci,
                                        options_.rendezvous_timeout);
  const std::string what = std::string(to_string(backend_)) + " world on cuda";
  std::vector<std::string> seen;  // "host\npci" per rank
  for (std::size_t r = 0; r < all.size() && unavailable_.empty(); ++r) {
    const auto a = all[r].find('\n');
    const auto b = all[r].find('\n', a + 1);
    const std::string their_why = all[r].substr(0, a);
    const std::string their_gpu = all[r].substr(a + 1);
    if (!their_why.empty()) {
      unavailable_ = what + ": rank " + std::to_string(r) + ": " + their_why;
    } else if (backend_ == BackendKind::kNccl && b + 1 < all[r].size()) {
      // Two NCCL ranks on one GPU make NCCL fail ("Duplicate GPU detected"): say so instead.
      const auto same = std::find(seen.begin(), seen.end(), their_gpu);
      if (same != seen.end()) {
        unavailable_ = what + ": ranks " + std::to_string(same - seen.begin()) + " and " +
                       std::to_string(r) + " would share GPU " + all[r].substr(b + 1) +
                       " on " + all[r].substr(a + 1, b - a - 1) +
                       "; NCCL needs one GPU per rank (run gloo with --c10dtest_device=cuda to "
                       "share a GPU)";
      }
    }
    seen.push_back(their_gpu);
  }
  if (unavailable_.empty()) {
    device_ = c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
  } else if (rank() == 0) {
    std::fprintf(stderr, "c10dtest: every DistributedTest is skipped: %s\n", unavailable_.c_str());
  }
}

ProcessGroupPtr World::process_group() {
  if (!unavailable_.empty()) throw ConfigError(unavailable_);
  if (!world_group_ && !rebuild_error_.empty()) {
    throw Error("the world process group could not be rebuilt after a failed test: " +
                rebuild_error_);
  }
  if (!world_group_) {
    throw Error("the world process group is being rebuilt after a failed test; call "
                "process_group() inside a test instead of keeping it across tests");
  }
  return world_group_;
}

ControlPlane& World::control() { return *control_; }

void World::release_process_groups(bool failed) {
  release_process_group(world_group_, failed);
  for (auto& [key, group] : group_cache_) release_process_group(group, failed);
  group_cache_.clear();
}

void World::rebuild_process_groups() {
  release_process_groups(true);
  if (!unavailable_.empty()) return;
  ++generation_;
  const std::string prefix = "pg/" + std::to_string(generation_) + "/world";
  std::string error;
  try {
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, control_->store());
    world_group_ = make_process_group(store, rank(), world_size(), group_options("world", backend_));
  } catch (const std::exception& e) {
    error = e.what();
    world_group_.reset();
  }
  // Nobody goes on before every rank holds the new group: a rank that went on to the next test,
  // failed it and released the group would close the connections of a rank still setting them
  // up ("Connection closed by peer" out of the listener ended that rank's whole run).
  const auto all = world_size() == 1
                       ? std::vector<std::string>{error.empty() ? "ok" : "!" + error}
                       : control_->all_gather(prefix + "/ready",
                                              error.empty() ? "ok" : "!" + error,
                                              options_.rendezvous_timeout, std::string("ok"));
  rebuild_error_.clear();
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r] != "ok" && rebuild_error_.empty()) {
      rebuild_error_ = "rank " + std::to_string(r) + ": " + all[r].substr(1);
    }
  }
  if (!rebuild_error_.empty()) world_group_.reset();
}

ProcessGroupPtr World::new_subgroups(const std::vector<std::vector<int>>& groups) {
  return new_subgroups(groups, backend_);
}

ProcessGroupPtr World::new_subgroups(const std::vector<std::vector<int>>& groups,
                                     BackendKind backend) {
  if (backend == BackendKind::kNccl && !nccl_available()) {
    throw ConfigError("new_group/new_subgroups: nccl: " + nccl_unavailable_reason());
  }
  if (!unavailable_.empty()) throw ConfigError(unavailable_);
  detail::check_subgroups(groups, world_size());
  const int seq = group_seq_++;
  ProcessGroupPtr mine;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const auto& g = groups[i];
    const auto it = std::find(g.begin(), g.end(), rank());
    if (it == g.end()) continue;
    const std::pair<std::vector<int>, int> key{g, static_cast<int>(backend)};
    ProcessGroupPtr& cached = group_cache_[key];
    if (cached) {
      mine = cached;
      continue;
    }
    auto store = c10::make_intrusive<c10d::PrefixStore>(
        "pg/" + std::to_string(generation_) + "/g" + std::to_string(seq) + "." +
            std::to_string(i),
        control_->store());
    try {
      cached = make_process_group(store, static_cast<int>(it - g.begin()),
                                  static_cast<int>(g.size()),
                                  group_options(detail::group_name(g), backend));
    } catch (...) {
      group_cache_.erase(key);
      throw;
    }
    mine = cached;
  }
  return mine;
}

ProcessGroupPtr World::new_group(const std::vector<int>& ranks) {
  return new_subgroups({ranks}, backend_);
}

ProcessGroupPtr World::new_group(const std::vector<int>& ranks, BackendKind backend) {
  return new_subgroups({ranks}, backend);
}

std::string World::test_key() const {
  return "t/" + std::to_string(iteration_) + "/" + std::to_string(suite_index_) + "/" +
         (in_test_ ? std::to_string(test_index_) : "p" + std::to_string(phase_));
}

void World::set_test_timeout(std::chrono::milliseconds timeout) {
  if (timeout.count() <= 0) throw ConfigError("set_timeout: the timeout must be positive");
  watchdog_->set_timeout(timeout);
}

std::string World::next_tag(const std::string& what) {
  return test_key() + "/" + what + "/" + std::to_string(call_seq_++);
}

std::vector<std::string> World::all_gather_text(const std::string& what,
                                                const std::string& value) {
  if (world_size() == 1) return {value};
  return control_->all_gather(next_tag(what), value, options_.effective_collective_timeout());
}

std::int64_t World::min_over_ranks(std::int64_t value) {
  const auto values =
      control_->all_gather(next_tag("min"), std::to_string(value), options_.test_timeout);
  std::int64_t m = value;
  for (const auto& v : values) m = std::min<std::int64_t>(m, std::stoll(v));
  return m;
}

int World::stop(int exit_code) {
  int code = exit_code;
  bool together = false;  // every rank reached the end
  detail::set_current_activity("during shutdown");
  remove_test_temp_dir();  // a test the run ended in the middle of
  // The report's record of what runs now is left alone: after a normal end the listener has
  // begun "shutdown" already, and after an exception that escaped the run (a store that failed
  // because rank 0 died) the test it interrupted is what a fault report must name, even when
  // this thread gets here before the lifeline has reported the death.
  try {
    for (const auto& c : control_->all_gather("exit", std::to_string(exit_code),
                                              options_.rendezvous_timeout)) {
      code = std::max(code, detail::parse_exit_code(c));
    }
    // Heartbeats and the lifeline watch until every rank is here: a rank stopped or killed at
    // the very end is named like one in a test (not found by the rendezvous timeout).
    control_->barrier("end", options_.rendezvous_timeout);
    lifeline_->say_bye();
    watchdog_->stop();
    together = control_->leave("end", options_.rendezvous_timeout);
  } catch (const std::exception& e) {
    // A rank that died at the end is named by the lifeline: let it speak first.
    lifeline_->await_explanation(std::chrono::milliseconds(500));
    std::fprintf(stderr, "c10dtest: %s: could not finish together with the other ranks: %s\n",
                 launch_.describe().c_str(), e.what());
    code = std::max(code, kExitRankDied);
  }
  // Without the others, an NCCL shutdown could wait for them: abort instead.
  release_process_groups(!together);
  set_default_context(nullptr);
  lifeline_->close();
  watchdog_.reset();
  control_.reset();
  return code;
}

}  // namespace c10dtest
