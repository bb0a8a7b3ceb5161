#include "lifeline.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>

#include "c10dtest/control_plane.hpp"
#include "c10dtest/error.hpp"
#include "c10dtest/options.hpp"
#include "common/text.hpp"
#include "internal.hpp"
#include "lifeline_shared.hpp"
#include "report.hpp"

namespace c10dtest::detail {

namespace lifeline {

std::atomic<bool> g_claimed{false};

const char* signal_text(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    default: return "a termination signal";
  }
}

std::string rank_of(int rank, int size) {
  return "rank " + std::to_string(rank) + " of " + std::to_string(size);
}

void flush_and_exit(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(code);
}

void wait_forever() {
  for (;;) pause();
}

}  // namespace lifeline

using namespace lifeline;

namespace {

// The thread wakes at least this often; a much longer gap means the process was stopped.
constexpr milliseconds kWake{100};
constexpr milliseconds kPauseGap{1000};

std::atomic<Lifeline*> g_lifeline{nullptr};
int g_sig_write = -1;

// Wakes the thread (a 0 byte in the signal pipe: not a signal).
void wake_thread() {
  const char wake = 0;
  const ssize_t ignored = write(g_sig_write, &wake, 1);
  (void)ignored;
}
// The connections the crash handler writes to (rank 0: one per rank; others: rank 0's).
std::unique_ptr<std::atomic<int>[]> g_fds;
std::atomic<int> g_fd_count{0};
// The note a crashing rank leaves beside the rendezvous file (see supervisor_note()).
char g_note_path[4096] = {0};
char g_note_tmp[4200] = {0};

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    data += w;
    n -= static_cast<std::size_t>(w);
  }
}

}  // namespace

int parse_exit_code(const std::string& text) {
  if (text.empty() || text.size() > 3 || text.find_first_not_of("0123456789") != std::string::npos) {
    return kExitRankDied;
  }
  const int code = std::stoi(text);
  return code <= 255 ? code : kExitRankDied;
}

Lifeline& Lifeline::start(const LaunchInfo& launch, Report& report,
                          std::chrono::milliseconds heartbeat_timeout) {
  if (launch.rendezvous == RendezvousKind::kFile) {
    const std::string note = launch.rendezvous_file + ".ended";
    const std::string tmp = note + ".crash." + std::to_string(launch.rank);
    if (tmp.size() < sizeof(g_note_tmp)) {
      std::strcpy(g_note_path, note.c_str());
      std::strcpy(g_note_tmp, tmp.c_str());
    }
  }
  auto* l = new Lifeline(launch, report, heartbeat_timeout);  // lives until the process ends
  g_lifeline.store(l);
  struct sigaction sa {};
  sa.sa_handler = &Lifeline::on_termination_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaction(sig, &sa, nullptr);
  if (const int early = detail::take_early_termination()) on_termination_signal(early);
  return *l;
}

Lifeline* Lifeline::get() { return g_lifeline.load(); }

bool Lifeline::owns_this_process() { return in_rank_process(); }

Lifeline::Lifeline(const LaunchInfo& launch, Report& report, milliseconds heartbeat)
    : launch_(launch), report_(report), heartbeat_(heartbeat) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw ConfigError(std::string("cannot create the lifeline's pipe: ") + std::strerror(errno));
  }
  sig_read_ = fds[0];
  g_sig_write = fds[1];
  const auto n = static_cast<std::size_t>(launch_.world_size);
  peers_.reset(new Peer[n]);
  g_fds.reset(new std::atomic<int>[n]);
  for (std::size_t i = 0; i < n; ++i) g_fds[i].store(-1);
  g_fd_count.store(static_cast<int>(n));
  last_wake_ = Clock::now();
  last_heard_ = last_wake_;
  thread_ = std::thread([this] {
    detail::prepare_thread_for_signals();
    loop();
  });
  thread_id_ = thread_.get_id();
}

Lifeline::~Lifeline() { close(); }

void Lifeline::on_termination_signal(int sig) {
  if (!owns_this_process()) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  const int saved = errno;
  const char byte = static_cast<char>(sig);
  if (g_sig_write >= 0) {
    const ssize_t ignored = write(g_sig_write, &byte, 1);
    (void)ignored;
  }
  errno = saved;
}

void Lifeline::announce_crash(const char* what, const char* rank_text) {
  if (!owns_this_process()) return;
  if (g_note_path[0] != '\0' && rank_text[0] != '\0') {
    // "<rank> crashed: <what>" for whoever ends the run, should the connections not be up yet.
    const int fd = ::open(g_note_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      const char* number = rank_text + 5;  // "rank R of W"
      std::size_t n = 0;
      while (number[n] >= '0' && number[n] <= '9') ++n;
      const ssize_t a = ::write(fd, number, n);
      const ssize_t b = ::write(fd, " crashed: ", 10);
      const ssize_t c = ::write(fd, what, std::strlen(what));
      const ssize_t d = ::write(fd, "\n", 1);
      (void)a; (void)b; (void)c; (void)d;
      if (::close(fd) == 0) ::rename(g_note_tmp, g_note_path);
    }
  }
  char line[600];
  std::size_t len = 0;
  line[len++] = 'C';
  for (; *what != '\0' && len + 2 < sizeof(line); ++what) line[len++] = *what == '\n' ? ' ' : *what;
  line[len++] = '\n';
  const int n = g_fd_count.load();
  for (int i = 0; i < n; ++i) {
    const int fd = g_fds[static_cast<std::size_t>(i)].load();
    if (fd >= 0) write_all(fd, line, len);
  }
}

void Lifeline::connect(ControlPlane& cp, milliseconds timeout) {
  if (launch_.world_size == 1) return;
  const bool one_host = launch_.local_world_size == launch_.world_size;
  if (launch_.rank == 0) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    // One host: loopback only. Several: every interface, like the TCPStore (see control_plane.hpp).
    addr.sin_addr.s_addr = htonl(one_host ? INADDR_LOOPBACK : INADDR_ANY);
    socklen_t len = sizeof(addr);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(fd, 1024) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw RendezvousError(std::string("cannot open the lifeline's listening socket: ") +
                            std::strerror(errno));
    }
    set_nonblocking(fd);
    std::random_device rd;
    std::ostringstream token;
    token << std::hex << rd() << rd() << rd() << rd();
    {
      std::lock_guard<std::mutex> lock(mu_);  // the thread reads both from now on
      token_ = token.str();
      listen_fd_ = fd;
    }
    std::string host = one_host ? "127.0.0.1" : launch_.master_addr;
    if (host.empty()) {
      char name[256] = {0};
      gethostname(name, sizeof(name) - 1);
      host = name;
    }
    cp.set("lifeline", host + " " + std::to_string(ntohs(addr.sin_port)) + " " + token.str());
    wake_thread();  // the thread starts watching the listening socket
    return;
  }
  // Rank 0 publishes it right after its store is up: waiting longer than the heartbeat timeout
  // means rank 0 stopped or died (and if it stopped, the store call may not return at all: the
  // thread watches from now on).
  {
    std::lock_guard<std::mutex> lock(mu_);
    awaiting_zero_ = true;
  }
  wake_thread();
  std::istringstream in(cp.get("lifeline", std::min(timeout, heartbeat_)));
  std::string host;
  std::string port;
  std::string token;
  in >> host >> port >> token;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) {
    throw RendezvousError("cannot resolve rank 0's lifeline address " + host + ":" + port);
  }
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) {
    throw RendezvousError("cannot connect to rank 0's lifeline at " + host + ":" + port + ": " +
                          std::strerror(errno));
  }
  const std::string hello = "H" + std::to_string(launch_.rank) + " " + token + "\n";
  write_all(fd, hello.data(), hello.size());
  set_nonblocking(fd);
  {
    std::lock_guard<std::mutex> lock(mu_);
    peers_[0].fd = fd;
    peers_[0].joined = true;
    awaiting_zero_ = false;
  }
  g_fds[0].store(fd);
  wake_thread();
}

void Lifeline::send_line(int fd, const std::string& line) {
  if (fd >= 0) write_all(fd, line.data(), line.size());
}

void Lifeline::say_bye() {
  std::lock_guard<std::mutex> lock(mu_);
  for (int r = 0; r < launch_.world_size; ++r) {
    Peer& p = peers_[static_cast<std::size_t>(r)];
    if (p.joined && !p.closed) send_line(p.fd, "B\n");
  }
}

bool Lifeline::reached_rank_zero() {
  if (launch_.rank == 0) return true;
  std::lock_guard<std::mutex> lock(mu_);
  return peers_[0].joined;
}

void Lifeline::close() {
  if (!thread_.joinable()) return;
  // From here a termination signal takes its default action: nobody would read it, and the
  // process must not then exit 0 as if it had never come. One that came before is in the pipe
  // (or noted by the thread): the thread acts on it on its way out.
  if (owns_this_process()) {
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) signal(sig, SIG_DFL);
  }
  stopping_ = true;
  wake_thread();
  if (std::this_thread::get_id() != thread_id_) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  g_fd_count.store(0);
  for (int r = 0; r < launch_.world_size; ++r) {
    Peer& p = peers_[static_cast<std::size_t>(r)];
    if (p.fd >= 0) ::close(p.fd);
    p.fd = -1;
  }
  for (auto& p : pending_) ::close(p.fd);
  pending_.clear();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

std::string Lifeline::in_progress() const { return report_.in_progress(); }

namespace {
std::mutex& output_mutex() {
  static auto* mu = new std::mutex;  // never destroyed: threads may print while the process exits
  return *mu;
}
}  // namespace

OutputTurn::OutputTurn() : lock_(output_mutex()), granted_(!g_claimed.load()) {}

bool Lifeline::claim() {
  // After any test line being printed now; no test line is printed after it.
  std::lock_guard<std::mutex> turn(output_mutex());
  bool expected = false;
  return g_claimed.compare_exchange_strong(expected, true);
}

void Lifeline::loop() {
  while (!stopping_) {
    std::vector<pollfd> fds;
    std::vector<int> who;  // -1 signal pipe, -2 listener, -3 - i pending i, else a rank
    fds.push_back({sig_read_, POLLIN, 0});
    who.push_back(-1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (listen_fd_ >= 0) {
        fds.push_back({listen_fd_, POLLIN, 0});
        who.push_back(-2);
      }
      for (std::size_t i = 0; i < pending_.size(); ++i) {
        fds.push_back({pending_[i].fd, POLLIN, 0});
        who.push_back(-3 - static_cast<int>(i));
      }
      for (int r = 0; r < launch_.world_size; ++r) {
        const Peer& p = peers_[static_cast<std::size_t>(r)];
        if (p.fd >= 0 && !p.closed) {
          fds.push_back({p.fd, POLLIN, 0});
          who.push_back(r);
        }
      }
    }
    milliseconds wait = kWake;
    if (settle_until_ != Clock::time_point::max()) {
      wait = std::max(milliseconds(0), std::min(wait, std::chrono::duration_cast<milliseconds>(
                                                          settle_until_ - Clock::now())));
    }
    const int n = poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
    const auto now = Clock::now();
    const auto gap = std::chrono::duration_cast<milliseconds>(now - last_wake_);
    if (gap > kPauseGap + wait) {
      longest_pause_ = std::max(longest_pause_, gap);
      last_heard_ = now;  // this process was stopped: rank 0's silence meanwhile proves nothing
    }
    last_wake_ = now;
    if (n < 0 && errno != EINTR) break;
    // Pending connections first (their indexes shift as they join), in reverse order.
    for (std::size_t i = fds.size(); i-- > 0;) {
      if (n <= 0 || fds[i].revents == 0) continue;
      if (who[i] <= -3) read_pending(static_cast<std::size_t>(-3 - who[i]));
    }
    for (std::size_t i = 0; n > 0 && i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      if (who[i] == -1) {
        read_signals();
      } else if (who[i] == -2) {
        accept_one();
      } else if (who[i] >= 0) {
        read_peer(who[i]);
      }
    }
    if (g_claimed.load()) continue;  // another thread ends the run; keep reading acks
    if (settle_until_ != Clock::time_point::max() && Clock::now() >= settle_until_) decide();
    keep_in_touch();
  }
  // Closing. A termination signal still in the pipe, or read but not yet acted on (rank 0 waits
  // a moment for news of a death first), ends the run now: the run may have finished within
  // that moment, and a run that a signal interrupted never passes.
  while (read_signals()) {
  }
  if (!g_claimed.load() && own_signal_ != 0) decide();
}

bool Lifeline::read_signals() {
  char buf[64];
  const ssize_t got = read(sig_read_, buf, sizeof(buf));
  for (ssize_t k = 0; k < got; ++k) {
    if (buf[k] != 0) on_own_signal(buf[k]);  // 0 only wakes the thread
  }
  return got > 0;
}

void Lifeline::accept_one() {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back({fd, ""});
  }
}

void Lifeline::read_pending(std::size_t i) {
  std::lock_guard<std::mutex> lock(mu_);
  if (i >= pending_.size()) return;
  Pending& p = pending_[i];
  char buf[256];
  const ssize_t got = recv(p.fd, buf, sizeof(buf), 0);
  if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (got > 0) p.buf.append(buf, static_cast<std::size_t>(got));
  const auto nl = p.buf.find('\n');
  if (got <= 0 || p.buf.size() > 200 || (nl != std::string::npos && p.buf[0] != 'H')) {
    ::close(p.fd);  // gone before saying hello, or not one of ours
    pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
    return;
  }
  if (nl == std::string::npos) return;
  std::istringstream hello(p.buf.substr(1, nl - 1));
  int rank = -1;
  std::string token;
  hello >> rank >> token;
  const std::string rest = p.buf.substr(nl + 1);
  const int fd = p.fd;
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
  if (rank <= 0 || rank >= launch_.world_size || token != token_ ||
      peers_[static_cast<std::size_t>(rank)].joined) {
    ::close(fd);
    return;
  }
  Peer& peer = peers_[static_cast<std::size_t>(rank)];
  peer.fd = fd;
  peer.joined = true;
  peer.buf = rest;
  g_fds[static_cast<std::size_t>(rank)].store(fd);
}

void Lifeline::read_peer(int rank) {
  std::vector<std::string> lines;
  bool closed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Peer& p = peers_[static_cast<std::size_t>(rank)];
    char buf[4096];
    for (;;) {
      const ssize_t got = recv(p.fd, buf, sizeof(buf), 0);
      if (got > 0) {
        p.buf.append(buf, static_cast<std::size_t>(got));
        continue;
      }
      if (got < 0 && errno == EINTR) continue;
      if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) closed = true;
      break;
    }
    for (auto nl = p.buf.find('\n'); nl != std::string::npos; nl = p.buf.find('\n')) {
      lines.push_back(p.buf.substr(0, nl));
      p.buf.erase(0, nl + 1);
    }
  }
  if (rank == 0 && launch_.rank != 0) last_heard_ = Clock::now();
  for (const auto& line : lines) on_line(rank, line);
  if (closed) on_closed(rank);
}

void Lifeline::on_line(int rank, const std::string& line) {
  if (line.empty()) return;
  Peer& p = peers_[static_cast<std::size_t>(rank)];
  const std::string text = line.substr(1);
  switch (line[0]) {
    case 'B':
      p.bye = true;
      break;
    case 'A':
      p.done = true;
      break;
    case 'L':
      p.lost_zero = true;
      p.text = text;
      if (!g_claimed.load()) settle_until_ = std::min(settle_until_, Clock::now() + kSettle);
      break;
    case 'C':
    case 'T':
      if (p.kind != 'C') {
        p.kind = line[0];
        p.text = text;
      }
      // A SIGTERM alone waits longer: rank 0's own SIGTERM would show a launcher ending all.
      if (!g_claimed.load()) {
        settle_until_ =
            std::min(settle_until_, Clock::now() + (line[0] == 'C' ? kSettle : kOwnSignalSettle));
      }
      break;
    case 'E': {
      // Rank 0's verdict.
      if (launch_.rank == 0) break;
      const auto space = text.find(' ');
      const int code = parse_exit_code(text.substr(0, space));
      send_line(p.fd, "A\n");
      if (!claim()) return;  // this process is ending already
      flush_and_exit(code);
    }
    default:
      break;
  }
}

void Lifeline::on_closed(int rank) {
  Peer& p = peers_[static_cast<std::size_t>(rank)];
  {
    std::lock_guard<std::mutex> lock(mu_);
    p.closed = true;
    p.done = true;
  }
  if (g_claimed.load() || p.bye) return;
  if (launch_.rank != 0) {
    rank_zero_died();
    return;
  }
  settle_until_ = std::min(settle_until_, Clock::now() + kSettle);
}

}  // namespace c10dtest::detail
