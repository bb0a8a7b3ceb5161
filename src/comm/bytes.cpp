#include "bytes.hpp"

#include <algorithm>

#include "c10dtest/error.hpp"

namespace c10dtest::detail {

at::Tensor as_bytes(const at::Tensor& t) {
  return t.contiguous().reshape({-1}).view(at::kByte);
}

at::Tensor from_bytes(const at::Tensor& raw, at::ScalarType dtype, at::IntArrayRef shape) {
  // A byte view can be reinterpreted in place only at an offset aligned to the element size.
  const auto element = static_cast<std::int64_t>(c10::elementSize(dtype));
  const at::Tensor bytes =
      raw.is_contiguous() && raw.storage_offset() % element == 0 ? raw : raw.clone();
  std::int64_t numel = 1;
  for (auto s : shape) numel *= s;
  if (bytes.numel() != numel * element) {
    throw Error("from_bytes: " + std::to_string(bytes.numel()) + " bytes cannot hold " +
                std::to_string(numel) + " elements of " + c10::toString(dtype));
  }
  if (numel == 0) return at::empty(shape, bytes.options().dtype(dtype));
  return bytes.view(dtype).reshape(shape);
}

c10::Device exchange_device(const ProcessGroupPtr& pg) {
  if (pg->getBackendName() != "nccl") return c10::Device(c10::DeviceType::CPU);
#if C10DTEST_TORCH_GE(2, 6)
  if (const auto bound = pg->getBoundDeviceId()) return *bound;
#endif
  return c10::Device(c10::DeviceType::CUDA);  // the current device, set when the group was made
}

void broadcast_bytes(const ProcessGroupPtr& pg, at::Tensor& bytes, int root) {
  if (bytes.numel() == 0) return;
  std::vector<at::Tensor> b{bytes.to(exchange_device(pg))};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  pg->broadcast(b, opts)->wait();
  if (!b[0].is_same(bytes)) bytes.copy_(b[0]);
}

namespace {

std::int64_t padded_length(const std::vector<std::int64_t>& sizes) {
  return std::max<std::int64_t>(1, *std::max_element(sizes.begin(), sizes.end()));
}

// `bytes` extended to `length` (no copy when it already has that length: callers may pass a
// buffer of the padded length whose tail is never read).
at::Tensor padded(const at::Tensor& bytes, std::int64_t length) {
  if (bytes.numel() == length && bytes.is_contiguous()) return bytes;
  at::Tensor out = at::zeros({length}, bytes.options());
  if (bytes.numel() > 0) out.narrow(0, 0, bytes.numel()).copy_(bytes);
  return out;
}

}  // namespace

std::vector<at::Tensor> gather_bytes(const ProcessGroupPtr& pg, const at::Tensor& bytes,
                                     const std::vector<std::int64_t>& sizes, int root) {
  const int n = pg->getSize();
  const std::int64_t longest = padded_length(sizes);
  const at::Tensor staged = bytes.to(exchange_device(pg));
  std::vector<at::Tensor> in{padded(staged, longest)};
  std::vector<std::vector<at::Tensor>> out;
  if (pg->getRank() == root) {
    out.resize(1);
    for (int r = 0; r < n; ++r) out[0].push_back(at::empty({longest}, staged.options()));
  }
  c10d::GatherOptions opts;
  opts.rootRank = root;
  pg->gather(out, in, opts)->wait();
  std::vector<at::Tensor> result;
  if (pg->getRank() != root) return result;
  for (int r = 0; r < n; ++r) {
    result.push_back(out[0][static_cast<std::size_t>(r)].narrow(0, 0, sizes[static_cast<std::size_t>(r)]));
  }
  return result;
}

std::vector<at::Tensor> all_gather_bytes(const ProcessGroupPtr& pg, const at::Tensor& bytes,
                                         std::optional<std::vector<std::int64_t>> sizes) {
  const int n = pg->getSize();
  if (!sizes) {
    const auto on = at::TensorOptions().dtype(at::kLong).device(exchange_device(pg));
    std::vector<at::Tensor> in{at::full({1}, bytes.numel(), on)};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < n; ++r) out[0].push_back(at::empty({1}, on));
    pg->allgather(out, in)->wait();
    sizes.emplace();
    for (const auto& t : out[0]) sizes->push_back(t.item<std::int64_t>());
  }
  if (static_cast<int>(sizes->size()) != n) {
    throw Error("all_gather_bytes: " + std::to_string(sizes->size()) + " sizes for a group of " +
                std::to_string(n));
  }
  const std::int64_t longest = padded_length(*sizes);
  // Staged before padding, so that the padded copy is made on the exchange device only.
  const at::Tensor all = all_gather_padded(pg, padded(bytes.to(exchange_device(pg)), longest));
  std::vector<at::Tensor> result;
  for (int r = 0; r < n; ++r) {
    result.push_back(all.narrow(0, r * longest, (*sizes)[static_cast<std::size_t>(r)]));
  }
  return result;
}

at::Tensor all_gather_padded(const ProcessGroupPtr& pg, const at::Tensor& bytes) {
  const int n = pg->getSize();
  const std::int64_t longest = bytes.numel();
  // The outputs are views of one buffer: rank r's bytes land at r * longest.
  std::vector<at::Tensor> in{bytes.to(exchange_device(pg))};
  at::Tensor all = at::empty({n * longest}, in[0].options());
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < n; ++r) out[0].push_back(all.narrow(0, r * longest, longest));
  pg->allgather(out, in)->wait();
  return all;
}

}  // namespace c10dtest::detail
