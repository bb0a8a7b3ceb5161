# c10dtest_add_test(<target> [NAME <name>] [WORLD_SIZES 1 2 4] [LAUNCHER mpirun|srun|self]
#                   [TIMEOUT <seconds>] [ARGS ...] [LABELS ...])
#
# Registers one CTest entry per world size for a test executable linked with c10dtest::main:
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
# No gtest_discover_tests: it would run the binary under the launcher at build time.
#
# Open MPI refuses to run as root and to start more ranks than cores. Where that applies at
# configure time (Open MPI's mpirun; CMake run as root; N above the physical cores), the entry's
# environment allows it; elsewhere nothing is added. c10dtest's processes never call MPI_Init
# (mpirun only starts them; their traffic is Gloo or NCCL), so no MPI transport settings are
# needed, in containers either.
function(c10dtest_add_test target)
  cmake_parse_arguments(ARG "" "NAME;LAUNCHER;TIMEOUT" "WORLD_SIZES;ARGS;LABELS" ${ARGN})
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
    add_test(NAME ${name} COMMAND ${cmd} --c10dtest_timeout=${watchdog} ${ARG_ARGS})
    set_tests_properties(${name} PROPERTIES
      PROCESSORS ${n}
      TIMEOUT ${ARG_TIMEOUT}
      LABELS "c10dtest;np${n};${launcher};${ARG_LABELS}")
    if(env)
      set_tests_properties(${name} PROPERTIES ENVIRONMENT "${env}")
    endif()
  endforeach()
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
