// main() of c10dtest::main: link it instead of GTest::gtest_main.
#include "c10dtest/main.hpp"

int main(int argc, char** argv) { return c10dtest::run_main(argc, argv); }
