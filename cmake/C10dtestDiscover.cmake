# Run after each build of a target registered with c10dtest_add_test(... DISCOVER): lists the
# binary's tests (bare, one process, --gtest_list_tests) and writes one CTest entry per test and
# world size to OUTPUT, which CTest includes.
# Usage: cmake -D BINARY=<exe> -D LAUNCH=<launch.cmake> -D OUTPUT=<tests.cmake> -D PREFIX=<prefix>
#              -D TIMEOUT=<seconds> -P C10dtestDiscover.cmake
# LAUNCH sets _c10dtest_sizes, _c10dtest_timeout and, per world size N, _c10dtest_cmd_N (the
# launch command), _c10dtest_env_N and _c10dtest_labels_N.
include("${LAUNCH}")
file(REMOVE "${OUTPUT}")  # a failed listing leaves no stale entries behind

execute_process(COMMAND "${BINARY}" --gtest_list_tests --gtest_color=no
  TIMEOUT ${TIMEOUT}
  OUTPUT_VARIABLE listing
  ERROR_VARIABLE errors
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "c10dtest: listing the tests of ${BINARY} (--gtest_list_tests, bare, "
                      "within ${TIMEOUT} s) failed: ${rc}\n${listing}${errors}")
endif()

# Bracket arguments hold any text but their own closing bracket.
function(_c10dtest_bracket out value)
  set(eq "=")
  while(value MATCHES "\\]${eq}\\]")
    string(APPEND eq "=")
  endwhile()
  set(${out} "[${eq}[${value}]${eq}]" PARENT_SCOPE)
endfunction()

# gtest's list: "Suite.  # TypeParam = int" lines, then "  Test  # GetParam() = 3" lines.
string(REPLACE ";" "\\;" listing "${listing}")
string(REPLACE "\n" ";" lines "${listing}")
set(script "")
set(suite "")
set(count 0)
foreach(line IN LISTS lines)
  string(REGEX REPLACE "  #.*$" "" line "${line}")
  string(STRIP "${line}" name)
  if(name STREQUAL "")
    continue()
  endif()
  if(NOT line MATCHES "^ ")
    if(NOT name MATCHES "\\.$")
      message(FATAL_ERROR "c10dtest: ${BINARY} --gtest_list_tests printed '${line}', which is "
                          "not gtest's list (the listing run must print nothing else on stdout)")
    endif()
    string(REGEX REPLACE "\\.$" "" suite "${name}")
    continue()
  endif()
  if(suite STREQUAL "")
    message(FATAL_ERROR "c10dtest: ${BINARY} --gtest_list_tests listed test '${name}' before any "
                        "suite")
  endif()
  set(test "${suite}.${name}")
  math(EXPR count "${count} + 1")
  foreach(n IN LISTS _c10dtest_sizes)
    set(args "")
    foreach(a IN LISTS _c10dtest_cmd_${n} ITEMS "--gtest_filter=${test}")
      if(a STREQUAL "")
        continue()
      endif()
      _c10dtest_bracket(q "${a}")
      string(APPEND args " ${q}")
    endforeach()
    _c10dtest_bracket(entry "${PREFIX}${test}.np${n}")
    _c10dtest_bracket(labels "${_c10dtest_labels_${n}}")
    string(APPEND script "add_test(${entry}${args})\n"
                         "set_tests_properties(${entry} PROPERTIES PROCESSORS ${n} "
                         "TIMEOUT ${_c10dtest_timeout} LABELS ${labels}")
    if(NOT _c10dtest_env_${n} STREQUAL "")
      _c10dtest_bracket(env "${_c10dtest_env_${n}}")
      string(APPEND script " ENVIRONMENT ${env}")
    endif()
    if(test MATCHES "(^|\\.|/)DISABLED_")
      string(APPEND script " DISABLED TRUE")
    endif()
    string(APPEND script ")\n")
  endforeach()
endforeach()
file(WRITE "${OUTPUT}" "# ${count} tests of ${BINARY}, listed after its build.\n${script}")
