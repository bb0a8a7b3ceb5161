#!/usr/bin/env bash
# mpirun with the settings a container or a small machine needs: running as root is allowed,
# ranks may outnumber cores, and shared-memory transfers do not need ptrace.
# Usage: scripts/mpirun.sh -np 4 ./build/examples/collectives_example [gtest flags]
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe  # the same for Open MPI 5
exec mpirun "$@"
