/* Meld merge kernels: dtype conversion, linear (model soup), task arithmetic, magnitude
 * selection, sign election, disjoint merge and the fused TIES pass.
 *
 * Numerics (all kernels): inputs in any of F32/F16/BF16 (mixed allowed), arithmetic in f32,
 * outputs rounded to nearest even, NaN preserved (quieted). Each element's operations happen
 * in one fixed order, so results are bit-identical across ISA paths and thread counts.
 * All tensors are flat; every call checks that element counts agree. Merge weights must be
 * finite with sum_k |w_k| within f32's range (so that every weight-sum divisor is finite),
 * else MELD_ERR_INVALID_ARGUMENT with the context's message saying which. */
#ifndef MELD_MERGE_H
#define MELD_MERGE_H

#include "meld_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bound on the number of models in one merge call. */
#define MELD_MAX_MODELS 64

/* dst = src converted (exact widening, RNE narrowing). */
MELD_API meld_status meld_convert(meld_context *ctx, meld_view src, meld_span dst);

/* Linear merge (model soup): out = sum_k w_k x_k, divided by sum_k w_k when normalize != 0
 * (a weight sum of exactly 0 with normalize is MELD_ERR_INVALID_ARGUMENT). Products are
 * accumulated in k order: acc = acc + w_k * x_k (not fused), as mergekit/torch does. */
MELD_API meld_status meld_linear(meld_context *ctx, size_t k, const meld_view *models,
                                 const float *weights, int normalize, meld_span out);

/* Task arithmetic (mergekit task_arithmetic): d = sum_k w_k (x_k - base);
 * if normalize: d /= sum_k w_k (a sum with |s| < 1e-8 counts as 1); out = base + lambda * d. */
MELD_API meld_status meld_task_arithmetic(meld_context *ctx, meld_view base, size_t k,
                                          const meld_view *models, const float *weights,
                                          float lambda, int normalize, meld_span out);

/* ---- Magnitude selection -------------------------------------------------------------
 * The k entries of largest |v| are kept. Ordering is by |v| (NaN above +Inf), ties broken by
 * lower index first. The result is a compact rule: entry i is kept iff
 *     absbits(v_i) > threshold  ||  (absbits(v_i) == threshold && i < tie_cutoff)
 * where absbits is the f32 bit pattern with the sign cleared. k = 0 gives threshold
 * 0xFFFFFFFF (nothing kept). Found by exact radix selection over the bit pattern: no sort. */
typedef struct meld_selection {
    uint32_t threshold;
    uint64_t tie_cutoff;
    uint64_t kept; /* = k */
} meld_selection;

/* k from a density, as mergekit: density >= 1 keeps all, density <= 0 none, otherwise
 * k = max(1, floor(density * n)). density must lie in [0, 1] and not be NaN. */
MELD_API meld_status meld_density_count(double density, size_t n, uint64_t *k);

/* Select the top-k of one tensor. */
MELD_API meld_status meld_select_topk(meld_context *ctx, meld_view v, uint64_t k,
                                      meld_selection *out);
/* Select by density (k from meld_density_count). */
MELD_API meld_status meld_magnitude_select(meld_context *ctx, meld_view v, double density,
                                           meld_selection *out);
/* Select on the task vectors delta_k = x_k - base of k models at once, in one pass over the
 * inputs (no delta is materialized). densities[k] in [0, 1]. */
MELD_API meld_status meld_task_select(meld_context *ctx, meld_view base, size_t k,
                                      const meld_view *models, const double *densities,
                                      meld_selection *out);
/* out = v where selected, else v * 0 (so NaN/Inf stay visible, as torch's tensor * mask). */
MELD_API meld_status meld_apply_selection(meld_context *ctx, meld_view v,
                                          const meld_selection *sel, meld_span out);

/* ---- Sign election and disjoint merge ------------------------------------------------ */
typedef enum meld_consensus {
    MELD_CONSENSUS_NONE = 0,  /* no vote: every expert agrees */
    MELD_CONSENSUS_SUM = 1,   /* sign of sum_k v_k (TIES, mergekit "sum") */
    MELD_CONSENSUS_COUNT = 2, /* sign of sum_k sign(v_k) (mergekit "count") */
} meld_consensus;

typedef enum meld_divisor {
    MELD_DIVISOR_NONE = 0,       /* no normalization */
    MELD_DIVISOR_WEIGHT_SUM = 1, /* sum of agreeing experts' weights (mergekit normalize) */
    MELD_DIVISOR_COUNT = 2,      /* number of agreeing experts (TIES paper, PEFT) */
} meld_divisor;

/* sign[i] = +1 or -1: the sign of the vote over v_k = w_k * delta_k (weights NULL: v_k =
 * delta_k, the paper's unweighted vote). A total of zero elects +1; a NaN total -1. */
MELD_API meld_status meld_sign_elect(meld_context *ctx, size_t k, const meld_view *deltas,
                                     const float *weights, meld_consensus method,
                                     int8_t *sign, size_t n);

/* out = base + lambda * (sum over agreeing k of w_k delta_k) / divisor. Expert k agrees at i
 * when w_k*delta_k (or delta_k if vote_unweighted) has the elected sign; zero never agrees.
 * A zero divisor counts as 1. base may be absent ({NULL, 0}): then base = 0. */
MELD_API meld_status meld_disjoint_merge(meld_context *ctx, meld_view base, size_t k,
                                         const meld_view *deltas, const float *weights,
                                         const int8_t *sign, int vote_unweighted,
                                         meld_divisor divisor, float lambda, meld_span out);

/* ---- TIES ---------------------------------------------------------------------------- */
typedef struct meld_ties_options {
    meld_consensus consensus; /* default SUM */
    meld_divisor divisor;     /* default WEIGHT_SUM (mergekit normalize: true) */
    int vote_unweighted;      /* default 0: vote on w_k * delta_k as mergekit */
    float lambda;             /* default 1 */
} meld_ties_options;

MELD_API meld_ties_options meld_ties_options_default(void);

/* TIES end to end: per-expert thresholds (meld_task_select), then the fused pass. */
MELD_API meld_status meld_ties(meld_context *ctx, meld_view base, size_t k,
                               const meld_view *models, const float *weights,
                               const double *densities, const meld_ties_options *options,
                               meld_span out);

/* The fused pass alone: one streaming pass over base and the k models, given selections
 * (one per model), writes the merged tensor; no k x n temporaries. */
MELD_API meld_status meld_ties_fused(meld_context *ctx, meld_view base, size_t k,
                                     const meld_view *models, const float *weights,
                                     const meld_selection *selections,
                                     const meld_ties_options *options, meld_span out);

#ifdef __cplusplus
}
#endif
#endif
