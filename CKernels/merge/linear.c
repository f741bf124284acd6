/* dtype conversion and the linear merge (model soup). */
#include <math.h>
#include "../core/internal.h"

typedef struct lin_op {
    const meld_ukernels *uk;
    size_t k;
    const float *w;
    float div;
} lin_op;

static void convert_tile(const meld_tile *t, void *opv) {
    lin_op *op = opv;
    op->uk->convert(t->n, (meld_uk_in){t->in[0], t->in_dt[0]}, t->out[0], t->out_dt[0]);
}

meld_status meld_convert(meld_context *ctx, meld_view src, meld_span dst) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(dst, dst.numel));
    MELD_TRY(meld_check_view(src, dst.numel));
    meld_stream s = {.n = dst.numel, .nin = 1, .nout = 1};
    s.in[0] = src.data; s.in_dt[0] = src.dtype;
    s.out[0] = dst.data; s.out_dt[0] = dst.dtype;
    lin_op op = {.uk = ctx->uk};
    return meld_stream_run(ctx, &s, convert_tile, &op);
}

static void linear_tile(const meld_tile *t, void *opv) {
    lin_op *op = opv;
    meld_uk_in x[MELD_MAX_MODELS];
    for (size_t k = 0; k < op->k; k++) x[k] = (meld_uk_in){t->in[k], t->in_dt[k]};
    op->uk->linear(t->n, op->k, x, op->w, op->div, t->out[0], t->out_dt[0]);
}

meld_status meld_linear(meld_context *ctx, size_t k, const meld_view *models, const float *weights,
                        int normalize, meld_span out) {
    if (!ctx || !weights) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(out, out.numel));
    MELD_TRY(meld_check_models(k, models, out.numel));
    MELD_TRY(meld_check_floats(weights, k));
    float wsum = 0.0f;
    for (size_t i = 0; i < k; i++) wsum += weights[i];
    if (normalize && wsum == 0.0f) return MELD_ERR_INVALID_ARGUMENT;
    meld_stream s = {.n = out.numel, .nin = (int)k, .nout = 1};
    for (size_t i = 0; i < k; i++) { s.in[i] = models[i].data; s.in_dt[i] = models[i].dtype; }
    s.out[0] = out.data; s.out_dt[0] = out.dtype;
    lin_op op = {.uk = ctx->uk, .k = k, .w = weights, .div = normalize ? wsum : 0.0f};
    return meld_stream_run(ctx, &s, linear_tile, &op);
}
