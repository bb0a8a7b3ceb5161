#include "c10dtest/control_plane.hpp"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "c10dtest/error.hpp"
#include "common/text.hpp"

namespace c10dtest {

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<std::uint8_t>& b) { return {b.begin(), b.end()}; }

// Turns TCPStoreOptions::useLibUV (LibTorch 2.x) off; false where the field does not exist.
template <typename Options>
auto disable_libuv(Options& o, int) -> decltype(o.useLibUV = false, bool()) {
  o.useLibUV = false;
  return true;
}
template <typename Options>
bool disable_libuv(Options&, long) {
  return false;
}

c10::intrusive_ptr<c10d::TCPStore> make_tcp(const std::string& host, int port, bool server,
                                            int world_size, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(port);
  opts.isServer = server;
  opts.numWorkers = static_cast<std::size_t>(world_size);
  opts.waitWorkers = false;
  // LibTorch 1.13 keeps the connect timeout in whole seconds.
  opts.timeout = std::max(timeout, std::chrono::milliseconds(1000));
  try {
    return c10::make_intrusive<c10d::TCPStore>(host, opts);
  } catch (const c10::Error& e) {
    // LibTorch 2.x asks for the libuv store by default, which builds without libuv (Debian's)
    // refuse: use the classic one there.
    if (std::string(e.what()).find("libuv") == std::string::npos || !disable_libuv(opts, 0)) {
      throw;
    }
    return c10::make_intrusive<c10d::TCPStore>(host, opts);
  }
}

void publish_port(const std::string& file, int port, const std::string& job) {
  const std::string tmp = file + ".tmp" + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << ' ' << job << '\n';
    if (!out) throw RendezvousError("cannot write rendezvous file " + tmp);
  }
  if (std::rename(tmp.c_str(), file.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw RendezvousError("cannot rename " + tmp + " to " + file);
  }
}

bool read_port(const std::string& file, const std::string& job, int* port) {
  std::ifstream in(file);
  std::string got_job;
  return static_cast<bool>(in >> *port >> got_job) && got_job == job;
}

}  // namespace

ControlPlane::ControlPlane(int rank, int world_size, std::string host, int port,
                           std::string prefix, c10::intrusive_ptr<c10d::TCPStore> tcp,
                           std::string rendezvous_file)
    : rank_(rank),
      world_size_(world_size),
      host_(std::move(host)),
      port_(port),
      prefix_(std::move(prefix)),
      tcp_(std::move(tcp)),
      store_(c10::make_intrusive<c10d::PrefixStore>(prefix_, tcp_)),
      rendezvous_file_(std::move(rendezvous_file)) {}

ControlPlane::~ControlPlane() {
  if (!rendezvous_file_.empty()) std::remove(rendezvous_file_.c_str());
}

std::unique_ptr<ControlPlane> ControlPlane::connect(const LaunchInfo& launch,
                                                    std::chrono::milliseconds timeout,
                                                    std::chrono::milliseconds stall,
                                                    const std::function<void(ControlPlane&)>& before_barrier) {
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  const auto stall_at = stall >= timeout ? deadline : start + stall;
  const std::string prefix = "c10dtest/" + launch.job_id;
  const int rank = launch.rank;
  const int size = launch.world_size;
  std::unique_ptr<ControlPlane> cp;

  if (launch.rendezvous == RendezvousKind::kNone) {
    // World size 1: a private store on an ephemeral port, for uniform code paths.
    auto tcp = make_tcp("127.0.0.1", 0, true, 1, timeout);
    cp.reset(new ControlPlane(0, 1, "127.0.0.1", tcp->getPort(), prefix, tcp, ""));
  } else if (launch.rendezvous == RendezvousKind::kAddress) {
    const bool serve = rank == 0 && !launch.store_is_external;
    c10::intrusive_ptr<c10d::TCPStore> tcp;
    try {
      tcp = make_tcp(launch.master_addr, launch.master_port, serve, size, timeout);
    } catch (const std::exception& e) {
      throw RendezvousError(launch.describe() + ": cannot " +
                            std::string(serve ? "serve" : "reach") + " the store at " +
                            launch.master_addr + ":" + std::to_string(launch.master_port) +
                            ": " + e.what());
    }
    cp.reset(new ControlPlane(rank, size, launch.master_addr, launch.master_port, prefix, tcp,
                              ""));
  } else if (rank == 0) {
    auto tcp = make_tcp("127.0.0.1", 0, true, size, timeout);
    cp.reset(new ControlPlane(0, size, "127.0.0.1", tcp->getPort(), prefix, tcp,
                              launch.rendezvous_file));
    cp->set("hello", launch.job_id);
    publish_port(launch.rendezvous_file, tcp->getPort(), launch.job_id);
  } else {
    // Poll for rank 0's port; a stale file from a dead job fails the hello check and is retried.
    std::string last_error = "the file did not appear";
    while (!cp) {
      int port = 0;
      if (read_port(launch.rendezvous_file, launch.job_id, &port)) {
        try {
          auto tcp = make_tcp("127.0.0.1", port, false, size, std::chrono::milliseconds(2000));
          auto candidate = std::unique_ptr<ControlPlane>(
              new ControlPlane(rank, size, "127.0.0.1", port, prefix, tcp, ""));
          // A wait, which gives up after its timeout, not a check: LibTorch 1.13's check has
          // no timeout, and rank 0 stopped after it published its port would hold this rank
          // for good. The key lives under this job's prefix: another job's store lacks it.
          candidate->store_->wait({"hello"}, std::chrono::milliseconds(2000));
          cp = std::move(candidate);
          break;
        } catch (const std::exception& e) {
          last_error = "port " + std::to_string(port) + ": " + detail::first_line(e.what());
        }
      }
      if (Clock::now() >= stall_at) {
        const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
            Clock::now() - start);
        throw RendezvousError(launch.describe() + ": rank 0 of " + std::to_string(size) +
                              " did not publish its store in " +
                              launch.rendezvous_file + " within " +
                              std::to_string(waited.count()) + " ms (" + last_error +
                              "): it was stopped, crashed or never started");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  cp->tcp_->setTimeout(timeout);
  if (before_barrier) before_barrier(*cp);
  cp->start_barrier(launch, deadline, stall);
  return cp;
}

void ControlPlane::start_barrier(const LaunchInfo& launch, Clock::time_point deadline,
                                 std::chrono::milliseconds stall) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const std::string me = std::string(host) + ", pid " + std::to_string(getpid());
  set("start/" + std::to_string(rank_), me);
  if (add("start/n", 1) == world_size_) set("start/all", "1");
  std::int64_t arrived = -1;
  auto progress = Clock::now();
  for (int round = 0;; ++round) {
    // Polled, not waited for in slices: a c10d store wait that times out leaves its reply on
    // the connection, and the next request would read it.
    if (check({"start/all"})) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (round % 10 != 0) continue;
    const auto now = Clock::now();
    const std::int64_t count = add("start/n", 0);
    // Every rank arrived, but the last one stopped before it could say so: done all the same.
    if (count >= world_size_) return;
    if (count != arrived) {
      arrived = count;
      progress = now;
    }
    const bool stalled = stall < std::chrono::milliseconds::max() &&
                         Clock::now() - progress >= stall;
    if (!stalled && Clock::now() < deadline) continue;
    std::vector<int> missing;
    std::ostringstream here;
    for (int r = 0; r < world_size_; ++r) {
      const std::string k = "start/" + std::to_string(r);
      if (!check({k})) {
        missing.push_back(r);
      } else if (here.tellp() < 400) {
        here << (here.tellp() > 0 ? "; " : "") << "rank " << r << " on " << text(store_->get(k));
      }
    }
    std::ostringstream os;
    os << launch.describe() << ": " << (missing.size() == 1 ? "rank" : "ranks");
    for (std::size_t i = 0; i < missing.size(); ++i) os << (i ? ", " : " ") << missing[i];
    os << " of " << world_size_ << " did not arrive at the start ";
    if (stalled) {
      os << "within " << stall.count() << " ms of the last rank that did (stopped, crashed or "
         << "never started: no host is known for a rank that never connected)";
    } else {
      os << "within the rendezvous timeout";
    }
    os << "; arrived: " << here.str();
    throw RendezvousError(os.str());
  }
}

std::unique_ptr<ControlPlane> ControlPlane::another_client() const {
  auto tcp = make_tcp(host_, port_, false, world_size_, std::chrono::milliseconds(10000));
  return std::unique_ptr<ControlPlane>(
      new ControlPlane(rank_, world_size_, host_, port_, prefix_, tcp, ""));
}

void ControlPlane::set(const std::string& key, const std::string& value) {
  store_->set(key, bytes(value));
}

std::string ControlPlane::get(const std::string& key, std::chrono::milliseconds timeout) {
  wait({key}, timeout);
  return text(store_->get(key));
}

std::int64_t ControlPlane::add(const std::string& key, std::int64_t delta) {
  return store_->add(key, delta);
}

bool ControlPlane::check(const std::vector<std::string>& keys) { return store_->check(keys); }

void ControlPlane::wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  try {
    store_->wait(keys, timeout);
  } catch (const std::exception& e) {
    if (check(keys)) return;
    // The store's own words, first line only (LibTorch appends a C++ stack to c10::Error).
    std::string cause = e.what();
    cause = cause.substr(0, cause.find('\n'));
    std::ostringstream os;
    os << "timed out after " << timeout.count() << " ms waiting for control-plane key(s)";
    for (const auto& k : keys) os << ' ' << k;
    if (!cause.empty()) os << " (the store said: " << cause << ")";
    throw TimeoutError(os.str());
  }
}

// One request, without the wait a c10d get does first (a second request): compareSet answers
// with the key's value, or with `expected` when the key does not exist, and changes nothing
// unless the value is `expected` (which no control-plane value is).
std::optional<std::string> ControlPlane::read(const std::string& key) {
  static const std::vector<std::uint8_t> kAbsent = bytes("\x01" "absent");
  auto got = store_->compareSet(key, kAbsent, kAbsent);
  if (got == kAbsent) return std::nullopt;
  return text(got);
}

namespace {

// The key of a rank's exchange slot.
std::string slot_key(int rank) { return "x/" + std::to_string(rank); }

// A rank's exchange slot holds "<length of tag>:<tag><value>".
std::string slot_value(const std::string& tag, const std::string& value) {
  return std::to_string(tag.size()) + ":" + tag + value;
}

// The value in a slot when it belongs to `tag`.
std::optional<std::string> slot_value_for(const std::string& slot, const std::string& tag) {
  const std::string head = std::to_string(tag.size()) + ":" + tag;
  if (slot.compare(0, head.size(), head) != 0) return std::nullopt;
  return slot.substr(head.size());
}

}  // namespace

bool ControlPlane::posted(const std::string& tag, int rank) {
  const auto slot = read(slot_key(rank));
  return (slot && slot_value_for(*slot, tag)) || check({tag + "/all"});
}

std::vector<std::string> ControlPlane::all_gather(const std::string& tag,
                                                  const std::string& value,
                                                  std::chrono::milliseconds timeout,
                                                  const std::optional<std::string>& usual) {
  // O(N) store requests in all. Each rank writes its value into its own slot (a set, which
  // c10d sends without waiting for an answer) and counts itself in (an add); the rank whose add
  // completes the count reads the N slots and publishes them as one value (N reads); every rank
  // waits for that and reads it (2). Reading every rank's value from every rank would be N * N
  // requests to rank 0's single store.
  //
  // When every rank's value is `usual` (a test that passed everywhere), the collector learns
  // that from the count alone and publishes "*" without reading a slot: the count packs, below
  // 65,536 ranks, the arrivals (bits 0-15), the ranks with another value (bits 16-31) and the
  // sum of a 12-bit hash of each rank's `usual` (from bit 32), so ranks that disagree on what
  // is usual take the full path.
  //
  // The store stays the same size over any number of exchanges: each rank's slot is
  // overwritten by its next exchange (it can only get there once the collector has read it),
  // and the collector of an exchange deletes the previous exchange's combined value and counter
  // (every rank read that before it counted itself in here).
  //
  // No value in the store is ever empty: c10d's TCPStore answers a read of one about 200 ms
  // late (in LibTorch 1.13 and 2.x alike).
  constexpr std::int64_t kOne = 1;
  const bool packed = world_size_ < (1 << 16);
  auto usual_hash = [](const std::string& u) {
    return static_cast<std::int64_t>(std::hash<std::string>{}(u) & 0xfff) + 1;
  };
  std::int64_t step = 1;
  if (packed) step += usual && value == *usual ? usual_hash(*usual) << 32 : kOne << 16;
  set(slot_key(rank_), slot_value(tag, value));
  const std::int64_t total = add(tag + "/n", step);
  if ((packed ? total & 0xffff : total) == world_size_) {
    const bool all_usual = packed && usual && ((total >> 16) & 0xffff) == 0 &&
                           (total >> 32) == world_size_ * usual_hash(*usual);
    std::string combined = all_usual ? "*" : "";
    for (int r = 0; r < world_size_ && !all_usual; ++r) {
      std::optional<std::string> v = value;
      if (r != rank_) {
        const auto slot = read(slot_key(r));
        v = slot ? slot_value_for(*slot, tag) : std::nullopt;
      }
      if (!v) {
        throw Error("control-plane exchange '" + tag + "': rank " + std::to_string(r) +
                    " counted itself in but its slot holds another exchange (the ranks made "
                    "different exchanges, or something else writes this store)");
      }
      combined += std::to_string(v->size()) + ":" + *v;
    }
    set(tag + "/all", combined);
    if (!last_exchange_.empty()) {
      store_->deleteKey(last_exchange_ + "/all");
      store_->deleteKey(last_exchange_ + "/n");
    }
  }
  try {
    wait({tag + "/all"}, timeout);
  } catch (const TimeoutError&) {
    std::ostringstream os;
    os << "'" << tag << "': ranks";
    for (int r = 0; r < world_size_; ++r) {
      if (!posted(tag, r)) os << ' ' << r;
    }
    os << " did not arrive within " << timeout.count() << " ms";
    throw TimeoutError(os.str());
  }
  const auto combined = read(tag + "/all");
  std::vector<std::string> out;
  const bool all_usual = combined && *combined == "*" && usual;
  if (all_usual) out.assign(static_cast<std::size_t>(world_size_), *usual);
  out.reserve(static_cast<std::size_t>(world_size_));
  std::size_t at = 0;
  while (!all_usual && combined && at < combined->size()) {
    const std::size_t colon = combined->find(':', at);
    if (colon == std::string::npos) break;
    const std::size_t len = std::stoul(combined->substr(at, colon - at));
    out.push_back(combined->substr(colon + 1, len));
    at = colon + 1 + len;
  }
  if (out.size() != static_cast<std::size_t>(world_size_)) {
    throw Error("control-plane exchange '" + tag + "' came back with " +
                std::to_string(out.size()) + " values for " + std::to_string(world_size_) +
                " ranks (something else writes this store)");
  }
  last_exchange_ = tag;
  return out;
}

void ControlPlane::barrier(const std::string& tag, std::chrono::milliseconds timeout) {
  all_gather(tag, "", timeout);
}

bool ControlPlane::leave(const std::string& tag, std::chrono::milliseconds timeout) {
  if (world_size_ == 1) return true;
  if (rank_ != 0) {
    // A set is sent without waiting for a reply: the add is the last request answered.
    if (add(tag + "/left", 1) == world_size_ - 1) set(tag + "/gone", "1");
    return true;
  }
  try {
    wait({tag + "/gone"}, timeout);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

c10::intrusive_ptr<c10d::Store> ControlPlane::store() const { return store_; }

}  // namespace c10dtest
