// DistributedTest::temp_dir(): one directory per test, made by rank 0, seen by every rank,
// removed after the test's result exchange.
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "c10dtest/error.hpp"
#include "c10dtest/launch.hpp"
#include "c10dtest/world.hpp"

namespace c10dtest {

const std::string& World::test_temp_dir() {
  if (!temp_dir_.empty()) return temp_dir_;
  if (!in_test_) {
    throw ConfigError("temp_dir() is for a test (SetUp, the test body or TearDown), not for "
                      "suite or environment code: the directory goes when the test ends");
  }
  std::string made;
  if (rank() == 0) {
    try {
      std::string t = private_runtime_dir(process_env()) + "/test-XXXXXX";
      if (::mkdtemp(t.data()) != nullptr) {
        made = t;
      } else {
        made = "!cannot make " + t + ": " + std::strerror(errno);
      }
    } catch (const Error& e) {
      made = std::string("!") + e.what();
    }
  }
  const std::string dir = all_gather_text("temp-dir", made).at(0);
  if (!dir.empty() && dir[0] == '!') {
    throw ConfigError("temp_dir(): rank 0 could not make the test's directory: " + dir.substr(1));
  }
  struct stat s {};
  if (::stat(dir.c_str(), &s) != 0 || !S_ISDIR(s.st_mode)) {
    throw ConfigError("temp_dir(): rank " + std::to_string(rank()) + " cannot see " + dir +
                      ", which rank 0 made: ranks on several hosts need TMPDIR on a filesystem "
                      "they share");
  }
  temp_dir_ = dir;
  return temp_dir_;
}

void World::remove_test_temp_dir() {
  if (temp_dir_.empty()) return;
  if (rank() == 0) {
    std::error_code ignored;  // a test that removed it itself, or a file still open: no matter
    std::filesystem::remove_all(temp_dir_, ignored);
  }
  temp_dir_.clear();
}

}  // namespace c10dtest
