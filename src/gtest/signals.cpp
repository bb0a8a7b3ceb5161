#include <cxxabi.h>
#include <execinfo.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "internal.hpp"
#include "lifeline.hpp"
#include "report.hpp"

namespace c10dtest::detail {

namespace {

constexpr int kMaxFrames = 64;
constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
constexpr std::size_t kAltStackSize = 64 * 1024;

// Texts the fatal-signal handler reads while another thread may replace them: each is written
// once, published through an atomic pointer and never freed (one per test; gtest keeps as much).
std::atomic<const char*> g_activity{"during start-up"};
std::atomic<const char*> g_prefix{"c10dtest: "};
std::atomic<const char*> g_rank_text{"this rank"};
std::atomic<pid_t> g_rank_pid{0};

// For a text set once (who this rank is): kept for good, for the signal handler.
const char* keep(const std::string& text) {
  static std::mutex mu;
  static std::deque<std::string> kept;
  std::lock_guard<std::mutex> lock(mu);
  kept.push_back(text);
  return kept.back().c_str();
}

// For what runs now, set twice per test: a ring of fixed buffers, so that a suite of any length
// keeps the same memory (keeping each text for good grew a 10,000-test run by megabytes). A
// handler that read a pointer a moment ago still finds its text unless 64 more were set since.
const char* keep_activity(const std::string& text) {
  constexpr std::size_t kSlots = 64;
  constexpr std::size_t kSize = 1024;
  static std::mutex mu;
  static char ring[kSlots][kSize];
  static std::size_t next = 0;
  std::lock_guard<std::mutex> lock(mu);
  char* slot = ring[next];
  next = (next + 1) % kSlots;
  std::size_t n = std::min(text.size(), kSize - 1);
  if (n < text.size() && n >= 3) {
    std::memcpy(slot, text.data(), n - 3);
    std::memcpy(slot + n - 3, "...", 3);
  } else {
    std::memcpy(slot, text.data(), n);
  }
  slot[n] = '\0';
  return slot;
}

struct sigaction g_previous[sizeof(kFatalSignals) / sizeof(int)];
std::atomic<int> g_early_termination{0};

// Until the lifeline takes over (Lifeline::start), a termination signal is only noted: the
// lifeline then reports it (the report names the interrupted start-up) instead of the process
// dying of it unreported. Outside a rank process the signal keeps its default action.
void on_early_termination(int sig) {
  if (!in_rank_process()) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  int none = 0;
  g_early_termination.compare_exchange_strong(none, sig);
}
pthread_t g_main_thread;
std::atomic<bool> g_main_registered{false};

void* g_frames[kMaxFrames];
std::atomic<int> g_frame_count{-1};

int stack_signal() { return SIGRTMIN + 4; }

const char* signal_name(int sig) {
  switch (sig) {
    case SIGSEGV: return "SIGSEGV (segmentation fault)";
    case SIGBUS: return "SIGBUS (bus error)";
    case SIGFPE: return "SIGFPE (arithmetic error)";
    case SIGILL: return "SIGILL (illegal instruction)";
    case SIGABRT: return "SIGABRT (abort)";
    default: return "fatal signal";
  }
}

// Appends `s` to `buf` (of `cap` bytes, `*len` used), truncating; async-signal-safe.
void append(char* buf, std::size_t cap, std::size_t* len, const char* s) {
  for (; *s != '\0' && *len + 1 < cap; ++s) buf[(*len)++] = *s;
}

// Calls the handler that was installed before ours (a sanitizer's, the user's); returns when
// there was none, or when it returned.
void chain(int sig, siginfo_t* info, void* context) {
  for (std::size_t i = 0; i < sizeof(kFatalSignals) / sizeof(int); ++i) {
    if (kFatalSignals[i] != sig) continue;
    const struct sigaction& old = g_previous[i];
    if ((old.sa_flags & SA_SIGINFO) != 0 && old.sa_sigaction != nullptr) {
      old.sa_sigaction(sig, info, context);
    } else if ((old.sa_flags & SA_SIGINFO) == 0 && old.sa_handler != SIG_DFL &&
               old.sa_handler != SIG_IGN && old.sa_handler != nullptr) {
      old.sa_handler(sig);
    }
  }
}

void on_fatal(int sig, siginfo_t* info, void* context) {
  // One write() (under PIPE_BUF bytes): ranks share the pipe to the launcher, and separate
  // writes could interleave with another rank's output in the middle of the line.
  char what[600];
  std::size_t wlen = 0;
  append(what, sizeof(what), &wlen, signal_name(sig));
  append(what, sizeof(what), &wlen, " ");
  append(what, sizeof(what), &wlen, g_activity.load());
  what[wlen] = '\0';
  // The peers first: the launcher may end this process any moment now.
  Lifeline::announce_crash(what, g_rank_pid.load() != 0 ? g_rank_text.load() : "");
  char line[1024];
  std::size_t len = 0;
  append(line, sizeof(line), &len, "\n");
  append(line, sizeof(line), &len, g_prefix.load());
  append(line, sizeof(line), &len, what);
  append(line, sizeof(line), &len, "\n");
  const ssize_t ignored = write(STDERR_FILENO, line, len);
  (void)ignored;
  if (in_rank_process()) {
    // The report's writer (rank 0) completes the report itself: at start-up, or at world size 1,
    // no other rank may be there to do it.
    char cause[800];
    std::size_t clen = 0;
    append(cause, sizeof(cause), &clen, "[  DEAD    ] ");
    append(cause, sizeof(cause), &clen, g_rank_text.load());
    append(cause, sizeof(cause), &clen, " crashed: ");
    append(cause, sizeof(cause), &clen, what);
    append(cause, sizeof(cause), &clen, "\n");
    cause[clen] = '\0';
    Report::write_fault_from_signal_handler(cause);
  }
  void* frames[kMaxFrames];
  const int n = backtrace(frames, kMaxFrames);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  chain(sig, info, context);
  // With core dumps enabled, die of the signal so that the kernel writes one; otherwise exit
  // with c10dtest's code, which the launcher then reports instead of 128 + signal. Outside a
  // rank (before the world starts, a death test's child) the signal stays what it was.
  rlimit core{};
  if (!in_rank_process() ||
      (getrlimit(RLIMIT_CORE, &core) == 0 && core.rlim_cur != 0)) {
    // The signal is blocked while its handler runs: it is delivered, with the default action,
    // when the handler returns (a fault re-executes the faulting instruction, with the same end).
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  _exit(kExitRankDied);
}

void on_stack_request(int) {
  g_frame_count.store(backtrace(g_frames, kMaxFrames));
}

// "module(+0x37987) [0x...]": a frame without a dynamic symbol (a static or anonymous-namespace
// function). addr2line, when installed, names it from the module's symbol table.
std::string addr2line(const std::string& line) {
  const auto open = line.find("(+0x");
  const auto close = line.find(')', open == std::string::npos ? 0 : open);
  if (open == std::string::npos || close == std::string::npos) return line;
  const std::string module = line.substr(0, open);
  const std::string offset = line.substr(open + 2, close - open - 2);
  if (module.find_first_of("'\"$`\\") != std::string::npos ||
      offset.find_first_not_of("0123456789abcdefx") != std::string::npos) {
    return line;
  }
  // -i: also the callers the frame was inlined into; names and file:line pairs alternate.
  const std::string cmd = "addr2line -f -i -C -e '" + module + "' " + offset + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return line;
  std::vector<std::string> names;
  char buf[1024];
  for (int i = 0; std::fgets(buf, sizeof(buf), p) != nullptr; ++i) {
    std::string text = buf;
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    if (i % 2 == 0 && !text.empty() && text != "??") names.push_back(text);
  }
  pclose(p);
  if (names.empty()) return line;
  std::string out = module + "(" + names[0];
  for (std::size_t i = 1; i < names.size(); ++i) out += (i == 1 ? ", inlined in " : ", in ") + names[i];
  return out + ")" + line.substr(close + 1);
}

std::string demangle_line(const char* line) {
  // "binary(_ZN3foo3barEv+0x12) [0x...]" -> "binary(foo::bar()+0x12) [0x...]"
  std::string s = line;
  const auto open = s.find('(');
  const auto plus = s.find('+', open == std::string::npos ? 0 : open);
  if (open != std::string::npos && plus == open + 1) return addr2line(s);
  if (open == std::string::npos || plus == std::string::npos || plus <= open + 1) return s;
  const std::string mangled = s.substr(open + 1, plus - open - 1);
  int status = 0;
  char* name = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  if (status == 0 && name != nullptr) {
    s = s.substr(0, open + 1) + name + s.substr(plus);
  }
  std::free(name);
  return s;
}

}  // namespace

void install_fatal_signal_handlers(int rank, int world_size) {
  if (rank >= 0 && world_size > 0) set_signal_rank(rank, world_size);
  // backtrace() loads libgcc on first use; do it now, not inside a signal handler.
  void* warm[2];
  backtrace(warm, 2);
  prepare_thread_for_signals();

  static bool installed = false;
  if (!installed) {
    installed = true;
    struct sigaction sa {};
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (std::size_t i = 0; i < sizeof(kFatalSignals) / sizeof(int); ++i) {
      sigaction(kFatalSignals[i], &sa, &g_previous[i]);
    }
    struct sigaction term {};
    term.sa_handler = on_early_termination;
    term.sa_flags = SA_RESTART;
    sigemptyset(&term.sa_mask);
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
      struct sigaction old {};
      // A handler someone installed before main (or SIG_IGN, e.g. nohup) stays theirs.
      if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
        sigaction(sig, &term, nullptr);
      }
    }
  }

  struct sigaction st {};
  st.sa_handler = on_stack_request;
  st.sa_flags = SA_RESTART;
  sigemptyset(&st.sa_mask);
  sigaction(stack_signal(), &st, nullptr);
}

void mark_rank_process(bool rank) { g_rank_pid.store(rank ? getpid() : 0); }

int take_early_termination() { return g_early_termination.exchange(0); }

bool in_rank_process() { return g_rank_pid.load() == getpid(); }

void set_signal_rank(int rank, int world_size) {
  const std::string who = "rank " + std::to_string(rank) + " of " + std::to_string(world_size);
  g_rank_text.store(keep(who));
  g_prefix.store(keep("c10dtest: " + who + ": "));
}

void prepare_thread_for_signals() {
  // Each thread needs its own alternate stack: a stack overflow cannot run a handler on the
  // stack that overflowed. A thread that already has one keeps it: its owner (a sanitizer
  // runtime, the user) frees it when the thread ends, and would free ours instead if we swapped
  // it (AddressSanitizer munmaps whatever stack the thread has at exit). Ours is freed never:
  // the thread may be the one that crashes at exit.
  stack_t current{};
  if (sigaltstack(nullptr, &current) == 0 && (current.ss_flags & SS_DISABLE) == 0 &&
      current.ss_sp != nullptr) {
    return;
  }
  stack_t ss{};
  ss.ss_sp = std::malloc(kAltStackSize);
  if (ss.ss_sp == nullptr) return;
  ss.ss_size = kAltStackSize;
  sigaltstack(&ss, nullptr);
}

void set_current_test_name(const std::string& name) {
  g_activity.store(name.empty() ? "" : keep_activity("in test " + name));
}

void set_current_activity(const std::string& phrase) {
  g_activity.store(keep_activity(phrase));
}

void register_main_thread() {
  g_main_thread = pthread_self();
  g_main_registered.store(true);
}

std::string capture_main_stack(std::chrono::milliseconds wait) {
  if (!g_main_registered.load()) return "";
  g_frame_count.store(-1);
  if (pthread_kill(g_main_thread, stack_signal()) != 0) return "";
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (g_frame_count.load() < 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const int n = g_frame_count.load();
  if (n <= 0) return "";
  char** symbols = backtrace_symbols(g_frames, n);
  if (symbols == nullptr) return "";
  std::ostringstream os;
  // Frame 0 is the signal handler itself, frame 1 the signal trampoline.
  for (int i = 2; i < n; ++i) os << "  #" << (i - 2) << ' ' << demangle_line(symbols[i]) << '\n';
  std::free(symbols);
  return os.str();
}

}  // namespace c10dtest::detail
