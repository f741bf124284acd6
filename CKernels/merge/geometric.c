/* SLERP, NuSLERP and Model Stock: an f64 Gram reduction (fixed blocking, so thread-count
 * independent), scalar geometry, then one linear pass. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "task_vectors.h"
#include "../device/opencl.h"

typedef struct gram_op {
    const meld_ukernels *uk;
    size_t k, pairs;
    double *partial; /* [tile][pairs] */
} gram_op;

static void gram_tile(const meld_tile *t, void *opv) {
    gram_op *op = opv;
    meld_uk_in x[MELD_GRAM_MAX];
    for (size_t i = 0; i < op->k; i++) x[i] = (meld_uk_in){t->in[1 + i], t->in_dt[1 + i]};
    meld_uk_gram_args a = {.k = op->k, .base = {t->in[0], t->in_dt[0]}, .x = x, .out = op->partial + t->index * op->pairs};
    op->uk->gram(t->n, &a); /* the zero-padded tail adds exact zeros */
}

meld_status meld_gram(meld_context *ctx, meld_view base, size_t k, const meld_view *x, double *gram) {
    if (!ctx || !x || !gram) return MELD_ERR_NULL_POINTER;
    if (k == 0 || k > MELD_GRAM_MAX) return MELD_ERR_INVALID_ARGUMENT;
    const size_t n = x[0].numel;
    MELD_TRY(meld_check_models(k, x, n));
    if (base.data || base.numel) MELD_TRY(meld_check_view(base, n));
    MELD_TRY(meld_cl_reject_buffers(ctx, (const void *[]){base.data}, 1, "the geometric merges"));
    for (size_t i = 0; i < k; i++) MELD_TRY(meld_cl_reject_buffers(ctx, (const void *[]){x[i].data}, 1, "the geometric merges"));
    const size_t pairs = k * (k + 1) / 2, tiles = meld_stream_tiles(n);
    double *partial = calloc(tiles * pairs + 1, sizeof(double));
    if (!partial) return MELD_ERR_OUT_OF_MEMORY;
    meld_stream s = {.n = n, .nin = 1 + (int)k};
    s.in[0] = base.data;
    s.in_dt[0] = base.data ? (int)base.dtype : MELD_F32;
    for (size_t i = 0; i < k; i++) { s.in[1 + i] = x[i].data; s.in_dt[1 + i] = x[i].dtype; }
    gram_op op = {.uk = ctx->uk, .k = k, .pairs = pairs, .partial = partial};
    meld_status st = meld_stream_run(ctx, &s, gram_tile, &op);
    if (st == MELD_OK) {
        size_t p = 0;
        for (size_t i = 0; i < k; i++)
            for (size_t j = i; j < k; j++, p++) {
                double sum = 0.0;
                for (size_t t = 0; t < tiles; t++) sum += partial[t * pairs + p];
                gram[i * k + j] = gram[j * k + i] = sum;
            }
    }
    free(partial);
    return st;
}

/* s0, s1 of mergekit's slerp from |v0|^2, v0.v1, |v1|^2 */
static void slerp_coefficients(double t, double g00, double g01, double g11, double *s0, double *s1) {
    const double eps = 1e-8;
    double n0 = sqrt(g00), n1 = sqrt(g11);
    double dot = g01 / ((n0 > eps ? n0 : 1.0) * (n1 > eps ? n1 : 1.0));
    if (fabs(dot) > 0.9995) { *s0 = 1.0 - t; *s1 = t; return; }
    double theta0 = acos(dot), sin0 = sin(theta0), theta_t = theta0 * t;
    *s0 = sin(theta0 - theta_t) / sin0;
    *s1 = sin(theta_t) / sin0;
}

/* The angles and norms these merges need are meaningless once an input holds NaN or Inf (the
 * Gram entries are then not finite): refused, saying so, instead of reaching meld_linear as NaN
 * weights (whose message would blame weights the caller never gave). */
static meld_status check_gram(meld_context *ctx, const char *merge, const double *g, size_t k) {
    for (size_t i = 0; i < k * k; i++)
        if (!isfinite(g[i])) {
            meld_set_error(ctx, "%s: the inputs hold NaN or Inf (their norms and dot products are not finite)", merge);
            return MELD_ERR_INVALID_ARGUMENT;
        }
    return MELD_OK;
}

static meld_status combine(meld_context *ctx, size_t k, const meld_view *x, const float *w, meld_span out) {
    return meld_linear(ctx, k, x, w, 0, out);
}

meld_status meld_slerp_weights(meld_context *ctx, float t, meld_view v0, meld_view v1, float w[2]) {
    if (!ctx || !w) return MELD_ERR_NULL_POINTER;
    if (!(t >= 0.0f && t <= 1.0f)) return MELD_ERR_INVALID_ARGUMENT;
    meld_view v[2] = {v0, v1};
    double g[4], s0, s1;
    MELD_TRY(meld_gram(ctx, (meld_view){0}, 2, v, g));
    MELD_TRY(check_gram(ctx, "slerp", g, 2));
    slerp_coefficients(t, g[0], g[1], g[3], &s0, &s1);
    w[0] = (float)s0;
    w[1] = (float)s1;
    return MELD_OK;
}

meld_status meld_slerp(meld_context *ctx, float t, meld_view v0, meld_view v1, meld_span out) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(out, out.numel));
    meld_view v[2] = {v0, v1};
    MELD_TRY(meld_check_models(2, v, out.numel));
    float w[2];
    MELD_TRY(meld_slerp_weights(ctx, t, v0, v1, w));
    return combine(ctx, 2, v, w, out);
}

meld_status meld_nuslerp_weights(meld_context *ctx, meld_view base, meld_view x0, meld_view x1, float w0, float w1, float w[3]) {
    if (!ctx || !w) return MELD_ERR_NULL_POINTER;
    if (!isfinite(w0) || !isfinite(w1) || w0 + w1 == 0.0f) return MELD_ERR_INVALID_ARGUMENT;
    meld_view v[2] = {x0, x1};
    MELD_TRY(meld_check_models(2, v, x0.numel));
    if (base.data || base.numel) MELD_TRY(meld_check_view(base, x0.numel));
    double t = (double)w1 / ((double)w0 + (double)w1), g[4], s0, s1;
    MELD_TRY(meld_gram(ctx, base, 2, v, g));
    MELD_TRY(check_gram(ctx, "nuslerp", g, 2));
    slerp_coefficients(t, g[0], g[1], g[3], &s0, &s1);
    /* with a base: base + s0 (x0 - base) + s1 (x1 - base) */
    w[0] = (float)s0;
    w[1] = (float)s1;
    w[2] = base.data ? (float)(1.0 - s0 - s1) : 0.0f;
    return MELD_OK;
}

meld_status meld_nuslerp(meld_context *ctx, meld_view base, meld_view x0, meld_view x1, float w0, float w1, meld_span out) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(out, out.numel));
    meld_view v[3] = {x0, x1, base};
    MELD_TRY(meld_check_models(2, v, out.numel));
    float w[3];
    MELD_TRY(meld_nuslerp_weights(ctx, base, x0, x1, w0, w1, w));
    return combine(ctx, base.data ? 3 : 2, v, w, out);
}

meld_status meld_model_stock_weights(meld_context *ctx, meld_view base, size_t k, const meld_view *models, float *w, float *t_out) {
    if (!ctx || !models || !w) return MELD_ERR_NULL_POINTER;
    if (k < 2 || k > MELD_GRAM_MAX) return MELD_ERR_INVALID_ARGUMENT;
    MELD_TRY(meld_check_view(base, models[0].numel));
    MELD_TRY(meld_check_models(k, models, models[0].numel));
    double g[MELD_GRAM_MAX * MELD_GRAM_MAX];
    MELD_TRY(meld_gram(ctx, base, k, models, g));
    MELD_TRY(check_gram(ctx, "model stock", g, k));
    double cos_sum = 0.0;
    size_t pairs = 0;
    for (size_t i = 0; i < k; i++)
        for (size_t j = i + 1; j < k; j++, pairs++) {
            double np = sqrt(g[i * k + i]) * sqrt(g[j * k + j]);
            double c = g[i * k + j] / (np > 1e-6 ? np : 1e-6);
            cos_sum += c < -1.0 ? -1.0 : c > 1.0 ? 1.0 : c;
        }
    double c = cos_sum / (double)pairs, N = (double)k;
    double t = N * c / (1.0 + (N - 1.0) * c);
    if (t_out) *t_out = (float)t;
    if (!isfinite(t)) {
        meld_set_error(ctx, "the task vectors' mean pairwise cosine is %g, where t = k cos / (1 + (k - 1) cos) has no finite value", c);
        return MELD_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < k; i++) w[i] = (float)(t / N);
    w[k] = (float)(1.0 - t);
    return MELD_OK;
}

meld_status meld_model_stock(meld_context *ctx, meld_view base, size_t k, const meld_view *models, meld_span out, float *t_out) {
    if (!ctx || !models) return MELD_ERR_NULL_POINTER;
    if (k < 2 || k > MELD_GRAM_MAX) return MELD_ERR_INVALID_ARGUMENT;
    MELD_TRY(meld_check_span(out, out.numel));
    MELD_TRY(meld_check_view(base, out.numel));
    MELD_TRY(meld_check_models(k, models, out.numel));
    float w[MELD_GRAM_MAX + 1];
    MELD_TRY(meld_model_stock_weights(ctx, base, k, models, w, t_out));
    meld_view v[MELD_GRAM_MAX + 1];
    for (size_t i = 0; i < k; i++) v[i] = models[i];
    v[k] = base;
    return combine(ctx, k + 1, v, w, out);
}
