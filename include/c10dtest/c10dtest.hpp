// c10dtest: GoogleTest fixtures for distributed LibTorch code. The one header users include.
#pragma once

#include "c10dtest/comm.hpp"
#include "c10dtest/device_mesh.hpp"
#include "c10dtest/dtensor.hpp"
#include "c10dtest/distributed_test.hpp"
#include "c10dtest/error.hpp"
#include "c10dtest/launch.hpp"
#include "c10dtest/main.hpp"
#include "c10dtest/options.hpp"
#include "c10dtest/placement.hpp"
#include "c10dtest/sharded_tensor.hpp"
#include "c10dtest/world.hpp"
