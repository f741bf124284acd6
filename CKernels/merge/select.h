/* Internal: the sample bracket shared by the CPU selection (select.c) and the OpenCL one. */
#ifndef MELD_SELECT_INTERNAL_H
#define MELD_SELECT_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#define MELD_SEL_SMALL 65536 /* below this, every entry is a candidate */
#define MELD_SEL_BLOCKS 256  /* sample: MELD_SEL_BLOCKS contiguous runs of MELD_SEL_RUN entries, */
#define MELD_SEL_RUN 128     /* run b starting at b * (n / MELD_SEL_BLOCKS) */

/* From a sample of S magnitudes (reordered in place), a bracket [lo, hi] that holds the k-th
 * largest of all n with high probability (4 sigma of the sample rank, plus a margin). A miss
 * costs time, never correctness: callers check the counts and fall back. */
void meld_select_bracket(uint32_t *sample, size_t S, size_t n, uint64_t k, uint32_t *lo, uint32_t *hi);
/* The rank-th largest (1-based) of a[0..len) (reordered); *tie_rank: the rank of that entry among
 * those equal to it, which the tie rule (lower index first) then places. */
uint32_t meld_select_kth(uint32_t *a, size_t len, uint64_t rank, uint64_t *tie_rank);
#endif
