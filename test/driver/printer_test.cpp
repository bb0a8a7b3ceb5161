// Rank 0's output is gtest's, line for line, when every rank agrees: the printer suite
// (test/children/printer_suite.cpp) runs under c10dtest at 1, 2 and 3 ranks and as a plain gtest
// program, with gtest's output flags, and the two outputs must match once times are removed.
#include <gtest/gtest.h>

#include <cctype>
#include <ostream>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "child_process.hpp"

#ifndef C10DTEST_PRINTER_SUITE
#error "C10DTEST_PRINTER_SUITE must name the printer suite built with c10dtest::main"
#endif
#ifndef C10DTEST_PRINTER_SUITE_GTEST
#error "C10DTEST_PRINTER_SUITE_GTEST must name the printer suite built with gtest's main"
#endif
#ifndef C10DTEST_MPIEXEC
#define C10DTEST_MPIEXEC ""
#endif

namespace {

using c10dtest_driver::Outcome;
using c10dtest_driver::run;

struct Case {
  int ranks;
  const char* launcher;  // "bare" (one rank), "mpirun" or "self"
  std::string mode;      // C10DTEST_PRINTER_ENV
  std::string env;       // more environment, "NAME=value" or ""
  std::string flags;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.ranks << " ranks (" << c.launcher << "), environment '" << c.mode << "' " << c.env
      << " " << c.flags;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string name = "Np" + std::to_string(c.ranks) + "_" + c.launcher + "_" +
                     (c.mode.empty() ? "none" : c.mode) + "_" +
                     (c.env.empty() ? "" : c.env + "_") + (c.flags.empty() ? "plain" : c.flags);
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name + "_" + std::to_string(info.index);
}

std::vector<Case> cases() {
  std::vector<Case> all;
  const std::vector<std::string> every_flag = {
      "", "--gtest_print_time=0", "--gtest_brief=1", "--gtest_color=yes", "--gtest_repeat=2",
      "--gtest_shuffle --gtest_random_seed=7", "--gtest_fail_fast",
      "--gtest_filter=Plain.*:*Param*", "--gtest_also_run_disabled_tests",
      "--gtest_brief=1 --gtest_print_time=0"};
  for (const auto& f : every_flag) all.push_back({1, "bare", "", "", f});
  all.push_back({1, "bare", "", "GTEST_COLOR=yes", ""});
  all.push_back({1, "bare", "", "GTEST_BRIEF=1", ""});
  for (const char* mode : {"setup-fatal", "setup-failure", "setup-skip", "teardown-failure"}) {
    for (const char* f : {"", "--gtest_brief=1", "--gtest_repeat=2"}) {
      all.push_back({1, "bare", mode, "", f});
    }
  }
  // With more ranks, not setup-skip: gtest prints a skipped environment's message from every
  // process itself, so an MPI launcher shows it once per rank.
  for (auto [ranks, launcher] : {std::pair<int, const char*>{2, "mpirun"}, {3, "self"}}) {
    for (const char* f : {"", "--gtest_brief=1", "--gtest_repeat=2",
                          "--gtest_shuffle --gtest_random_seed=7", "--gtest_color=yes"}) {
      all.push_back({ranks, launcher, "", "", f});
    }
    for (const char* mode : {"setup-fatal", "setup-failure", "teardown-failure"}) {
      all.push_back({ranks, launcher, mode, "", ""});
    }
  }
  return all;
}

// Times vary from run to run: "(12 ms)" and "(345 ms total)" become "(N ms)", "(N ms total)".
std::string without_times(const std::string& s) {
  static const std::regex ms(R"(\(\d+ ms( total)?\))");
  return std::regex_replace(s, ms, "(N ms$1)");
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

class PrinterParity : public ::testing::TestWithParam<Case> {};

TEST_P(PrinterParity, RankZeroPrintsWhatGtestPrints) {
  const Case& c = GetParam();
  const std::string mpiexec = C10DTEST_MPIEXEC;
  if (std::string(c.launcher) == "mpirun" && mpiexec.empty()) {
    GTEST_SKIP() << "no mpiexec found at configure time";
  }
  std::string env = "C10DTEST_PRINTER_ENV=" + c.mode + " " + c.env + " ";
  std::string launch;
  if (std::string(c.launcher) == "mpirun") {
    launch = mpiexec + " -x C10DTEST_PRINTER_ENV " +
             (c.env.empty() ? "" : "-x " + c.env.substr(0, c.env.find('=')) + " ") + "-n " +
             std::to_string(c.ranks) + " ";
  }
  const std::string self =
      std::string(c.launcher) == "self" ? " --c10dtest_world_size=" + std::to_string(c.ranks) : "";
  // stdout only: launchers and c10dtest speak on stderr.
  const Outcome plain = run(env + C10DTEST_PRINTER_SUITE_GTEST " " + c.flags + " 2>/dev/null");
  const Outcome ours =
      run(env + launch + C10DTEST_PRINTER_SUITE + self + " " + c.flags + " 2>/dev/null");
  EXPECT_EQ(ours.exit_code, plain.exit_code) << ours.output;

  std::vector<std::string> expected = lines(without_times(plain.output));
  std::vector<std::string> got = lines(without_times(ours.output));
  if (c.ranks > 1 && c.flags.find("brief") == std::string::npos) {
    // The one line c10dtest adds: how many ranks agree on what follows.
    const std::string note = "Note: c10dtest runs " + std::to_string(c.ranks) + " ranks";
    ASSERT_FALSE(got.empty()) << ours.output;
    EXPECT_EQ(got.front().rfind(note, 0), 0u) << ours.output;
    got.erase(got.begin());
  }
  ASSERT_GT(expected.size(), 5u) << "the plain gtest run printed too little:\n" << plain.output;
  std::size_t i = 0;
  while (i < expected.size() && i < got.size() && expected[i] == got[i]) ++i;
  if (i < expected.size() || i < got.size()) {
    ADD_FAILURE() << "line " << i + 1 << " differs:\n  gtest:    "
                  << (i < expected.size() ? expected[i] : "<end>") << "\n  c10dtest: "
                  << (i < got.size() ? got[i] : "<end>") << "\n--- gtest's output ---\n"
                  << plain.output << "--- c10dtest's output ---\n" << ours.output;
  }
}

INSTANTIATE_TEST_SUITE_P(Runs, PrinterParity, ::testing::ValuesIn(cases()), case_name);

}  // namespace
