// The lifeline: how a run ends when a rank dies, hangs or is terminated, and who says so.
//
// Every rank other than 0 holds one plain TCP connection to rank 0 (a star), beside the control
// plane. The kernel closes a process's sockets the moment it dies, whatever killed it (SIGKILL
// included), so rank 0 learns of a death at once and knows which rank it was; and the other
// ranks learn at once that rank 0 died. Short lines travel on it:
//   H<rank> <token>   hello (rank -> 0)
//   C<text>           "I am crashing": a fatal signal, sent from the signal handler
//   T<text>           "I was terminated" (SIGTERM, SIGINT or SIGHUP)
//   L<text>           "I leave because rank 0 stopped answering" (rank -> 0)
//   B                 orderly goodbye: the connection closing later is no death
//   E<code> <text>    rank 0's verdict: end with exit code <code> (0 -> rank)
//   A                 the verdict was read (rank -> 0)
//   P                 rank 0 is alive (every 500 ms, 0 -> rank)
//
// One thread per process reads them, and also the termination signals (through a self-pipe):
// a launcher ends the survivors with SIGTERM within a second of a crash (mpirun: SIGKILL one
// second later), so the ending must be decided and the report written in that second.
//
// Exactly one ending happens per process (the first caller claims it). The reporter (rank 0, or
// every surviving rank when rank 0 is the one that died or stopped) prints the verdict and
// completes the XML report; the others only exit with the verdict's code.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "c10dtest/launch.hpp"

namespace c10dtest {
class ControlPlane;
}

namespace c10dtest::detail {

class Report;

// An exit code that travelled as text: a plain number from 0 to 255, else kExitRankDied.
int parse_exit_code(const std::string& text);

// Rank 0's test output and the run's verdict take turns: the listener prints under a turn,
// which is refused once an ending has claimed the run (Lifeline::claim takes the same lock), so
// no test line ever follows the verdict that ended the run.
class OutputTurn {
 public:
  OutputTurn();
  bool granted() const { return granted_; }

 private:
  std::unique_lock<std::mutex> lock_;
  bool granted_;
};

class Lifeline {
 public:
  // Starts the thread (termination signals are handled from now on). One per process.
  static Lifeline& start(const LaunchInfo& launch, Report& report,
                         std::chrono::milliseconds heartbeat_timeout);
  // The process's lifeline, or nullptr before start().
  static Lifeline* get();

  // Collective at start, right after the control plane exists: rank 0 listens (loopback on one
  // host) and publishes its port and a random token in the store; the others connect.
  void connect(ControlPlane& cp, std::chrono::milliseconds timeout);
  // This rank leaves in order (after the last test): its connections closing is no death.
  void say_bye();
  // Rank 0, or a rank that has joined rank 0's lifeline. A start-up that failed on a rank that
  // never reached rank 0 may be rank 0's fault: that rank completes the report itself.
  bool reached_rank_zero();
  // Stops the thread and closes the connections (the very last step of an orderly exit).
  void close();

  // Ends the whole run from this process, which reports: prints `printed` on stdout, completes
  // the XML report with `cause`, and (rank 0) tells every rank to exit with `code`, waiting until
  // each has read it or is gone (at most a few seconds). Never returns.
  [[noreturn]] void end_run(int code, const std::string& printed, const std::string& cause);
  // Ranks > 0: rank 0 stopped answering (`why`). Gives the connection a moment to deliver rank
  // 0's verdict or death first (this rank may be the one that was stopped); then reports rank 0,
  // tells it why this rank leaves, and exits with kExitRankDied. Never returns.
  [[noreturn]] void rank_zero_lost(const std::string& why);
  // Called when this rank's own work failed in a way a death explains (the store went away at
  // the end): waits up to `limit` for the lifeline to end the run first; returns if it did not.
  void await_explanation(std::chrono::milliseconds limit);
  // Exits with `code` after printing `message` on stderr, without reporting. Never returns.
  [[noreturn]] void leave(int code, const std::string& message);

  // "Suite.Test", "Suite (SetUpTestSuite, ...)", "start-up" or "shutdown": what runs now.
  std::string in_progress() const;

  // Async-signal-safe: whether this process is a rank (see in_rank_process()): a forked child
  // (a gtest death test of the "fast" style) inherits the connections and the pipe, and must use
  // neither.
  static bool owns_this_process();
  // Async-signal-safe: tells the peers this process is dying of `what`.
  // `rank_text` is "rank R of W" ("" when unknown).
  static void announce_crash(const char* what, const char* rank_text);
  // Async-signal-safe: the handler of SIGTERM, SIGINT and SIGHUP (installed by start()).
  static void on_termination_signal(int sig);

  ~Lifeline();

 private:
  struct Peer {
    int fd = -1;
    std::string buf;
    bool joined = false;
    bool bye = false;
    bool closed = false;
    bool lost_zero = false;  // sent L
    char kind = 0;           // 'C' or 'T' once it said why it dies
    std::string text;
    std::atomic<bool> done{false};  // acked the verdict or closed
  };

  Lifeline(const LaunchInfo& launch, Report& report, std::chrono::milliseconds heartbeat);
  void loop();
  void on_line(int rank, const std::string& line);
  void on_closed(int rank);
  void accept_one();
  void read_pending(std::size_t i);
  void read_peer(int rank);
  // Rank 0: picks the rank to blame among the events seen, once they have settled.
  void decide();
  // Reads what the signal pipe holds and acts on each termination signal; false when empty.
  bool read_signals();
  // The "[  DEAD    ] ..." or "[  ENDED   ] ..." line rank 0 would end the run with now, from
  // the events seen so far; "" when there is nothing to end the run for.
  std::string verdict_line() const;
  void on_own_signal(int sig);
  // Ranks > 0: rank 0 died (its connection closed without a verdict).
  void rank_zero_died();
  // Every surviving rank > 0 reports a dead or stuck rank 0; rank 1 prints.
  [[noreturn]] void report_rank_zero(const std::string& what);
  bool claim();
  void send_line(int fd, const std::string& line);
  void wait_for_acks(std::chrono::milliseconds limit);
  std::string supervisor_note(int* rank) const;

  LaunchInfo launch_;
  Report& report_;
  std::chrono::milliseconds heartbeat_;
  int sig_read_ = -1;
  int listen_fd_ = -1;
  std::string token_;
  std::unique_ptr<Peer[]> peers_;  // by rank; rank 0's entry is used by the other ranks
  struct Pending {
    int fd;
    std::string buf;
  };
  std::vector<Pending> pending_;
  std::thread thread_;
  std::thread::id thread_id_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;  // peers_ and pending_ between the thread and the callers
  std::chrono::steady_clock::time_point settle_until_ = std::chrono::steady_clock::time_point::max();
  int own_signal_ = 0;
  // Rank 0 pings every rank; the others report it when it falls silent.
  void keep_in_touch();
  std::chrono::steady_clock::time_point last_wake_{};
  std::chrono::steady_clock::time_point last_ping_{};
  std::chrono::steady_clock::time_point last_heard_{};  // ranks > 0: data from rank 0
  // Ranks > 0, under mu_: connect() reached rank 0's store and now waits for its lifeline. A
  // rank 0 stopped in that moment leaves the main thread in a store call that may not return
  // for the whole store timeout; the thread names it after the heartbeat timeout instead.
  bool awaiting_zero_ = false;
  std::chrono::milliseconds longest_pause_{0};
};

}  // namespace c10dtest::detail
