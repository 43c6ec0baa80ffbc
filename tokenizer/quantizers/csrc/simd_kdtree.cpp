// Exact nearest-code search for low-dimensional codebooks (VQGAN-LC's D' = 8) on the CPU: a k-d tree
// whose leaves hold LEAF codes stored dimension-major, so one leaf is scored by a vectorised loop
// (one SIMD lane a code) instead of one code at a time. Distances are fp32 sums of squared
// differences: every term is non-negative, so each computed distance is within a relative
// gamma_(D+3) of the exact one; the search keeps the best and the runner-up and marks a row as
// unproven when the runner-up is not more than that margin above the best (the caller re-searches
// those rows in fp64). The tree only partitions the codes into leaves and finds each query's home
// leaf: a search scores the home leaf, then every leaf whose box (its codes' smallest and largest
// coordinates) is within the threshold, the boxes' distances taken in one vectorised pass and
// slackened below every fp32 rounding, so pruning never drops a code that could change the answer
// or its proof. (That pass in place of the tree's recursion with Arya & Mount's incremental bounds:
// 1.13x at K = 100,000, 1.28x at 16,384, 1.25x at 6,144, D = 8, 8,192 queries, 2-core Zen 5;
// visiting the candidate leaves sorted by box distance was 1.3-1.5x slower, the sort costing more
// than it saves.)
#ifndef LCGEN_LEAF  // codes a leaf; 128 measured fastest of 16-256 at K = 1,024-100,000, D = 8
#define LCGEN_LEAF 128
#endif

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int LEAF = LCGEN_LEAF;
constexpr int MAX_DIM = 32;
// Up to this many leaves the whole codebook is scored without the tree (the expanded-form flat scan
// against the tree, build included, 8,192 queries, 2-core Zen 5): D = 8: 2.2x at K = 1,024, 1.4x at
// 2,048, 1.35x at 4,096 (32 leaves), 0.94x at 6,144, 0.57x at 16,384; D = 12: 1.17x at 16,384, 0.65x
// at 100,000; D = 16: 1.6-2.2x at every K from 1,024 to 16,384, 1.12x at 100,000; D = 32: 1.9-2.1x.
// LCGEN_FLAT, when defined, overrides it (measurements).
inline int64_t flat_max_leaves(int64_t d) {
#ifdef LCGEN_FLAT
  return LCGEN_FLAT;
#else
  return d <= 8 ? 32 : d <= 12 ? 128 : std::numeric_limits<int64_t>::max();
#endif
}
constexpr float TINY = 1e-30f;    // below this, fp32 squares may be subnormal: no relative bound

struct Node {
  int32_t dim;     // split dimension; -1 for a leaf
  int32_t left;    // child index; for a leaf, the leaf's index
  int32_t right;
  float left_max;  // largest coordinate `dim` in the left subtree
  float right_min; // smallest coordinate `dim` in the right subtree
};

// Nodes a subtree over n codes holds: the left side of a split takes a whole number of leaves
// (half of them, rounded up), so the shape, and every node's pre-order id, follows from n alone.
int64_t left_size(int64_t n) { return LEAF * ((((n + LEAF - 1) / LEAF) + 1) / 2); }
int64_t subtree_nodes(int64_t n) { return n <= LEAF ? 1 : 1 + subtree_nodes(left_size(n)) + subtree_nodes(n - left_size(n)); }

struct Builder {
  const float* codes;
  int64_t d;
  std::vector<int32_t> order;
  std::vector<std::pair<float, int32_t>> keyed;  // scratch: (coordinate, code) of one node's codes
  std::vector<Node> nodes;

  // Splits the widest side of the box the ancestors' splits leave (a choice without a scan); the
  // root's two halves are built by two threads, each into its pre-assigned ids.
  void build(int32_t id, int64_t lo, int64_t hi, std::vector<float> box_lo, std::vector<float> box_hi, int depth) {
    const int64_t n = hi - lo;
    if (n <= LEAF) {
      nodes[id] = Node{-1, static_cast<int32_t>(lo / LEAF), 0, 0.f, 0.f};
      return;
    }
    int32_t dim = 0;
    for (int64_t k = 1; k < d; ++k)
      if (box_hi[k] - box_lo[k] > box_hi[dim] - box_lo[dim]) dim = static_cast<int32_t>(k);
    const int64_t mid = lo + left_size(n);
    // partition contiguous (coordinate, code) pairs: one gather instead of a random read a comparison
    for (int64_t i = lo; i < hi; ++i) keyed[i] = {codes[order[i] * d + dim], order[i]};
    auto by_key = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) { return a.first < b.first; };
    std::nth_element(keyed.begin() + lo, keyed.begin() + mid, keyed.begin() + hi, by_key);
    float left_max = -std::numeric_limits<float>::infinity();
    for (int64_t i = lo; i < hi; ++i) order[i] = keyed[i].second;
    for (int64_t i = lo; i < mid; ++i) left_max = std::max(left_max, keyed[i].first);
    const float right_min = keyed[mid].first;
    const int32_t left = id + 1;
    const int32_t right = left + static_cast<int32_t>(subtree_nodes(mid - lo));
    nodes[id] = Node{dim, left, right, left_max, right_min};
    std::vector<float> left_hi = box_hi, right_lo = box_lo;
    left_hi[dim] = left_max;
    right_lo[dim] = right_min;
    auto side = [&](int64_t s) {
      if (s == 0) build(left, lo, mid, box_lo, left_hi, depth + 1);
      else build(right, mid, hi, right_lo, box_hi, depth + 1);
    };
    if (depth < 1) at::parallel_for(0, 2, 1, [&](int64_t b, int64_t e) { for (int64_t s = b; s < e; ++s) side(s); });
    else { side(0); side(1); }
  }
};

struct Best {
  float first = std::numeric_limits<float>::infinity();
  float second = std::numeric_limits<float>::infinity();
  int32_t index = -1;
};

// The kernels, in AVX-512 where the CPU has it and in plain loops otherwise:
// - box_distances: squared distances from q to every leaf's box [lo, hi] (0 inside), each a sum of
//   non-negative rounded squares, so within gamma_(D+3) of the exact value like a code distance;
// - leaf_distances: the distances from q to the LEAF codes of one leaf (stored dimension-major)
//   into dist, returning their minimum; each a sum of D rounded squares of rounded differences
//   (FMA rounds less), in any order, within gamma_(D+3) of the exact value;
// - below16: bit j set when dist[j] <= t, for j < 16;
// - flat_scan and flat_scan_expanded: every code of a small codebook (below).
#if defined(__AVX512F__)
constexpr int VECTORS = LEAF / 16;  // 16-lane vectors a leaf

// Written out for all of a leaf's vectors at once rather than by calling flat_scan's per-vector
// loop for each: interleaving the 16 FMA chains is 3-4% faster on the tree path (measured).
inline float leaf_distances(const float* c, const float* q, int64_t d, float* dist) {
  static_assert(LEAF % 16 == 0, "whole 16-lane vectors a leaf");
  __m512 even[VECTORS], odd[VECTORS];  // two FMA chains a vector
  for (int v = 0; v < VECTORS; ++v) even[v] = odd[v] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 1 < d; k += 2) {
    const __m512 qe = _mm512_set1_ps(q[k]), qo = _mm512_set1_ps(q[k + 1]);
    const float* ce = c + k * LEAF;
    for (int v = 0; v < VECTORS; ++v) {
      const __m512 te = _mm512_sub_ps(qe, _mm512_loadu_ps(ce + 16 * v));
      const __m512 to = _mm512_sub_ps(qo, _mm512_loadu_ps(ce + LEAF + 16 * v));
      even[v] = _mm512_fmadd_ps(te, te, even[v]);
      odd[v] = _mm512_fmadd_ps(to, to, odd[v]);
    }
  }
  if (k < d) {
    const __m512 qe = _mm512_set1_ps(q[k]);
    for (int v = 0; v < VECTORS; ++v) {
      const __m512 te = _mm512_sub_ps(qe, _mm512_loadu_ps(c + k * LEAF + 16 * v));
      even[v] = _mm512_fmadd_ps(te, te, even[v]);
    }
  }
  __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  for (int v = 0; v < VECTORS; ++v) {
    const __m512 total = _mm512_add_ps(even[v], odd[v]);
    _mm512_storeu_ps(dist + 16 * v, total);
    lowest = _mm512_min_ps(lowest, total);
  }
  return _mm512_reduce_min_ps(lowest);
}

// 16 lanes, each keeping its best score, the slot holding it and its runner-up (branch-free), merged
// at the end. A NaN score (only from a NaN or infinite query, or an overflow) can leave a lane's
// slot behind its score, but then the lane's best equals its runner-up or is not finite, so the
// row is left unproven, never wrongly proven.
struct Lanes {
  __m512 best = _mm512_set1_ps(std::numeric_limits<float>::infinity()), second = best;
  __m512i where = _mm512_setzero_si512();

  inline void take(__m512 score, __m512i here) {
    const __mmask16 better = _mm512_cmp_ps_mask(score, best, _CMP_LT_OQ);
    second = _mm512_min_ps(second, _mm512_max_ps(best, score));
    best = _mm512_min_ps(best, score);
    where = _mm512_mask_mov_epi32(where, better, here);
  }

  inline void merge(Best& b, int64_t& slot) const {
    alignas(64) float lane_best[16], lane_second[16];
    alignas(64) int32_t lane_where[16];
    _mm512_store_ps(lane_best, best);
    _mm512_store_ps(lane_second, second);
    _mm512_store_si512(lane_where, where);
    int winner = 0;
    for (int l = 1; l < 16; ++l) if (lane_best[l] < lane_best[winner]) winner = l;
    b.first = lane_best[winner];
    b.second = lane_second[winner];
    for (int l = 0; l < 16; ++l) if (l != winner) b.second = std::min(b.second, lane_best[l]);
    slot = lane_where[winner];
    b.index = std::isfinite(b.first) ? 0 : -1;
  }
};

// Every code, no tree, in the difference form (Lanes). slots: codes in leaf order, padded.
// (Two queries a pass, sharing the code loads, was 1.9x slower: the accumulators spill.)
inline void flat_scan(const float* codes, int64_t slots, const float* q, int64_t d, Best& b, int64_t& slot) {
  Lanes lanes;
  __m512i here = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  __m512 qb[MAX_DIM];  // the query's coordinates broadcast once: loads in the loop, not shuffles
  for (int64_t k = 0; k < d; ++k) qb[k] = _mm512_set1_ps(q[k]);
  for (int64_t v = 0; v < slots / 16; ++v) {
    const float* c = codes + (v / (LEAF / 16)) * d * LEAF + (v % (LEAF / 16)) * 16;
    __m512 even = _mm512_setzero_ps(), odd = even;
    int64_t k = 0;
    for (; k + 1 < d; k += 2) {
      const __m512 te = _mm512_sub_ps(qb[k], _mm512_loadu_ps(c + k * LEAF));
      const __m512 to = _mm512_sub_ps(qb[k + 1], _mm512_loadu_ps(c + (k + 1) * LEAF));
      even = _mm512_fmadd_ps(te, te, even);
      odd = _mm512_fmadd_ps(to, to, odd);
    }
    if (k < d) {
      const __m512 te = _mm512_sub_ps(qb[k], _mm512_loadu_ps(c + k * LEAF));
      even = _mm512_fmadd_ps(te, te, even);
    }
    lanes.take(_mm512_add_ps(even, odd), here);
    here = _mm512_add_epi32(here, step);
  }
  lanes.merge(b, slot);  // b.index 0 for a finite best: the caller maps the slot to a code
}

inline uint32_t below16(const float* dist, float t) {
  return _mm512_cmp_ps_mask(_mm512_loadu_ps(dist), _mm512_set1_ps(t), _CMP_LE_OQ);
}

// The squared distance from q to every leaf's box, 16 leaves a vector, times `scale`: lo and hi
// are (d, padded) dimension-major, padding lo = +inf (distance +inf).
inline void box_distances(const float* lo, const float* hi, int64_t padded, const float* q, int64_t d, float scale,
                          float* out) {
  const __m512 zero = _mm512_setzero_ps(), sc = _mm512_set1_ps(scale);
  for (int64_t g = 0; g < padded; g += 16) {
    __m512 acc = zero;
    for (int64_t k = 0; k < d; ++k) {
      const __m512 qk = _mm512_set1_ps(q[k]);
      const __m512 t = _mm512_max_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_loadu_ps(lo + k * padded + g), qk),
                                                   _mm512_sub_ps(qk, _mm512_loadu_ps(hi + k * padded + g))), zero);
      acc = _mm512_fmadd_ps(t, t, acc);
    }
    _mm512_storeu_ps(out + g, _mm512_mul_ps(acc, sc));
  }
}

// flat_scan in the expanded form ||c||^2 - 2 q.c: one FMA a dimension where the difference form
// takes a subtraction and an FMA. Its rounding error is absolute (the caller bounds it from ||q||
// and the largest ||c||), so rows it cannot prove go to flat_scan.
// scaled: -2c in leaf layout (0 padding); norms: fl(||c||^2) a slot (+inf padding).
// PASS queries a pass, so each code load feeds PASS FMAs; the queries' coordinates are read as
// broadcast memory operands rather than held in registers, which keeps the accumulators from
// spilling. D is a template argument so the loop over dimensions unrolls (DIM = 0: a runtime loop).
// K = 1,024, D = 8, 8,192 queries (2-core Zen 5): 0.90 ms a call by the difference form (nearest_code,
// end to end); search_tree alone, expanded, one query a pass, 1.08 ms with one FMA chain and D a
// runtime bound, 0.53 ms with four chains and D unrolled; two queries a pass 0.48 ms, three 0.49,
// four 0.59.

constexpr int PASS = 2;  // queries a pass (measured above)

template <int DIM>
inline void flat_scan_expanded_d(const float* scaled, const float* norms, int64_t slots, const float* const* q,
                                 int64_t dd, Best* b, int64_t* slot) {
  const int64_t d = DIM > 0 ? DIM : dd;
  Lanes l[PASS];
  __m512i here = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t v = 0; v < slots / 16; ++v) {
    const float* c = scaled + (v / (LEAF / 16)) * d * LEAF + (v % (LEAF / 16)) * 16;
    const __m512 norm = _mm512_loadu_ps(norms + 16 * v);
    __m512 a[PASS], e[PASS];
#pragma GCC unroll 8
    for (int i = 0; i < PASS; ++i) { a[i] = norm; e[i] = _mm512_setzero_ps(); }
#pragma GCC unroll 16
    for (int64_t k = 0; k + 1 < d; k += 2) {
      const __m512 ce = _mm512_loadu_ps(c + k * LEAF), co = _mm512_loadu_ps(c + (k + 1) * LEAF);
#pragma GCC unroll 8
      for (int i = 0; i < PASS; ++i) {
        a[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][k]), ce, a[i]);
        e[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][k + 1]), co, e[i]);
      }
    }
    if (d % 2) {
      const __m512 ce = _mm512_loadu_ps(c + (d - 1) * LEAF);
#pragma GCC unroll 8
      for (int i = 0; i < PASS; ++i) a[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d - 1]), ce, a[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < PASS; ++i) l[i].take(_mm512_add_ps(a[i], e[i]), here);
    here = _mm512_add_epi32(here, step);
  }
  for (int i = 0; i < PASS; ++i) l[i].merge(b[i], slot[i]);
}

// The nearest and runner-up scores of PASS queries (rows may repeat to fill the last pass).
inline void flat_scan_expanded(const float* scaled, const float* norms, int64_t slots, const float* const* q,
                               int64_t d, Best* b, int64_t* slot) {
  switch (d) {
    case 8: return flat_scan_expanded_d<8>(scaled, norms, slots, q, d, b, slot);
    case 16: return flat_scan_expanded_d<16>(scaled, norms, slots, q, d, b, slot);
    default: return flat_scan_expanded_d<0>(scaled, norms, slots, q, d, b, slot);
  }
}
#else
inline float leaf_distances(const float* c, const float* q, int64_t d, float* dist) {
  for (int j = 0; j < LEAF; ++j) dist[j] = 0.f;
  for (int64_t k = 0; k < d; ++k) {
    const float qk = q[k];
    const float* ck = c + k * LEAF;
    for (int j = 0; j < LEAF; ++j) {
      const float t = qk - ck[j];
      dist[j] += t * t;
    }
  }
  float lanes[8];  // an element-wise min first, which vectorises, then 8 scalars
  for (int i = 0; i < 8; ++i) lanes[i] = dist[i];
  for (int j = 8; j < LEAF; j += 8)
    for (int i = 0; i < 8; ++i) lanes[i] = std::min(lanes[i], dist[j + i]);
  float lowest = lanes[0];
  for (int i = 1; i < 8; ++i) lowest = std::min(lowest, lanes[i]);
  return lowest;
}

inline void flat_scan(const float* codes, int64_t slots, const float* q, int64_t d, Best& b, int64_t& slot) {
  for (int64_t j = 0; j < slots; ++j) {
    const float* c = codes + (j / LEAF) * d * LEAF + (j % LEAF);
    float v = 0.f;
    for (int64_t k = 0; k < d; ++k) {
      const float t = q[k] - c[k * LEAF];
      v += t * t;
    }
    if (v < b.first) { b.second = b.first; b.first = v; slot = j; }
    else if (v < b.second) { b.second = v; }
  }
  b.index = std::isfinite(b.first) ? 0 : -1;  // the caller maps the slot to a code
}

inline uint32_t below16(const float* dist, float t) {
  uint32_t bits = 0;
  for (int j = 0; j < 16; ++j) bits |= static_cast<uint32_t>(dist[j] <= t) << j;
  return bits;
}

inline void box_distances(const float* lo, const float* hi, int64_t padded, const float* q, int64_t d, float scale,
                          float* out) {
  for (int64_t l = 0; l < padded; ++l) out[l] = 0.f;
  for (int64_t k = 0; k < d; ++k)
    for (int64_t l = 0; l < padded; ++l) {
      const float t = std::max(std::max(lo[k * padded + l] - q[k], q[k] - hi[k * padded + l]), 0.f);
      out[l] = std::fma(t, t, out[l]);
    }
  for (int64_t l = 0; l < padded; ++l) out[l] *= scale;
}

constexpr int PASS = 2;

inline void flat_scan_expanded(const float* scaled, const float* norms, int64_t slots, const float* const* q,
                               int64_t d, Best* bs, int64_t* slots_out) {
  for (int i = 0; i < PASS; ++i) {
    Best& b = bs[i];
    for (int64_t j = 0; j < slots; ++j) {
      const float* c = scaled + (j / LEAF) * d * LEAF + (j % LEAF);
      float v = norms[j];
      for (int64_t k = 0; k < d; ++k) v = std::fma(q[i][k], c[k * LEAF], v);
      if (v < b.first) { b.second = b.first; b.first = v; slots_out[i] = j; }
      else if (v < b.second) { b.second = v; }
    }
    b.index = std::isfinite(b.first) ? 0 : -1;
  }
}
#endif


struct Searcher {
  const float* leaf_codes;  // (leaves, d, LEAF), +inf padding
  const int32_t* leaf_ids;  // (leaves, LEAF), -1 padding
  int64_t d;
  float margin;             // a runner-up within first * (1 + margin) leaves the row unproven
  float box_scale;          // 1 - 3 gamma: an fp32 box distance and an fp32 code distance each within gamma

  // Codes at or beyond this computed distance can change neither the winner nor its proof.
  inline float threshold(const Best& b) const { return std::min(b.second, b.first * (1.f + margin)); }

  inline void score_leaf(int32_t leaf, const float* q, Best& b) const {
    const float* c = leaf_codes + static_cast<int64_t>(leaf) * d * LEAF;
    const int32_t* ids = leaf_ids + static_cast<int64_t>(leaf) * LEAF;
    float dist[LEAF];
    const float lowest = leaf_distances(c, q, d, dist);
    if (!(lowest <= threshold(b))) return;
    // only codes at or below the threshold can move the best two (the pruning invariant)
    for (int j0 = 0; j0 < LEAF; j0 += 16) {
      for (uint32_t hits = below16(dist + j0, threshold(b)); hits != 0; hits &= hits - 1) {
        const int j = j0 + __builtin_ctz(hits);
        const float v = dist[j];
        if (v < b.first) { b.second = b.first; b.first = v; b.index = ids[j]; }
        else if (v < b.second) { b.second = v; }
      }
    }
  }

  // Without the tree's recursion: every leaf's box distance in one vectorised pass (box: scratch of
  // `padded` floats), the home leaf first, then, in leaf order, each leaf whose box is within the
  // threshold as it then stands.
  void search_leaves(int32_t home, const float* q, const float* lo_t, const float* hi_t, int64_t leaves,
                     int64_t padded, float* box, Best& b) const {
    box_distances(lo_t, hi_t, padded, q, d, box_scale, box);
    score_leaf(home, q, b);
    for (int64_t g = 0; g < padded; g += 16) {
      for (uint32_t hits = below16(box + g, threshold(b)); hits != 0; hits &= hits - 1) {
        const int64_t leaf = g + __builtin_ctz(hits);
        if (leaf != home && leaf < leaves && box[leaf] <= threshold(b)) score_leaf(static_cast<int32_t>(leaf), q, b);
      }
    }
  }
};

}  // namespace

// codes (K, D) fp32 -> (nodes int32 (M, 3), splits fp32 (M, 2), leaf_codes fp32 (L, D, LEAF),
// leaf_ids int32 (L, LEAF), leaf_box fp32 (L, 2, D), scan_codes fp32 (L, D, LEAF) and scan_norms
// fp32 (L * LEAF) when L <= flat_max_leaves(D), else empty; a flat-size codebook keeps its own order
// and has no tree)
std::vector<torch::Tensor> build_tree(torch::Tensor codes) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == torch::kFloat32 && codes.is_contiguous() && !codes.is_cuda(),
              "codes must be a contiguous fp32 CPU tensor (K, D)");
  TORCH_CHECK(codes.size(0) >= 1 && codes.size(0) < (int64_t{1} << 31), "codes must have 1 to 2^31 - 1 rows");
  TORCH_CHECK(codes.size(1) >= 1 && codes.size(1) <= MAX_DIM, "codes must have 1 to ", MAX_DIM, " columns");
  Builder b;
  b.codes = codes.data_ptr<float>();
  b.d = codes.size(1);
  const int64_t k = codes.size(0), leaves = (k + LEAF - 1) / LEAF;
  const bool flat = leaves <= flat_max_leaves(b.d);
  b.order.resize(k);
  for (int64_t i = 0; i < k; ++i) b.order[i] = static_cast<int32_t>(i);
  if (flat) {  // scored whole: the codes stay in their order, and the tree is one (unused) leaf
    b.nodes.assign(1, Node{-1, 0, 0, 0.f, 0.f});
  } else {
    b.keyed.resize(k);
    std::vector<float> box_lo(b.d, std::numeric_limits<float>::infinity()), box_hi(b.d, -std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < k; ++i)
      for (int64_t c = 0; c < b.d; ++c) {
        box_lo[c] = std::min(box_lo[c], b.codes[i * b.d + c]);
        box_hi[c] = std::max(box_hi[c], b.codes[i * b.d + c]);
      }
    b.nodes.resize(subtree_nodes(k));
    b.build(0, 0, k, box_lo, box_hi, 0);
  }
  const int64_t m = static_cast<int64_t>(b.nodes.size());
  auto nodes = torch::empty({m, 3}, torch::kInt32);
  auto splits = torch::empty({m, 2}, torch::kFloat32);
  auto leaf_codes = torch::empty({leaves, b.d, LEAF}, torch::kFloat32);
  auto leaf_ids = torch::empty({leaves, LEAF}, torch::kInt32);
  auto leaf_box = torch::empty({leaves, 2, b.d}, torch::kFloat32);
  int32_t* np = nodes.data_ptr<int32_t>();
  float* sp = splits.data_ptr<float>();
  for (int64_t i = 0; i < m; ++i) {
    np[3 * i] = b.nodes[i].dim; np[3 * i + 1] = b.nodes[i].left; np[3 * i + 2] = b.nodes[i].right;
    sp[2 * i] = b.nodes[i].left_max; sp[2 * i + 1] = b.nodes[i].right_min;
  }
  float* lc = leaf_codes.data_ptr<float>();
  int32_t* li = leaf_ids.data_ptr<int32_t>();
  float* lb = leaf_box.data_ptr<float>();
  const float inf = std::numeric_limits<float>::infinity();
  // each leaf's codes gathered into its dimension-major block (+inf, id -1 padding) and its box;
  // leaves on both threads (a build at K = 100,000, D = 8: 6.71 -> 6.47 ms, the same tree)
  at::parallel_for(0, leaves, 16, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) {
      const int64_t held = std::min<int64_t>(LEAF, k - l * LEAF);
      for (int64_t j = 0; j < LEAF; ++j) {
        const int32_t code = j < held ? b.order[l * LEAF + j] : -1;
        li[l * LEAF + j] = code;
        for (int64_t c = 0; c < b.d; ++c) lc[(l * b.d + c) * LEAF + j] = j < held ? b.codes[code * b.d + c] : inf;
      }
      for (int64_t c = 0; c < b.d; ++c) {
        float mn = inf, mx = -inf;
        for (int64_t j = 0; j < held; ++j) {
          mn = std::min(mn, lc[(l * b.d + c) * LEAF + j]);
          mx = std::max(mx, lc[(l * b.d + c) * LEAF + j]);
        }
        lb[(l * 2) * b.d + c] = mn;
        lb[(l * 2 + 1) * b.d + c] = mx;
      }
    }
  });
  // a codebook small enough for the flat scan also gets its expanded form: -2c in the same layout
  // (0 padding) and fl(||c||^2) a slot, from fp64 (+inf padding); larger ones carry empty tensors
  auto scan_codes = torch::empty({0}, torch::kFloat32), scan_norms = torch::empty({0}, torch::kFloat32);
  if (flat) {
    scan_codes = torch::zeros({leaves, b.d, LEAF}, torch::kFloat32);
    scan_norms = torch::full({leaves * LEAF}, std::numeric_limits<float>::infinity(), torch::kFloat32);
    float* sc = scan_codes.data_ptr<float>();
    float* sn = scan_norms.data_ptr<float>();
    for (int64_t l = 0; l < leaves; ++l)
      for (int64_t j = 0; j < std::min<int64_t>(LEAF, k - l * LEAF); ++j) {
        double norm = 0.0;
        for (int64_t c = 0; c < b.d; ++c) {
          const float v = lc[(l * b.d + c) * LEAF + j];
          sc[(l * b.d + c) * LEAF + j] = -2.f * v;
          norm += static_cast<double>(v) * v;
        }
        sn[l * LEAF + j] = static_cast<float>(norm);
      }
  }
  return {nodes, splits, leaf_codes, leaf_ids, leaf_box, scan_codes, scan_norms};
}

// -> (index int64 (N,), unproven bool (N,)). gamma: relative error bound of one computed distance.
std::vector<torch::Tensor> search_tree(torch::Tensor x, torch::Tensor nodes, torch::Tensor splits,
                                       torch::Tensor leaf_codes, torch::Tensor leaf_ids, torch::Tensor leaf_box,
                                       torch::Tensor scan_codes, torch::Tensor scan_norms, double gamma) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous() && !x.is_cuda(),
              "queries must be a contiguous fp32 CPU tensor (N, D)");
  TORCH_CHECK(leaf_codes.dim() == 3 && x.size(1) == leaf_codes.size(1) && leaf_codes.size(2) == LEAF,
              "queries and tree disagree on D");
  const int64_t n = x.size(0), d = x.size(1), m = nodes.size(0);
  Searcher s{leaf_codes.data_ptr<float>(), leaf_ids.data_ptr<int32_t>(), d,
             static_cast<float>(2.0 * gamma / (1.0 - gamma) + 4.0 * std::ldexp(1.0, -24)),
             static_cast<float>(1.0 - 3.0 * gamma)};
  auto index = torch::zeros({n}, torch::kInt64);
  auto unproven = torch::zeros({n}, torch::kBool);
  int64_t* ip = index.data_ptr<int64_t>();
  bool* up = unproven.data_ptr<bool>();
  const float* xp = x.data_ptr<float>();
  const int64_t leaves = leaf_codes.size(0);
  if (scan_codes.numel() > 0) {  // the build chose the flat scan: score every code, no tree bookkeeping
    TORCH_CHECK(scan_codes.numel() == leaf_codes.numel() && scan_norms.numel() == leaves * LEAF,
                "the expanded-form codes do not match the leaves");
    const float* lc = leaf_codes.data_ptr<float>();
    const float* sc = scan_codes.data_ptr<float>();
    const float* sn = scan_norms.data_ptr<float>();
    const int32_t* ids = leaf_ids.data_ptr<int32_t>();
    // Expanded scores fl(||c||^2) + sum_k q_k (-2 c_k) by D FMAs: each within gamma_(D+1) of the sum
    // of its terms' magnitudes, ||c||^2 + 2 sum_k |q_k c_k| <= max ||c||^2 + 2 ||q|| max ||c||, plus
    // an absolute term for products that underflow; the fp32 norms are rounded up to cover their own
    // rounding. Two scores further apart than twice that order their codes exactly.
    double largest = 0.0;
    for (int64_t j = 0; j < leaves * LEAF; ++j)
      if (std::isfinite(sn[j])) largest = std::max(largest, static_cast<double>(sn[j]));
    largest *= 1.0 + std::ldexp(1.0, -22);
    const double u = std::ldexp(1.0, -24), g = (d + 1) * u / (1.0 - (d + 1) * u);
    auto settle = [&](int64_t r, Best b, int64_t slot) {
      const float* q = xp + r * d;
      double qq = 0.0;
      for (int64_t k = 0; k < d; ++k) qq += static_cast<double>(q[k]) * q[k];
      const double err = (g * (largest + 2.0 * std::sqrt(qq) * std::sqrt(largest)) + (d + 1) * std::ldexp(1.0, -140)) *
                         (1.0 + 1e-6);
      bool proven = b.index >= 0 && std::isfinite(b.first) && std::isfinite(err) &&
                    static_cast<double>(b.second) - static_cast<double>(b.first) > 2.0 * err;
      if (!proven) {  // too close for the absolute bound (or a large offset): the difference form
        b = Best{};
        flat_scan(lc, leaves * LEAF, q, d, b, slot);
        proven = b.index >= 0 && b.first >= TINY && b.second > b.first * (1.f + s.margin);
      }
      ip[r] = b.index >= 0 ? ids[slot] : 0;
      up[r] = !proven;
    };
    at::parallel_for(0, (n + PASS - 1) / PASS, 64 / PASS, [&](int64_t begin, int64_t end) {
      for (int64_t pass = begin; pass < end; ++pass) {
        const float* q[PASS];
        for (int i = 0; i < PASS; ++i) q[i] = xp + std::min(pass * PASS + i, n - 1) * d;
        Best b[PASS];
        int64_t slot[PASS] = {};
        flat_scan_expanded(sc, sn, leaves * LEAF, q, d, b, slot);
        for (int i = 0; i < PASS && pass * PASS + i < n; ++i) settle(pass * PASS + i, b[i], slot[i]);
      }
    });
    return {index, unproven};
  }
  std::vector<Node> packed(m);
  const int32_t* np = nodes.data_ptr<int32_t>();
  const float* sp = splits.data_ptr<float>();
  for (int64_t i = 0; i < m; ++i) packed[i] = Node{np[3 * i], np[3 * i + 1], np[3 * i + 2], sp[2 * i], sp[2 * i + 1]};
  // Queries are searched in the order of the leaf each falls in, so neighbouring queries, which
  // visit mostly the same leaves, follow each other while those leaves are still in cache.
  std::vector<int32_t> home(n);
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* q = xp + r * d;
      int32_t node = 0;
      while (packed[node].dim >= 0) {
        const Node& nd = packed[node];
        const float qd = q[nd.dim];
        node = static_cast<double>(qd) - nd.left_max < static_cast<double>(nd.right_min) - qd ? nd.left : nd.right;
      }
      home[r] = packed[node].left;
    }
  });
  std::vector<int64_t> start(leaves + 1, 0);
  for (int64_t r = 0; r < n; ++r) ++start[home[r] + 1];
  for (int64_t l = 0; l < leaves; ++l) start[l + 1] += start[l];
  std::vector<int64_t> sorted(n);
  for (int64_t r = 0; r < n; ++r) sorted[start[home[r]]++] = r;
  // the leaves' boxes dimension-major, padded to whole vectors with empty boxes (+inf distance)
  const int64_t padded = (leaves + 15) / 16 * 16;
  std::vector<float> lo_t(d * padded, std::numeric_limits<float>::infinity()), hi_t(d * padded, -std::numeric_limits<float>::infinity());
  const float* lbp = leaf_box.data_ptr<float>();
  for (int64_t l = 0; l < leaves; ++l)
    for (int64_t k = 0; k < d; ++k) {
      lo_t[k * padded + l] = lbp[(l * 2) * d + k];
      hi_t[k * padded + l] = lbp[(l * 2 + 1) * d + k];
    }
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> box(padded);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t r = sorted[p];
      Best b;
      s.search_leaves(home[r], xp + r * d, lo_t.data(), hi_t.data(), leaves, padded, box.data(), b);
      const bool proven = b.index >= 0 && std::isfinite(b.first) && b.first >= TINY &&
                          b.second > b.first * (1.f + s.margin);
      ip[r] = b.index >= 0 ? b.index : 0;
      up[r] = !proven;
    }
  });
  return {index, unproven};
}

// Whether every value of a contiguous fp32 CPU tensor is finite (one pass, no bool tensor: ~10x
// torch.isfinite(t).all() at 800,000 values).
bool all_finite(torch::Tensor t) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && !t.is_cuda(), "a contiguous fp32 CPU tensor");
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(t.data_ptr<float>());
  const int64_t n = t.numel();
  uint32_t special = 0;  // an all-ones exponent is inf or NaN; integer ops, so the loop vectorises
  for (int64_t i = 0; i < n; ++i) special |= static_cast<uint32_t>((bits[i] & 0x7f800000u) == 0x7f800000u);
  return special == 0;
}

// Whether two contiguous fp32 CPU tensors have the same shape and the same bits (so +0 and -0
// differ: the tree is then rebuilt, never reused wrongly).
bool same_bits(torch::Tensor a, torch::Tensor b) {
  TORCH_CHECK(a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32 && a.is_contiguous() &&
              b.is_contiguous() && !a.is_cuda() && !b.is_cuda(), "contiguous fp32 CPU tensors");
  return a.sizes() == b.sizes() && std::memcmp(a.data_ptr<float>(), b.data_ptr<float>(), a.numel() * sizeof(float)) == 0;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("all_finite", &all_finite, "every value finite");
  mod.def("same_bits", &same_bits, "same shape and bits");
  mod.def("build_tree", &build_tree, "k-d tree over fp32 codes (K, D) with SIMD leaves");
  mod.def("search_tree", &search_tree, "exact nearest code and proof flag for fp32 queries (N, D)");
}
