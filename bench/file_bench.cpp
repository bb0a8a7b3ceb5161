// Verifying a sharded dict against a 1 GiB reference file: the memory each rank needs beyond
// its own shards, for a memory-mapped safetensors file against the same file copied into memory
// and a torch.save archive (read whole), side by side in one run (bench/file.sh, 4 ranks).
//
// The reference: 4 tensors of [65536, 1024] floats (256 MiB each), value (index % 1000) / 2.
// Every rank builds only its own rows (DTensor Shard(0)), then reads the file and verifies
// (shard-local). "extra" is the rank's peak RSS during read + verify minus its RSS before
// (Linux: /proc/self/clear_refs resets the peak); file pages the rank touches count, as they
// should. Rank 0 prints the largest extra over the ranks against the rank's shard bytes.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/state_dict_file.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

constexpr std::int64_t kRows = 65536;
constexpr std::int64_t kCols = 1024;
constexpr int kTensors = 4;

// kB from /proc/self/status ("VmHWM", "VmRSS").
std::int64_t status_kb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::strtoll(line.c_str() + field.size() + 1, nullptr, 10);
  }
  return -1;
}
void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }

at::Tensor rows(std::int64_t begin, std::int64_t count) {
  return at::arange(begin * kCols, (begin + count) * kCols, at::kLong)
      .remainder(1000)
      .to(at::kFloat)
      .mul_(0.5)
      .reshape({count, kCols});
}

class FileBench : public c10dtest::DistributedTest {
 protected:
  void SetUp() override {
    DistributedTest::SetUp();
    set_timeout(std::chrono::minutes(20));
  }
};

TEST_F(FileBench, VerifyAgainstOneGiBFile) {
  std::string dir;
  if (rank() == 0) {
    std::string t = (std::filesystem::temp_directory_path() / "c10dtest-file-bench-XXXXXX").string();
    ASSERT_NE(::mkdtemp(t.data()), nullptr);
    dir = t;
    c10dtest::StateDict full;
    for (int i = 0; i < kTensors; ++i) full.insert("w" + std::to_string(i), rows(0, kRows));
    c10dtest::write_state_dict(dir + "/ref.safetensors", full);
    c10dtest::write_state_dict(dir + "/ref.pt", full);
  }
  dir = c10dtest::World::instance().all_gather_text("bench-dir", dir).at(0);

  // This rank's rows only.
  auto mesh = c10dtest::DeviceMesh::create({world_size()});
  const std::int64_t per = (kRows + world_size() - 1) / world_size();
  const std::int64_t begin = std::min<std::int64_t>(per * rank(), kRows);
  const std::int64_t count = std::min<std::int64_t>(per, kRows - begin);
  c10dtest::StateDict dist;
  for (int i = 0; i < kTensors; ++i) {
    dist.insert("w" + std::to_string(i),
                c10dtest::DTensor(rows(begin, count), mesh, {c10dtest::Shard{0}}, {kRows, kCols}));
  }
  const double shard_mib = static_cast<double>(kTensors * count * kCols * 4) / (1 << 20);

  struct Mode {
    const char* name;
    const char* file;
    bool map;
  };
  for (const Mode& m : {Mode{"safetensors, mapped", "ref.safetensors", true},
                        Mode{"safetensors, copied", "ref.safetensors", false},
                        Mode{"torch.save", "ref.pt", true}}) {
    const std::int64_t before = status_kb("VmRSS");
    reset_peak();
    const auto t0 = std::chrono::steady_clock::now();
    bool ok = false;
    {
      c10dtest::ReadFileOptions o;
      o.map = m.map;
      const c10dtest::StateDict ref = c10dtest::read_state_dict(dir + "/" + m.file, o);
      ok = static_cast<bool>(c10dtest::verify_state_dict(ref, dist));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double extra_mib = static_cast<double>(status_kb("VmHWM") - before) / 1024;
    const auto all = c10dtest::World::instance().all_gather_text(
        std::string("bench-") + m.name, std::to_string(extra_mib));
    double worst = 0;
    for (const auto& s : all) worst = std::max(worst, std::stod(s));
    EXPECT_TRUE(ok) << m.name;
    if (rank() == 0) {
      std::printf("%-20s ranks=%d  file 1024 MiB  shard %.0f MiB/rank  extra peak RSS %.0f MiB/rank "
                  "(max over ranks) = %.2fx shard  read+verify %.2f s  %s\n",
                  m.name, world_size(), shard_mib, worst, worst / shard_mib, seconds,
                  ok ? "verified" : "FAILED");
      std::fflush(stdout);
    }
  }
  c10dtest::World::instance().min_over_ranks(0);
  if (rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
