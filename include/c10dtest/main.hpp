// Entry points. Link c10dtest::main (c10dtest_main) instead of GTest::gtest_main and you are done;
// a custom main looks like this:
//
//   int main(int argc, char** argv) {
//     // your own set-up
//     return c10dtest::run_main(argc, argv);
//   }
//
// or, when it must run RUN_ALL_TESTS itself:
//
//   int main(int argc, char** argv) {
//     if (int done = c10dtest::init(&argc, argv); done >= 0) return done;
//     return c10dtest::finalize(RUN_ALL_TESTS());
//   }
#pragma once

namespace c10dtest {

// Parses --c10dtest_* and gtest flags, detects the launch and meets the other ranks. Returns -1
// when this process should now call RUN_ALL_TESTS (a rank; also with --gtest_list_tests, which
// then lists the tests on rank 0 only, without meeting the others); otherwise the process's exit
// code (self-spawn parent after its ranks ended, a configuration error).
int init(int* argc, char** argv);

// Agrees on one exit code across ranks (the worst), stops the watchdog, meets the other ranks a
// last time and tears the world down. Returns the exit code every rank should use.
int finalize(int exit_code);

// init + RUN_ALL_TESTS + finalize.
int run_main(int argc, char** argv);

}  // namespace c10dtest
