/* Meld sparse and geometric merges: counter-based RNG, DARE, DELLA, Model Breadcrumbs, masked
 * sparse task vectors, SLERP, NuSLERP, Model Stock.
 *
 * Reproducibility. Random masks come from Philox4x32-10 and depend only on (seed, stream,
 * element index): the same bits on any thread count, ISA path or device, in any order of tensors.
 *   - stream = meld_rng_stream(tensor name, expert index): FNV-1a-64 of the name's bytes, then
 *     splitmix64(h ^ (expert + 1) * 0x9E3779B97F4A7C15).
 *   - key (k0, k1) = low and high 32 bits of splitmix64(seed ^ splitmix64(stream)).
 *   - DARE (RANDOM): with c = i/8, u = the 16-bit half (i mod 2) (0 = low) of word ((i/2) mod 4)
 *     of Philox4x32-10(key, counter = (lo32(c), hi32(c), 0, 0)), v the same of counter
 *     (lo32(c), hi32(c), 1, 0); element i is kept iff u * 2^16 + v < ceil(p * 2^32). v is only
 *     drawn when u is the threshold's high half, so a keep bit costs half a Philox word, at a
 *     resolution of 2^-32. (Before 0.9.0: one 24-bit uniform per word.)
 *   - DELLA: element i uses word (i mod 4) of Philox4x32-10(key, (lo32(i/4), hi32(i/4),
 *     0, 0)); u = word >> 8 is a 24-bit uniform, kept iff u < ceil(p(rank) * 2^24).
 * Reductions (L1 norms, dot products, Gram matrices) accumulate in f64 over 16 fixed lanes per
 * 4096-element tile, and tiles in index order: results do not depend on the thread count. */
#ifndef MELD_SPARSE_H
#define MELD_SPARSE_H

#include "meld_merge.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- RNG -------------------------------------------------------------------------------- */
/* One Philox4x32-10 block (the Random123 algorithm): out = Philox(key, counter). */
MELD_API meld_status meld_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);
MELD_API uint64_t meld_rng_stream(const char *name, size_t name_len, uint32_t expert);

/* ---- Sparsifiers ------------------------------------------------------------------------ */
typedef enum meld_sparsify_method {
    MELD_SPARSIFY_NONE = 0,               /* keep everything */
    MELD_SPARSIFY_MAGNITUDE = 1,          /* TIES trim: the top k = max(1, floor(d n)) by |delta| */
    MELD_SPARSIFY_RANDOM = 2,             /* DARE: keep ~ Bernoulli(density) */
    MELD_SPARSIFY_MAGNITUDE_OUTLIERS = 3, /* Model Breadcrumbs: drop the gamma largest and the smallest */
    MELD_SPARSIFY_DELLA = 4,              /* DELLA magprune: per-row rank-dependent keep probability */
    MELD_SPARSIFY_MASK = 5,               /* a caller bitmap (LSB first, ceil(n/8) bytes) */
} meld_sparsify_method;

typedef enum meld_rescale {
    MELD_RESCALE_NONE = 0,
    MELD_RESCALE_DENSITY = 1, /* divide kept entries by the keep probability (DARE paper, PEFT) */
    MELD_RESCALE_L1 = 2,      /* scale = sum|delta| / sum|kept delta| (mergekit 0.1.x); 1 when either < 1e-7 */
} meld_rescale;

typedef struct meld_sparsifier {
    meld_sparsify_method method;
    double density;      /* in [0, 1]; double, as mergekit computes k = int(density * n) */
    double gamma;         /* MAGNITUDE_OUTLIERS: fraction of the largest entries dropped, in [0, 1] */
    double epsilon;      /* DELLA: 0 < density - epsilon and density + epsilon < 1 */
    meld_rescale rescale;
    uint64_t seed;       /* RANDOM, DELLA */
    uint64_t stream;     /* RANDOM, DELLA: meld_rng_stream(name, expert) */
    size_t row_length;   /* DELLA: ranks are per row of this length; 0 = the whole tensor */
    const uint8_t *mask; /* MASK */
} meld_sparsifier;

/* Details of the rules:
 *  - MAGNITUDE_OUTLIERS: target = floor(d n), n_top = floor(gamma n), n_bot = n - target - n_top;
 *    if n_bot < 0 then n_top += n_bot, n_bot = 0; keep ascending ranks [n_bot, n_bot + target).
 *  - DELLA: r = 1-based ascending rank of |delta| in its row (ties: lower index first),
 *    p = (d - eps) + 2 eps (r - 1) / (m - 1) for a row of m > 1 entries (p = d when m = 1).
 *    DELLA takes rescale NONE or L1 (MELD_ERR_UNSUPPORTED for DENSITY).
 *  - density >= 1 keeps everything for every method but MASK; density <= 0 keeps nothing.
 *    MASK keeps the bitmap's entries whatever the density. */

typedef struct meld_merge_options {
    meld_consensus consensus; /* NONE for linear-style methods, SUM for *_ties, della */
    meld_divisor divisor;     /* WEIGHT_SUM = mergekit normalize */
    int vote_unweighted;
    float lambda;
} meld_merge_options;

/* The generalized task-vector merge (mergekit's generalized task arithmetic):
 * t_k = sparsify_k(x_k - base) [* rescale_k]; v_k = w_k t_k; optional sign vote over v_k;
 * out = base + lambda * (sum of agreeing v_k) / divisor. One fused streaming pass after the
 * per-expert thresholds / norms are known. Covers task_arithmetic, ties, dare_ties, dare_linear,
 * breadcrumbs, breadcrumbs_ties, della, della_linear. */
MELD_API meld_status meld_merge_task_vectors(meld_context *ctx, meld_view base, size_t k,
                                             const meld_view *models, const float *weights,
                                             const meld_sparsifier *sparsifiers,
                                             const meld_merge_options *options, meld_span out);

/* The same merge in two steps, for callers that consume the output in pieces (a writer that
 * streams chunks to a file needs no tensor-sized buffer): create does the passes that need the
 * whole tensor (thresholds, L1 norms, DELLA masks) and keeps the views, which must stay valid
 * (with any MASK bitmaps) until destroy; run writes elements [first, first + out.numel) of the
 * merged tensor into out, with the same bits as the one-call form. first must be a multiple of
 * MELD_MERGE_RANGE_ALIGN; run on the context the plan was made with. On an OpenCL context only
 * first = 0 runs (MELD_ERR_UNSUPPORTED otherwise). */
#define MELD_MERGE_RANGE_ALIGN 16384
typedef struct meld_merge_plan meld_merge_plan;
MELD_API meld_status meld_merge_plan_create(meld_context *ctx, meld_view base, size_t k,
                                            const meld_view *models, const float *weights,
                                            const meld_sparsifier *sparsifiers,
                                            const meld_merge_options *options, meld_merge_plan **out);
MELD_API meld_status meld_merge_plan_run(meld_context *ctx, const meld_merge_plan *plan, size_t first,
                                         meld_span out);
MELD_API meld_status meld_merge_plan_destroy(meld_merge_plan *plan);

/* The keep mask of one sparsifier applied to delta = x - base (base absent, {NULL, 0}: delta = x):
 * mask receives ceil(n/8) bytes, LSB first; *scale the rescale factor (1 when none; for
 * DENSITY with RANDOM, 1/density). */
MELD_API meld_status meld_sparsify_mask(meld_context *ctx, meld_view base, meld_view x,
                                        const meld_sparsifier *sparsifier, uint8_t *mask, float *scale);

/* ---- Masked sparse task vectors ----------------------------------------------------------
 * Layout (stores as two safetensors entries): NAME.mask, U8 [ceil(n/8)]: bit i % 8 of byte
 * i / 8 is entry i (LSB first); NAME.values, F32/F16/BF16 [nnz]: the kept entries in index order.
 * The dense shape travels in the file's metadata. */
typedef struct meld_packed_view {
    const uint8_t *mask;
    const void *values;
    size_t numel;  /* dense element count */
    size_t nnz;    /* values entries = popcount(mask) */
    meld_dtype dtype;
} meld_packed_view;

MELD_API meld_status meld_mask_count(const uint8_t *mask, size_t n, size_t *nnz);
/* values[j] = delta at the j-th set bit (delta = x - base; base absent, {NULL, 0}: delta = x), times scale. */
MELD_API meld_status meld_pack(meld_context *ctx, meld_view base, meld_view x, const uint8_t *mask,
                               float scale, meld_span values);
/* out = base + sum_k scales[k] * unpack(deltas[k]) in one pass; base absent ({NULL, 0}): base = 0. In
 * f32, k ascending, each kept entry one fused multiply-add (acc = fma(scale, value, acc));
 * entries a delta does not keep leave acc as it is. */
MELD_API meld_status meld_sparse_apply(meld_context *ctx, meld_view base, size_t k,
                                       const meld_packed_view *deltas, const float *scales, meld_span out);

/* ---- Geometric merges ------------------------------------------------------------------- */
/* These weigh whole tensors by their norms and angles, which NaN or Inf in an input leave
 * without meaning: such inputs are MELD_ERR_INVALID_ARGUMENT (the message says so), where the
 * element-wise merges carry a NaN through to its own output entry. */
/* mergekit slerp: angle between normalized copies of v0 and v1 (norms > 1e-8), |cos| > 0.9995
 * falls back to lerp; out = s0 v0 + s1 v1 on the unnormalized tensors. t in [0, 1] (NaN: error). */
MELD_API meld_status meld_slerp(meld_context *ctx, float t, meld_view v0, meld_view v1, meld_span out);
/* NuSLERP: t = w1 / (w0 + w1); with a base (not {NULL, 0}), slerp runs on x - base and base is added back. */
MELD_API meld_status meld_nuslerp(meld_context *ctx, meld_view base, meld_view x0, meld_view x1,
                                  float w0, float w1, meld_span out);
/* Model Stock: cos = mean pairwise cosine of the task vectors x_k - base (k >= 2),
 * t = k cos / (1 + (k - 1) cos), out = t mean(x) + (1 - t) base. *t_out (may be NULL) gets t.
 * cos = -1/(k - 1) leaves t without a finite value: MELD_ERR_INVALID_ARGUMENT. */
MELD_API meld_status meld_model_stock(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                                      meld_span out, float *t_out);
/* The weights these merges apply, from their reduction pass alone (no output): each merge is
 * out = sum_i w[i] x[i] with x = (v0, v1) for slerp, (x0, x1, base) for nuslerp (w[2] = 0 without
 * a base) and (models..., base) for model stock (k + 1 weights). meld_linear(ctx, count, x, w, 0,
 * out) over any range of the inputs gives the same bits as the whole call there, so a caller can
 * write a large tensor in pieces. Model stock: a mean cosine of -1/(k - 1) leaves t infinite,
 * MELD_ERR_INVALID_ARGUMENT (the message says so). */
MELD_API meld_status meld_slerp_weights(meld_context *ctx, float t, meld_view v0, meld_view v1, float w[2]);
MELD_API meld_status meld_nuslerp_weights(meld_context *ctx, meld_view base, meld_view x0, meld_view x1,
                                          float w0, float w1, float w[3]);
MELD_API meld_status meld_model_stock_weights(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                                              float *w, float *t_out);
/* Gram matrix of the task vectors (base absent, {NULL, 0}: of x itself), f64, fixed blocking:
 * gram[i * k + j] = sum (x_i - base)(x_j - base). */
MELD_API meld_status meld_gram(meld_context *ctx, meld_view base, size_t k, const meld_view *x, double *gram);

#ifdef __cplusplus
}
#endif
#endif
