// Who is blamed and how the run ends: rank 0's decision after a death, the survivors' report when
// rank 0 is the one that died or stopped, and the one ending each process gets (see lifeline.hpp).
#include <poll.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "c10dtest/options.hpp"
#include "common/text.hpp"
#include "lifeline.hpp"
#include "lifeline_shared.hpp"
#include "report.hpp"

namespace c10dtest::detail {

using namespace lifeline;

std::string Lifeline::supervisor_note(int* rank) const {
  // On one host, beside the rendezvous file: what the self-spawn supervisor saw before it ended
  // the others, or what a rank that crashed before it could tell anyone wrote from its handler.
  if (launch_.rendezvous != RendezvousKind::kFile) return "";
  std::ifstream in(launch_.rendezvous_file + ".ended");
  std::string text;
  if (!(in >> *rank) || !std::getline(in >> std::ws, text)) return "";
  return text;
}

void Lifeline::decide() {
  settle_until_ = Clock::time_point::max();
  const int size = launch_.world_size;
  std::vector<int> lost;
  for (int r = 1; r < size; ++r) {
    if (peers_[static_cast<std::size_t>(r)].lost_zero) lost.push_back(r);
  }
  if (!lost.empty()) {
    // The others left because this rank did not answer: it was stopped or starved.
    const Peer& p = peers_[static_cast<std::size_t>(lost.front())];
    std::ostringstream os;
    os << "[  DEAD    ] " << rank_of(0, size) << " (this rank) stopped answering: "
       << rank_of(lost.front(), size) << " reported " << p.text << " during " << in_progress();
    if (longest_pause_.count() > 0) {
      os << " (this process was stopped for " << longest_pause_.count() << " ms)";
    }
    os << "\nc10dtest: ending all ranks (exit code " << kExitRankDied << ")\n";
    end_run(kExitRankDied, os.str(), os.str());
  }
  const std::string line = verdict_line();
  if (line.empty()) return;
  const std::string text = line + "\nc10dtest: ending all ranks (exit code " +
                           std::to_string(kExitRankDied) + ")\n";
  end_run(kExitRankDied, text, text);
}

std::string Lifeline::verdict_line() const {
  const int size = launch_.world_size;
  // Who to blame: a crash or a silent death first, then a terminated rank.
  int culprit = -1;
  int best = 0;
  for (int r = 1; r < size; ++r) {
    const Peer& p = peers_[static_cast<std::size_t>(r)];
    int score = 0;
    if (p.kind == 'C' || (p.closed && !p.bye && !p.lost_zero && p.kind == 0)) {
      score = 3;
    } else if (p.kind == 'T') {
      score = 2;
    }
    if (score > best) {
      best = score;
      culprit = r;
    }
  }
  const std::string during = " during " + in_progress();
  int noted = -1;
  const std::string note = supervisor_note(&noted);
  // A terminated rank is the cause only if this rank was not terminated too: a launcher ending
  // the whole job (after a death it saw and c10dtest did not) sends everybody SIGTERM.
  if (best == 2 && own_signal_ != 0) culprit = -1;
  if (culprit < 0 && own_signal_ == 0) return "";
  std::ostringstream os;
  if (!note.empty() && noted > 0 && noted < size) {
    os << "[  DEAD    ] " << rank_of(noted, size) << " " << note << during;
  } else if (culprit > 0) {
    const Peer& p = peers_[static_cast<std::size_t>(culprit)];
    os << "[  DEAD    ] " << rank_of(culprit, size);
    if (p.kind == 'C') {
      os << " crashed: " << p.text;
    } else if (p.kind == 'T') {
      os << " was terminated: it received " << p.text << during;
    } else {
      os << " died: its process ended without a word (killed by SIGKILL, or it exited outside "
            "c10dtest)"
         << during;
    }
  } else {
    std::vector<int> missing;
    for (int r = 1; r < size; ++r) {
      if (!peers_[static_cast<std::size_t>(r)].joined) missing.push_back(r);
    }
    os << "[  ENDED   ] " << rank_of(0, size) << " received " << signal_text(own_signal_)
       << during << ": the launcher or a user ended the run";
    if (!missing.empty()) {
      os << " (" << rank_list(missing) << " of " << size << " had not connected yet)";
    }
  }
  return os.str();
}

void Lifeline::on_own_signal(int sig) {
  if (g_claimed.load()) return;
  own_signal_ = sig;
  if (launch_.rank == 0) {
    settle_until_ = std::min(settle_until_, Clock::now() + kOwnSignalSettle);
    return;
  }
  // Ranks > 0: say so, then give rank 0 a moment to send its verdict (or to be found dead).
  auto zero_fd = [this] {
    std::lock_guard<std::mutex> lock(mu_);
    return peers_[0].joined && !peers_[0].closed ? peers_[0].fd : -1;
  };
  send_line(zero_fd(), std::string("T") + signal_text(sig) + " (the launcher or a user ended " +
                           rank_of(launch_.rank, launch_.world_size) + ")\n");
  const auto until = Clock::now() + kOwnSignalSettle + kOwnSignalSettle;
  for (int fd = zero_fd(); fd >= 0 && Clock::now() < until; fd = zero_fd()) {
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, 20) > 0) read_peer(0);
  }
  // Not connected to rank 0 yet (start-up): the self-spawn supervisor may know it died.
  int noted = -1;
  const std::string note = supervisor_note(&noted);
  if (noted == 0 && !note.empty()) report_rank_zero(note + " during " + in_progress());
  leave(kExitRankDied, "c10dtest: " + rank_of(launch_.rank, launch_.world_size) + ": received " +
                           signal_text(sig) + " during " + in_progress() + "; ending this rank");
}

void Lifeline::rank_zero_died() {
  const Peer& zero = peers_[0];
  std::string what;
  int noted = -1;
  const std::string note = supervisor_note(&noted);
  if (zero.kind == 'C') {
    what = "crashed: " + zero.text;
  } else if (zero.kind == 'T') {
    what = "was terminated: it received " + zero.text + " during " + in_progress();
  } else if (!note.empty() && noted == 0) {
    what = note + " during " + in_progress();
  } else {
    what = "died: its process ended without a word (killed by SIGKILL, or it exited outside "
           "c10dtest) during " +
           in_progress();
  }
  report_rank_zero(what);
}

void Lifeline::report_rank_zero(const std::string& what) {
  if (!claim()) wait_forever();
  const int size = launch_.world_size;
  const std::string line = "[  DEAD    ] " + rank_of(0, size) + " " + what +
                           "\nc10dtest: the other ranks end (exit code " +
                           std::to_string(kExitRankDied) + ")\n";
  // Every survivor completes the report (one of them may be gone too); rank 1 prints the
  // verdict, the others say why they end (on stderr, which may be their own log file).
  report_.write_fault(line);
  std::fflush(stdout);
  if (launch_.rank == 1) {
    std::fputs(line.c_str(), stdout);
  } else {
    std::fprintf(stderr, "c10dtest: %s lost the control plane served by rank 0: %s %s; "
                 "ending this rank\n", rank_of(launch_.rank, size).c_str(),
                 rank_of(0, size).c_str(), what.c_str());
  }
  flush_and_exit(kExitRankDied);
}

void Lifeline::rank_zero_lost(const std::string& why) {
  // This rank may have been the one stopped: the lifeline may hold rank 0's verdict already.
  await_explanation(kExplainWait);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!g_claimed.load() && peers_[0].joined && !peers_[0].closed) {
      send_line(peers_[0].fd, "L" + why + "\n");
    }
  }
  report_rank_zero("stopped answering: " + rank_of(launch_.rank, launch_.world_size) + " " + why +
                   " during " + in_progress());
}

void Lifeline::await_explanation(milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (Clock::now() < until) {
    if (g_claimed.load()) wait_forever();
    std::this_thread::sleep_for(milliseconds(10));
  }
}

void Lifeline::leave(int code, const std::string& message) {
  if (!claim()) wait_forever();
  std::fflush(stdout);
  std::fprintf(stderr, "%s\n", message.c_str());
  flush_and_exit(code);
}

void Lifeline::wait_for_acks(milliseconds limit) {
  const auto until = Clock::now() + limit;
  const bool on_thread = std::this_thread::get_id() == thread_id_;
  while (Clock::now() < until) {
    bool all = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int r = 1; r < launch_.world_size; ++r) {
        const Peer& p = peers_[static_cast<std::size_t>(r)];
        if (p.joined && !p.done.load()) all = false;
      }
    }
    if (all) return;
    if (!on_thread) {
      std::this_thread::sleep_for(milliseconds(10));
      continue;
    }
    std::vector<pollfd> fds;
    std::vector<int> who;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int r = 1; r < launch_.world_size; ++r) {
        const Peer& p = peers_[static_cast<std::size_t>(r)];
        if (p.joined && !p.done.load()) {
          fds.push_back({p.fd, POLLIN, 0});
          who.push_back(r);
        }
      }
    }
    if (poll(fds.data(), fds.size(), 20) <= 0) continue;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents != 0) read_peer(who[i]);
    }
  }
}

void Lifeline::end_run(int code, const std::string& printed, const std::string& cause) {
  if (!claim()) wait_forever();
  std::fflush(stdout);
  std::fputs(printed.c_str(), stdout);
  std::fflush(stdout);
  report_.write_fault(cause);
  if (launch_.rank == 0) {
    const std::string verdict = "E" + std::to_string(code) + " " + rank_of(0, launch_.world_size) +
                                " ends the run\n";
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int r = 1; r < launch_.world_size; ++r) {
        Peer& p = peers_[static_cast<std::size_t>(r)];
        if (p.joined && !p.closed) send_line(p.fd, verdict);
      }
    }
    wait_for_acks(kAckLimit);
  }
  flush_and_exit(code);
}

void Lifeline::keep_in_touch() {
  const auto now = Clock::now();
  if (launch_.rank == 0) {
    // Rank 0 says it is alive: the others find it stopped even while they wait in a store call
    // that will never return (at start-up, before the watchdog's guard exists).
    if (now - last_ping_ < kPing) return;
    last_ping_ = now;
    std::lock_guard<std::mutex> lock(mu_);
    for (int r = 1; r < launch_.world_size; ++r) {
      const Peer& p = peers_[static_cast<std::size_t>(r)];
      if (p.joined && !p.closed) send_line(p.fd, "P\n");
    }
    return;
  }
  bool watching = false;
  bool awaiting = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    watching = peers_[0].joined && !peers_[0].closed;
    awaiting = awaiting_zero_;
  }
  if (!watching && !awaiting) {
    last_heard_ = now;
    return;
  }
  const auto silent = std::chrono::duration_cast<milliseconds>(now - last_heard_);
  if (silent <= heartbeat_ + kPingGrace) return;
  if (watching) {
    std::lock_guard<std::mutex> lock(mu_);
    send_line(peers_[0].fd, "Lheard nothing from rank 0 for " + std::to_string(silent.count()) +
                                " ms\n");
  }
  report_rank_zero("stopped answering: " + rank_of(launch_.rank, launch_.world_size) +
                   " heard nothing from it for " + std::to_string(silent.count()) + " ms" +
                   (watching ? "" : " (its store answered, its lifeline address never came)") +
                   " during " + in_progress());
}

}  // namespace c10dtest::detail
