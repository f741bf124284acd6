/* Internal: the OpenCL backend's entry points, called by the drivers when the context has an
 * OpenCL device attached. */
#ifndef MELD_OPENCL_INTERNAL_H
#define MELD_OPENCL_INTERNAL_H
#include "../merge/task_vectors.h"

static inline int meld_cl_active(const meld_context *ctx) { return ctx && ctx->opencl != NULL; }
/* 1 if p is a meld_buffer of this context (a device view) */
int meld_cl_is_buffer(const meld_context *ctx, const void *p);
meld_status meld_cl_reject_buffers(meld_context *ctx, const void *const *ptrs, size_t n, const char *op);

meld_status meld_cl_convert(meld_context *ctx, meld_view src, meld_span dst);
meld_status meld_cl_tv_run(meld_context *ctx, const tv_request *r);
meld_status meld_cl_select(meld_context *ctx, meld_view base, size_t count, const meld_view *x, const uint64_t *k,
                           meld_selection *out);
meld_status meld_cl_sparse_apply(meld_context *ctx, meld_view base, size_t k, const meld_packed_view *d,
                                 const float *scales, meld_span out);
meld_status meld_cl_weights_upload(meld_context *ctx, const void *w, meld_dtype dtype, size_t E, size_t N, size_t K,
                                   size_t ld, meld_moe_weights *p);
void meld_cl_weights_release(meld_moe_weights *p);
/* Y[crow[s]] = X[arow[s]] * W_e^T for positions s of expert e in [start[e], start[e+1]) */
meld_status meld_cl_grouped(meld_context *ctx, const meld_moe_weights *w, const size_t *start, const int32_t *arow,
                            const float *x, size_t ldx, size_t xrows, const int32_t *crow, float *y, size_t ldy, size_t yrows);
meld_status meld_cl_moe_ffn(meld_context *ctx, const float *x, size_t T, size_t ldx, const int32_t *ids, const float *weights,
                            size_t k, const meld_moe_weights *gu, const meld_moe_weights *dn, const meld_moe_weights *sgu,
                            const meld_moe_weights *sdn, const meld_moe_ffn_options *o, float *out, size_t ldo);
#endif
