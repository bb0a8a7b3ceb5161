// Control plane: a c10d TCPStore served by rank 0, used for results, barriers, heartbeats and the
// process groups' own rendezvous. It is independent of the process group under test: a broken
// collective never takes reporting down with it.
//
// Security: on one host the store's address is published only in a private (0700) directory and
// clients connect over loopback, but c10d's TCPStore listens on all interfaces (c10d offers no bind
// address); anyone who can reach the port can read and write keys. Multi-host runs
// (MASTER_ADDR/MASTER_PORT) belong on a trusted network.
#pragma once

#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "c10dtest/launch.hpp"

namespace c10d {
class Store;
class TCPStore;
}  // namespace c10d

namespace c10dtest {

class ControlPlane {
 public:
  // Rank 0 serves the store (on an ephemeral loopback port for a file rendezvous), every rank
  // connects, and all meet in a barrier. Throws RendezvousError on timeout, naming the file or
  // address and the ranks that did not arrive. `stall`: when no rank has arrived for that long
  // while some are still missing (a rank stopped or crashed at start-up), the missing ranks are
  // named at once instead of after `timeout`; likewise when rank 0's store does not appear.
  // `before_barrier` runs on every rank once its connection works, before the barrier (rank 0
  // publishes there what the others need at once).
  static std::unique_ptr<ControlPlane> connect(
      const LaunchInfo& launch, std::chrono::milliseconds timeout,
      std::chrono::milliseconds stall = std::chrono::milliseconds::max(),
      const std::function<void(ControlPlane&)>& before_barrier = nullptr);
  ~ControlPlane();

  // A second connection to the same store and key space, for another thread (a c10d store
  // client serialises its operations, so a blocking wait would stall a shared one).
  std::unique_ptr<ControlPlane> another_client() const;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  void set(const std::string& key, const std::string& value);
  // Waits for the key up to `timeout`, then returns its value; TimeoutError names the key.
  std::string get(const std::string& key, std::chrono::milliseconds timeout);
  std::int64_t add(const std::string& key, std::int64_t delta);
  bool check(const std::vector<std::string>& keys);
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);

  // Every rank contributes `value` under `tag` (unique per call); returns all values by rank.
  // TimeoutError names the ranks that did not contribute. O(N) store requests in all (the last
  // rank to arrive collects and publishes); the store keeps no keys of exchanges every rank is
  // done with (each rank's value sits in one slot key "x/<rank>", overwritten by its next
  // exchange). Every rank must make the same exchanges in the same order.
  // `usual`: the value most calls give on every rank (a passed test's result); when every rank
  // gives it, no rank's value is read back (N fewer requests). It must be the same on every rank
  // (ranks that disagree still get the right values, through the full exchange).
  std::vector<std::string> all_gather(const std::string& tag, const std::string& value,
                                      std::chrono::milliseconds timeout,
                                      const std::optional<std::string>& usual = std::nullopt);
  void barrier(const std::string& tag, std::chrono::milliseconds timeout);
  // Whether `rank` has posted its value to the exchange `tag` (or the exchange is complete):
  // for a watchdog's report of who is waiting in an exchange and who never came.
  bool posted(const std::string& tag, int rank);
  // The last use of the store, after a barrier every rank passed: rank 0 (which serves the store)
  // returns once every other rank's last request has been answered, so that none of them finds
  // the server gone ("Broken pipe"); the others return at once. False when rank 0 gave up after
  // `timeout`.
  bool leave(const std::string& tag, std::chrono::milliseconds timeout);

  // The store under this run's key prefix, for the process groups' rendezvous.
  c10::intrusive_ptr<c10d::Store> store() const;

 private:
  ControlPlane(int rank, int world_size, std::string host, int port, std::string prefix,
               c10::intrusive_ptr<c10d::TCPStore> tcp, std::string rendezvous_file);
  // A key's value in one request (a c10d get waits for the key first: two), or nullopt.
  std::optional<std::string> read(const std::string& key);
  // The start barrier, with the stall rule of connect(); each rank's key names its host for
  // the message about the ranks that did not arrive.
  void start_barrier(const LaunchInfo& launch, std::chrono::steady_clock::time_point deadline,
                     std::chrono::milliseconds stall);

  int rank_;
  int world_size_;
  std::string host_;
  int port_;
  std::string prefix_;
  c10::intrusive_ptr<c10d::TCPStore> tcp_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::string rendezvous_file_;  // rank 0 removes it on destruction
  std::string last_exchange_;    // the tag of this rank's last all_gather that completed
};

}  // namespace c10dtest
