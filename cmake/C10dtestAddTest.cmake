# c10dtest_add_test(<target> [NAME <name>] [WORLD_SIZES 1 2 4] [LAUNCHER mpirun|self]
#                   [TIMEOUT <seconds>] [ARGS ...] [LABELS ...])
#
# Registers one CTest entry per world size for a test executable linked with c10dtest::main:
#   world size 1: the bare binary;
#   LAUNCHER mpirun (default when FindMPI found mpiexec): MPIEXEC_EXECUTABLE MPIEXEC_NUMPROC_FLAG N
#     MPIEXEC_PREFLAGS <binary> MPIEXEC_POSTFLAGS ARGS;
#   LAUNCHER self: <binary> --c10dtest_world_size=N ARGS (the binary forks its ranks).
# Each entry gets PROCESSORS N, the labels "c10dtest" and "np<N>", and, for OpenMPI, the
# environment that lets it run as root and oversubscribe a small machine. The watchdog
# (--c10dtest_timeout) is set below the CTest TIMEOUT so a hang is reported by c10dtest itself.
function(c10dtest_add_test target)
  cmake_parse_arguments(ARG "" "NAME;LAUNCHER;TIMEOUT" "WORLD_SIZES;ARGS;LABELS" ${ARGN})
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
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  math(EXPR watchdog "${ARG_TIMEOUT} * 4 / 5")
  set(ompi_env
    OMPI_ALLOW_RUN_AS_ROOT=1
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    OMPI_MCA_rmaps_base_oversubscribe=1
    OMPI_MCA_btl_vader_single_copy_mechanism=none)
  foreach(n IN LISTS ARG_WORLD_SIZES)
    if(n EQUAL 1)
      set(name ${ARG_NAME}.np1)
      set(cmd $<TARGET_FILE:${target}>)
    elseif(ARG_LAUNCHER STREQUAL "mpirun")
      if(NOT MPIEXEC_EXECUTABLE)
        message(FATAL_ERROR "c10dtest_add_test(${target}): LAUNCHER mpirun but no MPIEXEC_EXECUTABLE")
      endif()
      set(name ${ARG_NAME}.mpirun.np${n})
      set(cmd ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n} ${MPIEXEC_PREFLAGS}
          $<TARGET_FILE:${target}> ${MPIEXEC_POSTFLAGS})
    elseif(ARG_LAUNCHER STREQUAL "self")
      set(name ${ARG_NAME}.self.np${n})
      set(cmd $<TARGET_FILE:${target}> --c10dtest_world_size=${n})
    else()
      message(FATAL_ERROR "c10dtest_add_test(${target}): LAUNCHER must be mpirun or self")
    endif()
    add_test(NAME ${name} COMMAND ${cmd} --c10dtest_timeout=${watchdog} ${ARG_ARGS})
    set_tests_properties(${name} PROPERTIES
      PROCESSORS ${n}
      TIMEOUT ${ARG_TIMEOUT}
      LABELS "c10dtest;np${n};${ARG_LABELS}"
      ENVIRONMENT "${ompi_env}")
  endforeach()
endfunction()
