/* Internal: the sample bracket shared by the CPU selection (select.c) and the OpenCL one. */
#ifndef MELD_SELECT_INTERNAL_H
#define MELD_SELECT_INTERNAL_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include "meld.h"

#define MELD_SEL_SMALL 65536 /* below this, every entry is a candidate */
#define MELD_SEL_RUN 64      /* sample: runs of MELD_SEL_RUN entries, run b at b * (n / blocks) */

/* How many sample runs for a tensor of n entries (n > MELD_SEL_SMALL). Measured here: sampling
 * and bracketing cost about 3 ns a sample, and the bracket leaves about 3.2 n / sqrt(S)
 * candidates at about 2 ns each. S = (0.4 n)^(2/3) (5.4K samples for 1M entries, 34K for 16M)
 * is within 10% of that sum's minimum. A multiple of 4 runs (the OpenCL work-group size divides
 * S), 64 to 1024. */
static inline size_t meld_sel_blocks(size_t n) {
    double s = cbrt(0.4 * (double)n);
    size_t b = (size_t)(s * s / MELD_SEL_RUN) / 4 * 4;
    return b < 64 ? 64 : b > 1024 ? 1024 : b;
}

/* From a sample of S magnitudes, a bracket [lo, hi] that holds the k-th largest of all n with
 * high probability (4 sigma of the sample rank, plus a margin). A miss costs time, never
 * correctness: callers check the counts and fall back. *tied_ends (may be NULL): whether the
 * sample has more than a few entries on lo and hi (ties worth counting rather than storing). */
meld_status meld_select_bracket(const uint32_t *sample, size_t S, size_t n, uint64_t k, uint32_t *lo, uint32_t *hi,
                                int *tied_ends);
/* *value: the rank-th largest (1-based) of a[0..len), which is overwritten; *tie_rank: the rank
 * of that entry among those equal to it, which the tie rule (lower index first) then places. */
meld_status meld_select_kth(uint32_t *a, size_t len, uint64_t rank, uint32_t *value, uint64_t *tie_rank);
#endif
