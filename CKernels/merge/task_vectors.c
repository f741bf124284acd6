/* Task arithmetic, TIES (fused), sign election, disjoint merge: all one streaming pass. */
#include <math.h>
#include <string.h>
#include "task_vectors.h"
#include "../device/opencl.h"

typedef struct tv_op {
    const tv_request *r;
    const meld_ukernels *uk;
} tv_op;

const uint8_t *meld_tile_mask(const meld_tile *t, const uint8_t *mask, uint8_t *scratch) {
    if (t->valid == t->n) return mask + t->i0 / 8;
    memset(scratch, 0, t->n / 8);
    meld_bits_copy(scratch, mask + t->i0 / 8, t->valid);
    return scratch;
}

int meld_tile_rule(const meld_tile *t, const tv_rule *src, const meld_ukernels *uk, uint8_t *scratch, meld_uk_rule *out) {
    *out = (meld_uk_rule){.kind = (uint32_t)src->kind, .thr = src->thr, .thr2 = src->thr2,
                          .cut = src->cut, .cut2 = src->cut2, .scale = src->scale};
    if (src->kind == TV_MASK) {
        out->kind = MELD_RULE_BITS;
        out->bits = meld_tile_mask(t, src->mask, scratch);
        return out->bits == scratch;
    }
    if (src->kind == TV_BERNOULLI) {
        meld_uk_philox_args pa = {src->key0, src->key1, src->p32, scratch};
        uk->philox_bits(t->n, t->i0, &pa); /* padded tail entries are zero deltas either way */
        out->kind = MELD_RULE_BITS;
        out->bits = scratch;
        return 1;
    }
    return 0;
}

size_t meld_tile_scratch_count(const tv_rule *rules, size_t k) {
    size_t c = 0;
    for (size_t i = 0; i < k; i++) c += rules[i].kind == TV_MASK || rules[i].kind == TV_BERNOULLI;
    return c;
}

static void tv_tile(const meld_tile *t, void *opv) {
    tv_op *op = opv;
    const tv_request *r = op->r;
    meld_uk_in x[MELD_MAX_MODELS];
    meld_uk_rule rules[MELD_MAX_MODELS];
    /* per-tile keep bits only for the experts that need them (a large fixed frame costs) */
    size_t nbits = meld_tile_scratch_count(r->rule, r->k), b = 0;
    uint8_t bits[nbits ? nbits : 1][MELD_TILE / 8];
    for (size_t k = 0; k < r->k; k++) {
        x[k] = (meld_uk_in){t->in[1 + k], t->in_dt[1 + k]};
        b += meld_tile_rule(t, &r->rule[k], op->uk, bits[b < nbits ? b : 0], &rules[k]);
    }
    meld_uk_tv_args a = {
        .k = r->k,
        .base = {t->in[0], t->in_dt[0]},
        .x = x,
        .x_are_deltas = r->x_are_deltas,
        .rule = rules,
        .w = r->w,
        .consensus = r->consensus,
        .vote_unweighted = r->vote_unweighted,
        .sign_in = r->sign_in ? (const int8_t *)t->in[1 + r->k] : NULL,
        .divisor = r->divisor,
        .fixed_div = r->fixed_div,
        .lambda = r->lambda,
        .out = t->out[0],
        .out_dt = t->out_dt[0],
        .sign_out = r->sign_out ? (int8_t *)t->out[1] : NULL,
    };
    op->uk->tv_merge(t->n, t->i0, &a);
}

meld_status meld_tv_run(meld_context *ctx, const tv_request *r) {
    if (meld_cl_active(ctx)) return r->first ? MELD_ERR_UNSUPPORTED : meld_cl_tv_run(ctx, r);
    meld_stream s = {.n = r->n, .first = r->first, .nin = (int)r->k + 1 + (r->sign_in ? 1 : 0), .nout = 2};
    s.in[0] = r->base.data;
    s.in_dt[0] = r->base.data ? (int)r->base.dtype : MELD_F32;
    for (size_t k = 0; k < r->k; k++) {
        s.in[1 + k] = r->x[k].data;
        s.in_dt[1 + k] = r->x[k].dtype;
    }
    if (r->sign_in) {
        s.in[1 + r->k] = r->sign_in;
        s.in_dt[1 + r->k] = MELD_ELEM_I8;
    }
    s.out[0] = r->out.data;
    s.out_dt[0] = r->out.data ? (int)r->out.dtype : MELD_F32;
    s.out[1] = r->sign_out;
    s.out_dt[1] = MELD_ELEM_I8;
    tv_op op = {r, ctx->uk};
    return meld_stream_run(ctx, &s, tv_tile, &op);
}

tv_rule meld_tv_rule_from_selection(const meld_selection *s, size_t n) {
    tv_rule r = {.kind = TV_TOP, .thr = s->threshold, .cut = s->tie_cutoff, .scale = 1.0f};
    if (s->kept == 0 || s->threshold > 0x7fffffffu) r.kind = TV_NONE;
    else if (s->kept >= n) r.kind = TV_ALL;
    return r;
}

/* ---- public entry points ---------------------------------------------------------------- */

static meld_status check_common(meld_context *ctx, meld_view base, size_t k, const meld_view *x,
                                const float *w, meld_span out) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    size_t n = out.numel;
    MELD_TRY(meld_check_span(out, n));
    if (base.data || base.numel) MELD_TRY(meld_check_view(base, n));
    MELD_TRY(meld_check_models(k, x, n));
    if (w) MELD_TRY(meld_check_weights(ctx, w, k));
    return MELD_OK;
}

meld_status meld_task_arithmetic(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                                 const float *weights, float lambda, int normalize, meld_span out) {
    if (!weights) return MELD_ERR_NULL_POINTER;
    if (!base.data && base.numel) return MELD_ERR_NULL_POINTER;
    MELD_TRY(check_common(ctx, base, k, models, weights, out));
    MELD_TRY(meld_check_view(base, out.numel));
    if (!isfinite(lambda)) return MELD_ERR_INVALID_ARGUMENT;
    tv_rule rules[MELD_MAX_MODELS];
    float wsum = 0.0f;
    for (size_t i = 0; i < k; i++) {
        rules[i] = (tv_rule){.kind = TV_ALL, .scale = 1.0f};
        wsum += weights[i];
    }
    tv_request r = {.base = base, .k = k, .x = models, .rule = rules, .w = weights,
                    .consensus = MELD_CONSENSUS_NONE,
                    .divisor = normalize ? MELD_DIVISOR_WEIGHT_SUM : MELD_DIVISOR_NONE,
                    .fixed_div = fabsf(wsum) < 1e-8f ? 1.0f : wsum, .lambda = lambda,
                    .out = out, .n = out.numel};
    return meld_tv_run(ctx, &r);
}

meld_ties_options meld_ties_options_default(void) {
    return (meld_ties_options){.consensus = MELD_CONSENSUS_SUM, .divisor = MELD_DIVISOR_WEIGHT_SUM,
                               .vote_unweighted = 0, .lambda = 1.0f};
}

static meld_status check_ties_options(const meld_ties_options *o) {
    if (!o) return MELD_ERR_NULL_POINTER;
    if (o->consensus < MELD_CONSENSUS_NONE || o->consensus > MELD_CONSENSUS_COUNT) return MELD_ERR_INVALID_ARGUMENT;
    if (o->divisor < MELD_DIVISOR_NONE || o->divisor > MELD_DIVISOR_COUNT) return MELD_ERR_INVALID_ARGUMENT;
    if (!isfinite(o->lambda)) return MELD_ERR_INVALID_ARGUMENT;
    return MELD_OK;
}

meld_status meld_ties_fused(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                            const float *weights, const meld_selection *selections,
                            const meld_ties_options *options, meld_span out) {
    if (!weights || !selections) return MELD_ERR_NULL_POINTER;
    MELD_TRY(check_common(ctx, base, k, models, weights, out));
    MELD_TRY(meld_check_view(base, out.numel));
    MELD_TRY(check_ties_options(options));
    tv_rule rules[MELD_MAX_MODELS];
    float wsum = 0.0f;
    for (size_t i = 0; i < k; i++) {
        rules[i] = meld_tv_rule_from_selection(&selections[i], out.numel);
        wsum += weights[i];
    }
    tv_request r = {.base = base, .k = k, .x = models, .rule = rules, .w = weights,
                    .consensus = options->consensus, .vote_unweighted = options->vote_unweighted,
                    .divisor = options->divisor, .fixed_div = fabsf(wsum) < 1e-8f ? 1.0f : wsum,
                    .lambda = options->lambda, .out = out, .n = out.numel};
    return meld_tv_run(ctx, &r);
}

meld_status meld_ties(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                      const float *weights, const double *densities, const meld_ties_options *options,
                      meld_span out) {
    if (!weights || !densities) return MELD_ERR_NULL_POINTER;
    MELD_TRY(check_common(ctx, base, k, models, weights, out));
    MELD_TRY(check_ties_options(options));
    meld_selection sel[MELD_MAX_MODELS];
    MELD_TRY(meld_task_select(ctx, base, k, models, densities, sel));
    return meld_ties_fused(ctx, base, k, models, weights, sel, options, out);
}

meld_status meld_sign_elect(meld_context *ctx, size_t k, const meld_view *deltas, const float *weights,
                            meld_consensus method, int8_t *sign, size_t n) {
    if (!ctx || (!sign && n)) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_models(k, deltas, n));
    if (weights) MELD_TRY(meld_check_weights(ctx, weights, k));
    if (method != MELD_CONSENSUS_SUM && method != MELD_CONSENSUS_COUNT) return MELD_ERR_INVALID_ARGUMENT;
    tv_rule rules[MELD_MAX_MODELS];
    float ones[MELD_MAX_MODELS];
    for (size_t i = 0; i < k; i++) {
        rules[i] = (tv_rule){.kind = TV_ALL, .scale = 1.0f};
        ones[i] = 1.0f;
    }
    tv_request r = {.k = k, .x = deltas, .x_are_deltas = 1, .rule = rules, .w = weights ? weights : ones,
                    .consensus = method, .lambda = 1.0f, .sign_out = sign, .n = n};
    return meld_tv_run(ctx, &r);
}

meld_status meld_disjoint_merge(meld_context *ctx, meld_view base, size_t k, const meld_view *deltas,
                                const float *weights, const int8_t *sign, int vote_unweighted,
                                meld_divisor divisor, float lambda, meld_span out) {
    if (!weights || (!sign && out.numel)) return MELD_ERR_NULL_POINTER;
    MELD_TRY(check_common(ctx, base, k, deltas, weights, out));
    if (divisor < MELD_DIVISOR_NONE || divisor > MELD_DIVISOR_COUNT || !isfinite(lambda))
        return MELD_ERR_INVALID_ARGUMENT;
    tv_rule rules[MELD_MAX_MODELS];
    for (size_t i = 0; i < k; i++) rules[i] = (tv_rule){.kind = TV_ALL, .scale = 1.0f};
    tv_request r = {.base = base, .k = k, .x = deltas, .x_are_deltas = 1, .rule = rules, .w = weights,
                    .consensus = MELD_CONSENSUS_SUM, .vote_unweighted = vote_unweighted,
                    .sign_in = sign, .divisor = divisor, .lambda = lambda, .out = out, .n = out.numel};
    return meld_tv_run(ctx, &r);
}

meld_status meld_apply_selection(meld_context *ctx, meld_view v, const meld_selection *sel, meld_span out) {
    if (!ctx || !sel) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(out, out.numel));
    MELD_TRY(meld_check_view(v, out.numel));
    tv_rule rule = meld_tv_rule_from_selection(sel, out.numel);
    float one = 1.0f;
    tv_request r = {.k = 1, .x = &v, .x_are_deltas = 1, .rule = &rule, .w = &one,
                    .consensus = MELD_CONSENSUS_NONE, .lambda = 1.0f, .out = out, .n = out.numel};
    return meld_tv_run(ctx, &r);
}
