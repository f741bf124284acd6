/* Internal: the sample bracket shared by the CPU selection (select.c) and the OpenCL one. */
#ifndef MELD_SELECT_INTERNAL_H
#define MELD_SELECT_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
#include "meld.h"

#define MELD_SEL_SMALL 65536 /* below this, every entry is a candidate */
#define MELD_SEL_BLOCKS 256  /* sample: MELD_SEL_BLOCKS contiguous runs of MELD_SEL_RUN entries, */
#define MELD_SEL_RUN 128     /* run b starting at b * (n / MELD_SEL_BLOCKS) */

/* From a sample of S magnitudes, a bracket [lo, hi] that holds the k-th largest of all n with
 * high probability (4 sigma of the sample rank, plus a margin). A miss costs time, never
 * correctness: callers check the counts and fall back. */
meld_status meld_select_bracket(const uint32_t *sample, size_t S, size_t n, uint64_t k, uint32_t *lo, uint32_t *hi);
/* *value: the rank-th largest (1-based) of a[0..len), which is overwritten; *tie_rank: the rank
 * of that entry among those equal to it, which the tie rule (lower index first) then places. */
meld_status meld_select_kth(uint32_t *a, size_t len, uint64_t rank, uint32_t *value, uint64_t *tie_rank);
#endif
