/* The task-vector pass driver, shared by task arithmetic, TIES, sign election, disjoint merge
 * and the sparsified merges (DARE, DELLA, breadcrumbs, packed deltas). */
#ifndef MELD_TASK_VECTORS_H
#define MELD_TASK_VECTORS_H
#include "../core/internal.h"

/* A rule as the caller states it; BERNOULLI and MASK become per-tile BITS in the driver. */
typedef enum tv_rule_kind {
    TV_ALL = MELD_RULE_ALL,
    TV_NONE = MELD_RULE_NONE,
    TV_TOP = MELD_RULE_TOP,
    TV_WINDOW = MELD_RULE_WINDOW,
    TV_MASK = 10,      /* caller bitmap over the whole tensor, LSB first */
    TV_BERNOULLI = 11, /* Philox keep bits with key (key0, key1) and p32 */
} tv_rule_kind;

typedef struct tv_rule {
    tv_rule_kind kind;
    uint32_t thr, thr2;
    uint64_t cut, cut2;
    const uint8_t *mask;
    uint32_t key0, key1;
    uint64_t p32;
    float scale;
} tv_rule;

typedef struct tv_request {
    meld_view base;      /* data NULL: no base */
    size_t k;
    const meld_view *x;
    int x_are_deltas;
    const tv_rule *rule; /* k rules */
    const float *w;      /* k weights */
    meld_consensus consensus;
    int vote_unweighted;
    const int8_t *sign_in;
    meld_divisor divisor;
    float fixed_div;
    float lambda;
    meld_span out;       /* data NULL: none */
    int8_t *sign_out;
    size_t n;
    size_t first;        /* global index of element 0 of the range (a multiple of MELD_TILE; inputs
                            and rules are whole-tensor, out and sign_out hold the n of the range) */
} tv_request;

/* Top-k selections of count tensors (x_i - base, or x_i when base.data is NULL), one pass;
 * count <= MELD_MAX_MODELS, and the same view may appear several times with different k. */
meld_status meld_select_many(meld_context *ctx, meld_view base, size_t count, const meld_view *x,
                             const uint64_t *k, meld_selection *out);
meld_status meld_tv_run(meld_context *ctx, const tv_request *r);

/* The keep bits of a whole-tensor bitmap for one tile: full tiles read the bitmap in place
 * (i0 is a multiple of 16, so byte-aligned); the padded tail gets a masked copy in scratch
 * (MELD_TILE / 8 bytes). */
const uint8_t *meld_tile_mask(const meld_tile *t, const uint8_t *mask, uint8_t *scratch);
/* The ukernel form of a rule for one tile: MASK and BERNOULLI become BITS (Philox bits are
 * generated into scratch). Returns 1 if scratch was used. */
int meld_tile_rule(const meld_tile *t, const tv_rule *src, const meld_ukernels *uk, uint8_t *scratch, meld_uk_rule *out);
/* Rules of kind MASK or BERNOULLI: how many scratch bitmaps a tile needs. */
size_t meld_tile_scratch_count(const tv_rule *rules, size_t k);
tv_rule meld_tv_rule_from_selection(const meld_selection *s, size_t n);
#endif
