# c10dtest_add_test(<target> [NAME <name>] [WORLD_SIZES 1 2 4] [LAUNCHER mpirun|srun|self]
#                   [TIMEOUT <seconds>] [ARGS ...] [LABELS ...]
#                   [DISCOVER [TEST_PREFIX <prefix>] [DISCOVERY_TIMEOUT <seconds>]])
#
# Registers one CTest entry per world size for a test executable linked with c10dtest::main
# (with DISCOVER: per gtest test and world size, see below):
#   world size 1: the bare binary (<name>.np1);
#   LAUNCHER mpirun (the default when FindMPI found an mpiexec): <name>.mpirun.np<N>, run as
#     MPIEXEC_EXECUTABLE MPIEXEC_NUMPROC_FLAG N MPIEXEC_PREFLAGS <binary> MPIEXEC_POSTFLAGS ARGS;
#   LAUNCHER srun: <name>.srun.np<N>, run as SRUN_EXECUTABLE --ntasks=N --kill-on-bad-exit=1
#     C10DTEST_SRUN_FLAGS <binary> ARGS, inside an allocation or on a cluster where srun
#     allocates by itself;
#   LAUNCHER self: <name>.self.np<N>, run as <binary> --c10dtest_world_size=N ARGS (the binary
#     starts its own ranks; the default without an mpiexec).
# Each entry gets PROCESSORS N, the labels "c10dtest", "np<N>" and the launcher's name, and a
# TIMEOUT (300 s by default). c10dtest's watchdog (--c10dtest_timeout) is set to 4/5 of it, so
# a hang is reported by c10dtest, naming the stuck ranks, before CTest kills the entry.
#
# DISCOVER: one entry per gtest test and world size instead, named <prefix><Suite>.<Test>.np<N>
# (TEST_PREFIX is empty by default; give one to register a binary twice, e.g. with two
# launchers), each running the launch command above with --gtest_filter=<Suite>.<Test>, with the
# same PROCESSORS, TIMEOUT (per test), labels and environment. After each build of the target
# (POST_BUILD), the binary is run bare, as one process, with --gtest_list_tests only (like
# gtest_discover_tests): that run must finish within DISCOVERY_TIMEOUT (30 s), print nothing
# but gtest's list on stdout and need no GPU, launcher or network (c10dtest's main lists the
# tests without joining a world). Tests named DISABLED_ get disabled entries. One launch per test
# costs the start-up of every rank each time (about 2-3 s at 4 ranks on 2 cores, against a few
# milliseconds per test in one launch): the per-binary default is the quick way to run a whole
# suite; DISCOVER is for IDEs, `ctest -R` and rerunning one failed test.
#
# Open MPI refuses to run as root and to start more ranks than cores. Where that applies at
# configure time (Open MPI's mpirun; CMake run as root; N above the physical cores), the entry's
# environment allows it; elsewhere nothing is added. c10dtest's processes never call MPI_Init
# (mpirun only starts them; their traffic is Gloo or NCCL), so no MPI transport settings are
# needed, in containers either.
function(c10dtest_add_test target)
  cmake_parse_arguments(ARG "DISCOVER" "NAME;LAUNCHER;TIMEOUT;TEST_PREFIX;DISCOVERY_TIMEOUT"
                        "WORLD_SIZES;ARGS;LABELS" ${ARGN})
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "c10dtest_add_test(${target}): unknown arguments ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT TARGET ${target})
    message(FATAL_ERROR "c10dtest_add_test(${target}): no target named ${target}")
  endif()
  if(NOT ARG_NAME)
    set(ARG_NAME ${target})
  endif()
  if(NOT ARG_WORLD_SIZES)
    set(ARG_WORLD_SIZES 1)
  endif()
  if(NOT ARG_LAUNCHER)
    if(MPIEXEC_EXECUTABLE)
      set(ARG_LAUNCHER mpirun)
    else()
      set(ARG_LAUNCHER self)
    endif()
  endif()
  if(NOT ARG_LAUNCHER MATCHES "^(mpirun|srun|self)$")
    message(FATAL_ERROR "c10dtest_add_test(${target}): LAUNCHER must be mpirun, srun or self, "
                        "not '${ARG_LAUNCHER}'")
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(NOT ARG_TIMEOUT MATCHES "^[0-9]+$" OR ARG_TIMEOUT LESS 5)
    message(FATAL_ERROR "c10dtest_add_test(${target}): TIMEOUT must be a whole number of seconds "
                        "(at least 5), not '${ARG_TIMEOUT}'")
  endif()
  math(EXPR watchdog "${ARG_TIMEOUT} * 4 / 5")
  if(NOT ARG_DISCOVER AND (DEFINED ARG_TEST_PREFIX OR DEFINED ARG_DISCOVERY_TIMEOUT))
    message(FATAL_ERROR "c10dtest_add_test(${target}): TEST_PREFIX and DISCOVERY_TIMEOUT need "
                        "DISCOVER")
  endif()
  if(NOT ARG_DISCOVERY_TIMEOUT)
    set(ARG_DISCOVERY_TIMEOUT 30)
  endif()
  if(NOT ARG_DISCOVERY_TIMEOUT MATCHES "^[1-9][0-9]*$")
    message(FATAL_ERROR "c10dtest_add_test(${target}): DISCOVERY_TIMEOUT must be a whole number "
                        "of seconds, not '${ARG_DISCOVERY_TIMEOUT}'")
  endif()
  set(discovered "")  # what the discovery script needs per world size

  if(ARG_LAUNCHER STREQUAL "mpirun")
    if(NOT MPIEXEC_EXECUTABLE)
      message(FATAL_ERROR "c10dtest_add_test(${target}): LAUNCHER mpirun needs FindMPI's "
                          "MPIEXEC_EXECUTABLE (find_package(MPI) found none)")
    endif()
    _c10dtest_open_mpi(open_mpi)
    execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE)
    set(numproc_flag ${MPIEXEC_NUMPROC_FLAG})
    if(NOT numproc_flag)
      set(numproc_flag -n)
    endif()
  elseif(ARG_LAUNCHER STREQUAL "srun")
    find_program(SRUN_EXECUTABLE srun)
    if(NOT SRUN_EXECUTABLE)
      message(FATAL_ERROR "c10dtest_add_test(${target}): LAUNCHER srun but no srun found "
                          "(set SRUN_EXECUTABLE)")
    endif()
  endif()
  cmake_host_system_information(RESULT cores QUERY NUMBER_OF_PHYSICAL_CORES)

  foreach(n IN LISTS ARG_WORLD_SIZES)
    if(NOT n MATCHES "^[1-9][0-9]*$")
      message(FATAL_ERROR "c10dtest_add_test(${target}): '${n}' in WORLD_SIZES is not a "
                          "positive whole number")
    endif()
    set(env "")
    set(launcher ${ARG_LAUNCHER})
    if(n EQUAL 1)
      set(name ${ARG_NAME}.np1)
      set(launcher bare)
      set(cmd $<TARGET_FILE:${target}>)
    elseif(ARG_LAUNCHER STREQUAL "mpirun")
      set(name ${ARG_NAME}.mpirun.np${n})
      set(cmd ${MPIEXEC_EXECUTABLE} ${numproc_flag} ${n} ${MPIEXEC_PREFLAGS}
          $<TARGET_FILE:${target}> ${MPIEXEC_POSTFLAGS})
      if(open_mpi)
        if(uid STREQUAL "0")
          list(APPEND env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
        endif()
        if(n GREATER cores)
          # Open MPI 4 reads the first, Open MPI 5 (PRRTE) the second.
          list(APPEND env OMPI_MCA_rmaps_base_oversubscribe=1
                          PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe)
        endif()
      endif()
    elseif(ARG_LAUNCHER STREQUAL "srun")
      set(name ${ARG_NAME}.srun.np${n})
      # --kill-on-bad-exit=1: once a task exits non-zero, Slurm ends the others; without it srun
      # waits for a stopped (or hung, unreachable) task after the rest have reported it.
      set(cmd ${SRUN_EXECUTABLE} --ntasks=${n} --kill-on-bad-exit=1 ${C10DTEST_SRUN_FLAGS}
          $<TARGET_FILE:${target}>)
    else()
      set(name ${ARG_NAME}.self.np${n})
      set(cmd $<TARGET_FILE:${target}> --c10dtest_world_size=${n})
    endif()
    if(ARG_DISCOVER)
      string(APPEND discovered
        "set(_c10dtest_cmd_${n} [==[${cmd};--c10dtest_timeout=${watchdog};${ARG_ARGS}]==])\n"
        "set(_c10dtest_env_${n} [==[${env}]==])\n"
        "set(_c10dtest_labels_${n} [==[c10dtest;np${n};${launcher};${ARG_LABELS}]==])\n")
      continue()
    endif()
    add_test(NAME ${name} COMMAND ${cmd} --c10dtest_timeout=${watchdog} ${ARG_ARGS})
    set_tests_properties(${name} PROPERTIES
      PROCESSORS ${n}
      TIMEOUT ${ARG_TIMEOUT}
      LABELS "c10dtest;np${n};${launcher};${ARG_LABELS}")
    if(env)
      set_tests_properties(${name} PROPERTIES ENVIRONMENT "${env}")
    endif()
  endforeach()
  if(ARG_DISCOVER)
    # Beside this file, wherever the function is called from (a consumer's own directory).
    _c10dtest_discover(${target} "${ARG_NAME}" "${ARG_TEST_PREFIX}" "${ARG_WORLD_SIZES}"
                       ${ARG_TIMEOUT} ${ARG_DISCOVERY_TIMEOUT} "${discovered}"
                       "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/C10dtestDiscover.cmake")
  endif()
endfunction()

# DISCOVER: after each build, C10dtestDiscover.cmake lists the tests and writes their entries;
# CTest includes them (TEST_INCLUDE_FILES), or an entry that fails when the binary was not built.
function(_c10dtest_discover target name prefix sizes timeout discovery_timeout discovered script)
  get_property(n GLOBAL PROPERTY _C10DTEST_DISCOVER_COUNT)
  if(NOT n)
    set(n 0)
  endif()
  math(EXPR n "${n} + 1")
  set_property(GLOBAL PROPERTY _C10DTEST_DISCOVER_COUNT ${n})
  set(dir "${CMAKE_CURRENT_BINARY_DIR}/c10dtest_discover/${name}-${n}")
  # The launch commands hold $<TARGET_FILE:...>: written at generation time, per configuration.
  file(GENERATE OUTPUT "${dir}/launch-$<CONFIG>.cmake" CONTENT
    "set(_c10dtest_sizes ${sizes})\nset(_c10dtest_timeout ${timeout})\n${discovered}")
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND "${CMAKE_COMMAND}" -D "BINARY=$<TARGET_FILE:${target}>" -D "LAUNCH=${dir}/launch-$<CONFIG>.cmake"
            -D "OUTPUT=${dir}/tests.cmake" -D "PREFIX=${prefix}" -D "TIMEOUT=${discovery_timeout}"
            -P "${script}"
    BYPRODUCTS "${dir}/tests.cmake"
    VERBATIM)
  file(WRITE "${dir}/include.cmake"
    "if(EXISTS [==[${dir}/tests.cmake]==])\n"
    "  include([==[${dir}/tests.cmake]==])\n"
    "else()\n"
    "  add_test([==[${prefix}${name}_NOT_BUILT]==] [==[${prefix}${name}_NOT_BUILT]==])\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${dir}/include.cmake")
endfunction()

# Whether MPIEXEC_EXECUTABLE is Open MPI's (its --version says so), cached per executable.
function(_c10dtest_open_mpi out)
  if(NOT DEFINED _C10DTEST_OPEN_MPI OR NOT _C10DTEST_OPEN_MPI_EXE STREQUAL MPIEXEC_EXECUTABLE)
    execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE version
                    ERROR_VARIABLE version RESULT_VARIABLE rc TIMEOUT 30)
    set(is_open_mpi FALSE)
    if(rc EQUAL 0 AND version MATCHES "Open MPI|OpenRTE")
      set(is_open_mpi TRUE)
    endif()
    set(_C10DTEST_OPEN_MPI ${is_open_mpi} CACHE INTERNAL "MPIEXEC_EXECUTABLE is Open MPI's")
    set(_C10DTEST_OPEN_MPI_EXE "${MPIEXEC_EXECUTABLE}" CACHE INTERNAL "")
  endif()
  set(${out} ${_C10DTEST_OPEN_MPI} PARENT_SCOPE)
endfunction()
