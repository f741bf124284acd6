/* dtype conversion and the linear merge (model soup). */
#include <math.h>
#include "task_vectors.h"
#include "../device/opencl.h"

typedef struct lin_op {
    const meld_ukernels *uk;
} lin_op;

static void convert_tile(const meld_tile *t, void *opv) {
    lin_op *op = opv;
    op->uk->convert(t->n, (meld_uk_in){t->in[0], t->in_dt[0]}, t->out[0], t->out_dt[0]);
}

meld_status meld_convert(meld_context *ctx, meld_view src, meld_span dst) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(dst, dst.numel));
    MELD_TRY(meld_check_view(src, dst.numel));
    if (meld_cl_active(ctx)) return meld_cl_convert(ctx, src, dst);
    meld_stream s = {.n = dst.numel, .nin = 1, .nout = 1};
    s.in[0] = src.data; s.in_dt[0] = src.dtype;
    s.out[0] = dst.data; s.out_dt[0] = dst.dtype;
    lin_op op = {.uk = ctx->uk};
    return meld_stream_run(ctx, &s, convert_tile, &op);
}

/* Linear is the task-vector pass with no base, every rule "keep all" and no vote:
 * sum_k x_k * w_k, then / sum_k w_k when normalizing (the same operations, one kernel). */
meld_status meld_linear(meld_context *ctx, size_t k, const meld_view *models, const float *weights,
                        int normalize, meld_span out) {
    if (!ctx || !weights) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(out, out.numel));
    MELD_TRY(meld_check_models(k, models, out.numel));
    MELD_TRY(meld_check_weights(ctx, weights, k));
    float wsum = 0.0f;
    for (size_t i = 0; i < k; i++) wsum += weights[i];
    if (normalize && wsum == 0.0f) return MELD_ERR_INVALID_ARGUMENT;
    tv_rule rules[MELD_MAX_MODELS];
    for (size_t i = 0; i < k; i++) rules[i] = (tv_rule){.kind = TV_ALL, .scale = 1.0f};
    tv_request r = {.k = k, .x = models, .x_are_deltas = 1, .rule = rules, .w = weights,
                    .consensus = MELD_CONSENSUS_NONE, .divisor = normalize ? MELD_DIVISOR_WEIGHT_SUM : MELD_DIVISOR_NONE,
                    .fixed_div = wsum, .lambda = 1.0f, .out = out, .n = out.numel};
    return meld_tv_run(ctx, &r);
}
