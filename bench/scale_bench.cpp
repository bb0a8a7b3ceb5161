// How c10dtest's per-test costs scale with ranks and with the number of tests (bench/scale.sh).
// Nothing is asserted about time: rank 0 prints lines that start with "scale:".
//
// The suite is registered at start-up from the environment (every rank must see the same):
//   C10DTEST_SCALE_TESTS  trivial tests (default 200): empty bodies, so a test costs what
//                         c10dtest adds around it (result exchange, watchdog arming, report).
//   C10DTEST_SCALE_MESH   tests that each create a 2-D DeviceMesh (world/2 x 2, or 1 x 1 at
//                         world size 1) and do nothing else (default 50), then as many empty
//                         tests again, so both are measured side by side.
//   C10DTEST_SCALE_BLOCK  the trivial tests are reported in blocks of this many (default 1000 or
//                         the number of tests, whichever is smaller): per-test time in the block
//                         and rank 0's resident and peak memory at its end.
//
// Per-test time is the time from one test body's start to the next one's, on rank 0.
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/control_plane.hpp>
#include <c10dtest/device_mesh.hpp>
#include <c10dtest/world.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <malloc.h>
#include <sys/resource.h>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

const int kTests = env_int("C10DTEST_SCALE_TESTS", 200);
const int kMesh = env_int("C10DTEST_SCALE_MESH", 50);
const int kBlock = std::max(1, env_int("C10DTEST_SCALE_BLOCK", std::min(1000, std::max(kTests, 1))));

// "VmRSS" or "VmHWM" of this process, in KiB.
long status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

struct Sample {
  Clock::time_point at;
  long rss_kib = 0;
  long hwm_kib = 0;
  long heap_kib = 0;  // allocated by malloc and not freed
};

// This process's CPU time (user + system, every thread), in ms.
double cpu_ms() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto ms = [](const timeval& t) { return t.tv_sec * 1e3 + t.tv_usec / 1e3; };
  return ms(u.ru_utime) + ms(u.ru_stime);
}

// The first trivial test measured: the first ones include the suite's set-up agreement.
int first_measured() { return std::min(10, kTests / 4); }

// CPU time at the first measured trivial test and at the last, on every rank.
std::vector<double>& cpu_marks() {
  static std::vector<double> m;
  return m;
}

enum class Phase { kTrivial, kMesh, kEmpty };

std::vector<Clock::time_point>& starts(Phase phase) {
  static std::vector<Clock::time_point> trivial;
  static std::vector<Clock::time_point> mesh;
  static std::vector<Clock::time_point> empty;
  return phase == Phase::kTrivial ? trivial : phase == Phase::kMesh ? mesh : empty;
}
std::vector<Sample>& block_ends() {
  static std::vector<Sample> s;
  return s;
}

class ScaleTest : public c10dtest::DistributedTest {
 public:
  ScaleTest(Phase phase, int index) : phase_(phase), index_(index) {}

  void TestBody() override {
    const auto now = Clock::now();
    if (phase_ == Phase::kTrivial && (index_ == first_measured() || index_ == kTests - 1)) {
      cpu_marks().push_back(cpu_ms());
    }
    if (rank() != 0) {
      if (phase_ == Phase::kMesh) mesh();
      return;
    }
    starts(phase_).push_back(now);
    if (phase_ == Phase::kTrivial && (index_ % kBlock == 0 || index_ == kTests - 1)) {
      block_ends().push_back({now, status_kib("VmRSS"), status_kib("VmHWM"),
                              static_cast<long>(mallinfo2().uordblks / 1024)});
    }
    if (phase_ == Phase::kMesh) mesh();
  }

 private:
  void mesh() {
    const std::int64_t n = world_size();
    const auto m = n >= 2 ? c10dtest::DeviceMesh::create({n / 2, 2}, first_ranks(n / 2 * 2))
                          : c10dtest::DeviceMesh::create({1, 1});
    ASSERT_EQ(m->ndim(), 2);
  }
  static std::vector<int> first_ranks(std::int64_t n) {
    std::vector<int> r;
    for (int i = 0; i < n; ++i) r.push_back(i);
    return r;
  }

  Phase phase_;
  int index_;
};

double per_test_ms(const std::vector<Clock::time_point>& t, std::size_t from, std::size_t to) {
  if (to <= from || to >= t.size()) return -1;
  return std::chrono::duration<double, std::milli>(t[to] - t[from]).count() /
         static_cast<double>(to - from);
}

class ScaleReport : public c10dtest::DistributedTest {
 public:
  void TestBody() override {
    // The parts of a test's overhead: one control-plane exchange (every rank), one store
    // request (rank 0 alone, the others wait in the next exchange).
    c10dtest::World& world = c10dtest::World::instance();
    constexpr int kExchanges = 100;
    constexpr int kRequests = 1000;
    // CPU per test and rank over the measured trivial tests: rank 0 (which also serves the
    // store) and the mean of the others.
    const auto& cm = cpu_marks();
    const int measured = kTests - 1 - first_measured();
    const double mine = cm.size() == 2 && measured > 0 ? (cm[1] - cm[0]) / measured : -1;
    const auto cpus = world.all_gather_text("scale-cpu", std::to_string(mine));
    world.all_gather_text("scale-warm", "x");
    auto t = Clock::now();
    for (int i = 0; i < kExchanges; ++i) world.all_gather_text("scale", "x");
    const double exchange_ms =
        std::chrono::duration<double, std::milli>(Clock::now() - t).count() / kExchanges;
    if (rank() != 0) return;
    t = Clock::now();
    for (int i = 0; i < kRequests; ++i) world.control().add("scale/request", 0);
    const double request_us =
        std::chrono::duration<double, std::micro>(Clock::now() - t).count() / kRequests;
    double others = 0;
    for (std::size_t r = 1; r < cpus.size(); ++r) others += std::stod(cpus[r]) / (cpus.size() - 1);
    std::printf("scale: store ranks %d request_us %.1f exchange_ms %.3f cpu_rank0_ms %.3f "
                "cpu_other_ms %.3f\n",
                world_size(), request_us, exchange_ms, std::stod(cpus[0]),
                cpus.size() > 1 ? others : 0.0);
    const auto& tr = starts(Phase::kTrivial);
    const int n = world_size();
    const std::size_t skip = static_cast<std::size_t>(first_measured());
    std::printf("scale: ranks %d tests %d per_test_ms %.3f\n", n, kTests,
                per_test_ms(tr, skip, tr.size() - 1));
    const auto& b = block_ends();
    for (std::size_t i = 0; i + 1 < b.size(); ++i) {
      const double ms = std::chrono::duration<double, std::milli>(b[i + 1].at - b[i].at).count();
      const long done = std::min<long>(static_cast<long>(i + 1) * kBlock, kTests);
      const long count = done - static_cast<long>(i) * kBlock - (done == kTests ? 1 : 0);
      std::printf("scale: block ranks %d tests_done %ld per_test_ms %.3f rss_kib %ld hwm_kib %ld "
                  "heap_kib %ld\n",
                  n, done, count > 0 ? ms / static_cast<double>(count) : -1.0, b[i + 1].rss_kib,
                  b[i + 1].hwm_kib, b[i + 1].heap_kib);
    }
    const auto& me = starts(Phase::kMesh);
    const auto& em = starts(Phase::kEmpty);
    if (!me.empty() && em.size() > 1) {
      // The first mesh test creates the groups; the others find them cached.
      const double first = per_test_ms(me, 0, 1);
      const double rest = per_test_ms(me, 1, me.size() - 1);
      const double empty = per_test_ms(em, 1, em.size() - 1);
      std::printf("scale: mesh ranks %d first_ms %.3f mesh_per_test_ms %.3f empty_per_test_ms "
                  "%.3f extra_ms %.3f\n",
                  n, first, rest, empty, rest - empty);
    }
    std::fflush(stdout);
  }
};

// Registered before main(): RegisterTest needs no argv, and every rank sees the same environment.
[[maybe_unused]] const bool kRegistered = [] {
  auto add = [](const char* suite, const std::string& name, Phase phase, int i) {
    ::testing::RegisterTest(suite, name.c_str(), nullptr, nullptr, __FILE__, __LINE__,
                            [phase, i]() -> c10dtest::DistributedTest* {
                              return new ScaleTest(phase, i);
                            });
  };
  for (int i = 0; i < kTests; ++i) add("ScaleTrivial", "T" + std::to_string(i), Phase::kTrivial, i);
  for (int i = 0; i < kMesh; ++i) add("ScaleMesh", "M" + std::to_string(i), Phase::kMesh, i);
  for (int i = 0; i < kMesh; ++i) add("ScaleMesh", "E" + std::to_string(i), Phase::kEmpty, i);
  ::testing::RegisterTest("ScaleReport", "Print", nullptr, nullptr, __FILE__, __LINE__,
                          []() -> c10dtest::DistributedTest* { return new ScaleReport; });
  return true;
}();

}  // namespace
