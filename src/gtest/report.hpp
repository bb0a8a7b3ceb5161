// The JUnit XML report (--gtest_output=xml[:PATH]), written by c10dtest instead of gtest.
//
// gtest writes its report once, when the program ends; a run that a crash, a hang or the
// launcher ends never gets there, and CI keeps nothing. This report is rewritten atomically
// (a temporary file in the same directory, then rename) after every test, so the file holds
// every finished test at every moment. When the run ends by a fault, the process that ends it
// completes the file with the test in progress, failed, with the cause (which rank, what
// happened).
//
// Every rank keeps the same records (every rank knows every rank's results), so a survivor can
// write the file when rank 0 is the one that died. Only rank 0 writes it while the run is healthy.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace c10dtest::detail {

class Report {
 public:
  // `path` "" disables the report. `writer`: this process rewrites the file as tests finish.
  // Failures this rank records itself are tagged "[rank R of W]" when W > 1, as the failures it
  // adopts from the other ranks are.
  Report(std::string path, bool writer, int rank, int world_size);

  // The file gtest's --gtest_output flag asks for ("" when it asks for none or for JSON):
  // "xml" -> test_detail.xml, "xml:DIR/" -> DIR/<binary>.xml, "xml:FILE" -> FILE.
  static std::string path_from_gtest_flag();

  const std::string& path() const { return path_; }
  bool enabled() const { return !path_.empty(); }
  bool writer() const { return writer_; }

  // A new iteration (--gtest_repeat): the file describes the latest one, as gtest's does.
  void start_iteration(std::int64_t timestamp_ms, int random_seed);
  // What runs now, and is failed if the run ends before it does: a test, a suite's own code
  // (SetUpTestSuite, TearDownTestSuite, fixture code between tests), start-up or shutdown.
  // `display` is how messages name it ("Suite.Test").
  void begin(const std::string& suite, const std::string& name, const std::string& file, int line,
             const std::string& display);
  std::string in_progress() const;
  // The test's verdict, as gtest records it on this rank (every rank's failures included).
  void add_test(const ::testing::TestInfo& info);
  // Failures of a suite's own code, as a test case named after it.
  void add_suite_failure(const ::testing::TestSuite& suite);
  // Failures outside any suite (a global Environment), as gtest reports them.
  void add_unit_failure(const ::testing::TestResult& result);
  // Rewrites the file (the writer only). Errors are printed once, never thrown. Unless
  // `force`d, a rewrite is skipped while the last one took 1 ms or more and ended less than 20
  // times its duration ago (rewriting is O(report) and would otherwise cost a suite of thousands
  // of tests more than its tests: at most about 5% of the run goes to it); the next write, a
  // forced one at the end, and every fault report include all the skipped writes held.
  void write(bool force = false);

  // Completes the file for a run that ends now: the work in progress fails with `cause`.
  // Writes whatever this process is (the caller decides who reports); later writes are ignored.
  void write_fault(const std::string& cause);
  // The same, but a later write_fault() (a better explanation, found after a moment's wait)
  // still replaces it: written at once, so that a launcher's SIGKILL during that moment leaves
  // a report that names the fault.
  void write_provisional_fault(const std::string& cause);

  // Async-signal-safe, for a fatal signal on the writer (rank 0, or world size 1): completes the
  // file as write_fault() would, from a copy prepared at the latest begin(), with `cause` (plain
  // text: a signal name and a test name). Does nothing after write_fault().
  static void write_fault_from_signal_handler(const char* cause);

  // XML-escaped text for an attribute value; characters XML cannot hold are dropped.
  static std::string escape_attribute(const std::string& s);

 private:
  struct Case {
    std::string xml;  // the <testcase> element
    bool failed = false;
    bool skipped = false;
    std::int64_t time_ms = 0;
  };
  // A suite's cases, rendered once as they are added: a rewrite copies bytes, it renders no
  // test again. A case's text never moves once added (a deque), so the crash handler's copy
  // can point at it instead of copying it.
  struct Suite {
    std::string name;
    std::int64_t timestamp_ms = 0;
    std::deque<std::string> cases;  // the <testcase> elements
    int tests = 0;
    int failures = 0;
    int skipped = 0;
    std::int64_t time_ms = 0;
    void add(Case c);
  };
  // The document as a sequence of pieces: the headers it makes, and the case texts it points at.
  struct Pieces {
    std::deque<std::string> own;  // never moves an element: parts may point into them
    std::vector<std::pair<const char*, std::size_t>> parts;
    std::size_t extra_at = 0;  // the index of the extra case's first part
    void add_own(std::string text);
    void add_ref(const std::string& text) { parts.emplace_back(text.data(), text.size()); }
  };
  Suite& suite_named(const std::string& name);
  // After a test: what runs now is `suite`'s own code (under mu_).
  void suite_code_runs_locked(const std::string& suite);
  void add_case(const std::string& suite, Case c);
  void add_case_locked(const std::string& suite, Case c);  // under mu_
  // The whole document; `extra` (a fault's test case) is added to suite `extra_suite`.
  std::string render(const std::string& extra_suite, const Case* extra) const;
  // The same, as pieces appended to `out` (filled in place: its parts point into its own
  // strings); `extra_parts` (the fault case, in several pieces) stands for `extra`.
  void layout(const std::string& extra_suite, const Case* extra,
              const std::vector<std::string>& extra_parts, Pieces& out) const;
  void write_locked(const std::string& text);
  // The fault case for the work in progress (its message is "c10dtest: the run ended here\n" +
  // cause).
  Case fault_case(const std::string& cause) const;
  // The writer's file as a fault now would leave it, split around the cause (its escaped copy in
  // the message attribute and its copy in the CDATA), for the signal handler.
  void prepare_signal_template();
  struct Template {
    std::string path;
    std::string tmp;
    Pieces pieces;               // the document without the cause
    std::size_t attribute_at = 0;  // the part before which the cause goes, escaped (message=)
    std::size_t cdata_at = 0;      // the part before which it goes again, in the CDATA
  };
  std::deque<std::unique_ptr<Template>> templates_;  // the newest is published
  // The suites of earlier --gtest_repeat iterations that a kept template may still point into.
  std::deque<std::vector<Suite>> retired_;

  std::string path_;
  bool writer_;
  std::string own_tag_;
  mutable std::mutex mu_;
  std::vector<Suite> suites_;
  std::map<std::string, std::size_t> suite_index_;  // name -> index in suites_
  std::size_t body_bytes_ = 0;                      // all cases' texts together
  std::chrono::steady_clock::time_point last_write_end_{};
  std::chrono::steady_clock::duration last_write_cost_{};
  std::int64_t start_ms_ = 0;
  int random_seed_ = 0;
  std::atomic<bool> sealed_{false};  // a fault's report is written: nothing may overwrite it
  bool warned_ = false;
  std::string now_suite_ = "c10dtest";
  std::string now_name_ = "start-up";
  std::string now_display_ = "start-up";
  std::string now_file_;
  int now_line_ = 0;
  std::int64_t now_start_ms_ = 0;
};

}  // namespace c10dtest::detail
