// c10dtest error hierarchy. Every error names what went wrong and where.
#pragma once

#include <stdexcept>
#include <string>

namespace c10dtest {

// Base of every exception c10dtest throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The launcher's environment or c10dtest's flags are inconsistent
// ("OMPI_COMM_WORLD_RANK=5 is not below OMPI_COMM_WORLD_SIZE=4").
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Ranks could not meet: the rendezvous file or the store did not answer in time.
class RendezvousError : public Error {
 public:
  using Error::Error;
};

// A layout does not hold: placements that do not fit the mesh or the tensor, a local piece of
// the wrong shape, shards that do not tile the global tensor or disagree with their metadata.
class ShardingError : public Error {
 public:
  using Error::Error;
};

// A wait on the control plane ran past its deadline.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

}  // namespace c10dtest
