// Private to the lifeline (lifeline.cpp: the connections; verdict.cpp: who is blamed and how
// the run ends): timings and helpers both use.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

namespace c10dtest::detail::lifeline {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// After the first sign of a death, how long rank 0 waits for more before it blames one: a crash
// is followed by the launcher's SIGTERM to everybody, and the crash must win.
inline constexpr milliseconds kSettle{60};
// After a SIGTERM (this process's or a rank's): how long to listen for what the others say.
inline constexpr milliseconds kOwnSignalSettle{250};
// How long rank 0 waits, at most, for every rank to read its verdict.
inline constexpr milliseconds kAckLimit{2000};
// How long a rank that lost rank 0 waits for the lifeline to explain it.
inline constexpr milliseconds kExplainWait{500};
// Rank 0 writes a line to every rank this often; a rank that hears nothing for the heartbeat
// timeout plus the grace reports rank 0 as stopped.
inline constexpr milliseconds kPing{500};
inline constexpr milliseconds kPingGrace{1000};

// Set by the first caller that ends this process's run; everybody else stands aside.
extern std::atomic<bool> g_claimed;

const char* signal_text(int sig);
// "rank R of W".
std::string rank_of(int rank, int size);
[[noreturn]] void flush_and_exit(int code);
[[noreturn]] void wait_forever();

}  // namespace c10dtest::detail::lifeline
