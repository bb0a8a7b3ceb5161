#include "c10dtest/options.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "c10dtest/error.hpp"

namespace c10dtest {

std::chrono::milliseconds RunOptions::effective_collective_timeout() const {
  if (collective_timeout.count() > 0) return collective_timeout;
  return std::chrono::milliseconds(test_timeout.count() * 4 / 5);
}

namespace {

std::chrono::milliseconds parse_seconds(const std::string& text, const std::string& what) {
  char* end = nullptr;
  const double seconds = std::strtod(text.c_str(), &end);
  if (text.empty() || end == nullptr || *end != '\0' || !std::isfinite(seconds) ||
      seconds <= 0 || seconds > 1e7) {
    throw ConfigError(what + "='" + text + "' is not a positive number of seconds");
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000.0)));
}

std::uint64_t parse_u64(const std::string& text, const std::string& what) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || text[0] == '-' || end == nullptr || *end != '\0') {
    throw ConfigError(what + "='" + text + "' is not a non-negative integer");
  }
  return static_cast<std::uint64_t>(v);
}

void apply(RunOptions& o, const std::string& name, const std::string& value,
           const std::string& what) {
  if (name == "world_size") {
    o.spawn_world_size = detail::parse_int(value, what);
    if (o.spawn_world_size < 1) throw ConfigError(what + "='" + value + "' must be at least 1");
  } else if (name == "timeout") {
    o.test_timeout = parse_seconds(value, what);
  } else if (name == "collective_timeout") {
    o.collective_timeout = parse_seconds(value, what);
  } else if (name == "heartbeat_timeout") {
    o.heartbeat_timeout = parse_seconds(value, what);
  } else if (name == "rendezvous_timeout") {
    o.rendezvous_timeout = parse_seconds(value, what);
  } else if (name == "backend") {
    if (value != "gloo" && value != "nccl") {
      throw ConfigError(what + "='" + value + "' is not a backend (gloo or nccl)");
    }
    o.backend = value;
  } else if (name == "device") {
    if (value != "cpu" && value != "cuda") {
      throw ConfigError(what + "='" + value + "' is not a device (cpu or cuda)");
    }
    o.device = value;
  } else if (name == "log_dir") {
    o.log_dir = value;
  } else if (name == "seed") {
    o.seed = parse_u64(value, what);
  } else if (name == "verify_strategy") {
    if (value != "auto" && value != "shard-local" && value != "gather") {
      throw ConfigError(what + "='" + value +
                        "' is not a verify strategy (auto, shard-local or gather)");
    }
    o.verify_strategy = value;
  } else {
    throw ConfigError("unknown flag " + what +
                      "; known: world_size, timeout, collective_timeout, heartbeat_timeout, "
                      "rendezvous_timeout, backend, device, log_dir, seed, verify_strategy");
  }
}

constexpr const char* kNames[] = {"world_size",         "timeout", "collective_timeout",
                                  "heartbeat_timeout",  "rendezvous_timeout",
                                  "backend",            "device",  "log_dir",
                                  "seed",               "verify_strategy"};

}  // namespace

RunOptions parse_run_options(int* argc, char** argv, const EnvLookup& env) {
  RunOptions o;
  for (const char* name : kNames) {
    std::string var = "C10DTEST_";
    for (const char* p = name; *p != '\0'; ++p) var += static_cast<char>(std::toupper(*p));
    // C10DTEST_WORLD_SIZE is read by detect_launch (it must not leak into self-spawned children's
    // decision, which the launch layer owns).
    if (var == "C10DTEST_WORLD_SIZE") continue;
    const char* v = env(var.c_str());
    if (v != nullptr && *v != '\0') apply(o, name, v, var);
  }
  const std::string prefix = "--c10dtest_";
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(prefix, 0) != 0) {
      argv[out++] = argv[i];
      continue;
    }
    const auto eq = arg.find('=');
    if (eq == std::string::npos) {
      throw ConfigError("flag " + arg + " needs a value (" + arg + "=...)");
    }
    apply(o, arg.substr(prefix.size(), eq - prefix.size()), arg.substr(eq + 1),
          arg.substr(0, eq));
  }
  *argc = out;
  argv[out] = nullptr;
  return o;
}

}  // namespace c10dtest
