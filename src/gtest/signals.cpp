#include <cxxabi.h>
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>
#include <thread>

#include "internal.hpp"

namespace c10dtest::detail {

namespace {

constexpr int kMaxFrames = 64;
char g_test_name[512] = {0};
char g_prefix[96] = {0};
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

void on_fatal(int sig) {
  // One write() (under PIPE_BUF bytes): ranks share the pipe to the launcher, and separate
  // writes could interleave with another rank's output in the middle of the line.
  char line[1024];
  std::size_t len = 0;
  append(line, sizeof(line), &len, "\n");
  append(line, sizeof(line), &len, g_prefix);
  append(line, sizeof(line), &len, signal_name(sig));
  if (g_test_name[0] != '\0') {
    append(line, sizeof(line), &len, " in test ");
    append(line, sizeof(line), &len, g_test_name);
  }
  append(line, sizeof(line), &len, "\n");
  const ssize_t ignored = write(STDERR_FILENO, line, len);
  (void)ignored;
  void* frames[kMaxFrames];
  const int n = backtrace(frames, kMaxFrames);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  signal(sig, SIG_DFL);
  raise(sig);
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
  std::snprintf(g_prefix, sizeof(g_prefix), "c10dtest: rank %d of %d: ", rank, world_size);
  // backtrace() loads libgcc on first use; do it now, not inside a signal handler.
  void* warm[2];
  backtrace(warm, 2);

  static char alt_stack[64 * 1024];
  stack_t ss{};
  ss.ss_sp = alt_stack;
  ss.ss_size = sizeof(alt_stack);
  sigaltstack(&ss, nullptr);

  struct sigaction sa {};
  sa.sa_handler = on_fatal;
  sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(sig, &sa, nullptr);

  struct sigaction st {};
  st.sa_handler = on_stack_request;
  st.sa_flags = SA_RESTART;
  sigemptyset(&st.sa_mask);
  sigaction(stack_signal(), &st, nullptr);
}

void set_current_test_name(const std::string& name) {
  const std::size_t n = std::min(name.size(), sizeof(g_test_name) - 1);
  std::memcpy(g_test_name, name.data(), n);
  g_test_name[n] = '\0';
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
