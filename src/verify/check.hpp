// Private (the verifier): checking one rank's leaves against the reference. check_rank() turns
// them into findings and the value comparisons still to run; where those run is the only
// difference between the strategies.
#pragma once

#include <map>

#include "c10dtest/verify.hpp"
#include "findings.hpp"
#include "leaves.hpp"
#include "scan.hpp"

namespace c10dtest::detail::verifier {

struct Reference {
  FlatDict leaves;
  explicit Reference(const StateDict& sd) : leaves(flatten(sd)) {}
};

// A key whose values check_rank() found comparable.
struct ValueCheck {
  std::size_t before;  // how many of the rank's other findings come before it in the report
  std::size_t leaf;
  detail::ScanTolerance tol;
};

// A value comparison check_rank() asks for: one piece of a check's leaf against the reference.
struct Comparison {
  std::size_t check;  // index into RankCheck::checks (its leaf and tolerance)
  std::size_t piece;
  at::Tensor expected;  // the whole reference tensor (the piece's offsets place the slice)
};

// What check_rank() finds for one rank: the findings settled by the descriptions alone, and the
// value comparisons still to run, which compare() runs; finish() gives the rank's
// findings in report order. A key whose values match costs no Finding (most keys, usually).
struct RankCheck {
  std::vector<Finding> findings;
  std::vector<ValueCheck> checks;
  std::vector<Comparison> comparisons;

  const ValueCheck& of(const Comparison& c) const { return checks[c.check]; }

  // Compares the piece of `c` (`actual`: this rank's, or received from its owner) and keeps
  // what differs.
  void compare(const Comparison& c, const std::vector<LeafInfo>& leaves,
               const at::Tensor& actual) {
    const LeafInfo& leaf = leaves[of(c).leaf];
    const Piece& p = leaf.pieces[c.piece];
    const MismatchStats s = detail::scan_piece(c.expected, actual, of(c).tol, p.offsets);
    if (s.bad == 0) return;
    Finding& f = failing[c.check];
    if (f.stats.merge(s)) {
      f.first_offsets = p.offsets;
      f.first_sizes = p.sizes;
      f.whole = p.sizes == leaf.shape;
    }
  }

  std::vector<Finding> finish(const std::vector<LeafInfo>& leaves) {
    std::vector<Finding> out;
    out.reserve(findings.size() + failing.size());
    auto next = failing.begin();
    for (std::size_t i = 0; i <= findings.size(); ++i) {
      for (; next != failing.end() && checks[next->first].before == i; ++next) {
        const ValueCheck& check = checks[next->first];
        const LeafInfo& leaf = leaves[check.leaf];
        Finding& f = next->second;
        f.path = leaf.path;
        f.kind = Kind::kValues;
        f.text = leaf_text(leaf) + "; " + detail::tolerance_text(check.tol);
        // Counted per distinct element: the value's, not the pieces' (a copy is counted once).
        f.stats.checked = 1;
        for (auto d : leaf.shape) f.stats.checked *= d;
        f.replica = leaf.replica;
        out.push_back(std::move(f));
      }
      if (i < findings.size()) out.push_back(std::move(findings[i]));
    }
    return out;
  }

 private:
  std::map<std::size_t, Finding> failing;  // by check
};

// Checks one rank's leaves (`leaves`, from that rank) against the reference: findings in
// reference order, then unexpected keys in the rank's order, with the value comparisons to run.
RankCheck check_rank(int rank, const std::vector<LeafInfo>& leaves, const Reference& ref,
                     const VerifyOptions& options);

}  // namespace c10dtest::detail::verifier
