/* Meld mixture-of-experts kernels: routing, the dispatch plan, the grouped matmul (offsets and
 * gather forms) over packed expert weights, and the fused MoE FFN.
 *
 * Layouts: activations are f32 row-major with a leading dimension (elements); expert weights are
 * E x N x K row-major (PyTorch Linear: [out, in]) in f32, bf16 or f16, packed once per context
 * ISA by meld_moe_weights_pack; a grouped matmul computes Y[rows of e] = X[rows of e] * W_e^T
 * with f32 accumulation. Every output element is computed by one task in a fixed order: a
 * chain of fused multiply-adds over k in KC-deep slices (KC the same on every path), each slice's
 * sum added to the last. Weights widen to f32 exactly, and routing and activations are scalar
 * code shared by every path. So results are bit-identical whatever the thread count and on the
 * scalar, AVX2 and AVX-512 paths. Two kernels differ from the CPU's bits and say so: the opt-in
 * avx512bf16-dot (activations rounded to bf16) and an OpenCL device's matmuls. */
#ifndef MELD_MOE_H
#define MELD_MOE_H

#include "meld_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- routing ------------------------------------------------------------------------------ */
typedef enum meld_route_score {
    MELD_SCORE_SOFTMAX = 0, /* softmax over all experts (Mixtral, Qwen-MoE, OLMoE) */
    MELD_SCORE_SIGMOID = 1, /* sigmoid per expert (DeepSeek-V3) */
    MELD_SCORE_LOGITS = 2,  /* raw logits; with softmax_after_topk: GPT-OSS */
} meld_route_score;

typedef struct meld_route_options {
    size_t top_k;
    meld_route_score score;
    int softmax_after_topk;       /* softmax over the k selected scores (GPT-OSS) */
    int normalize;                /* norm_topk_prob: weights /= their sum (+1e-20) */
    const float *selection_bias;  /* [E], added to scores for choosing only (DeepSeek-V3); NULL = none */
    size_t n_group, topk_group;   /* group-limited choice (DeepSeek-V3): group score = sum of its two
                                   * best biased scores; experts outside the topk_group best groups are
                                   * not chosen. 0 = off. E % n_group == 0. */
    float routed_scaling;         /* final weights *= this (1 = none) */
} meld_route_options;

/* Top-k routing of T tokens from router logits [T, E] (leading dimension ld >= E). Experts are
 * ranked by score, ties to the lower expert id; ids[t*k + j] is the j-th best. weights are the
 * unbiased scores of the chosen experts after the options above. E <= 4096, 1 <= k <= E. */
MELD_API meld_status meld_moe_route(meld_context *ctx, const float *logits, size_t T, size_t E, size_t ld,
                                    const meld_route_options *options, int32_t *ids, float *weights);

/* ---- dispatch plan ------------------------------------------------------------------------ */
/* A stable counting sort of the T*k (token, slot) pairs by expert: counts [E], offsets [E+1],
 * order [T*k] (sorted position -> pair index t*k + j), inverse [T*k] (pair -> sorted position).
 * Ids outside [0, E) are MELD_ERR_INDEX_OUT_OF_RANGE. */
typedef struct meld_moe_plan meld_moe_plan;
MELD_API meld_status meld_moe_plan_create(meld_context *ctx, const int32_t *ids, size_t T, size_t k, size_t E,
                                          meld_moe_plan **out);
MELD_API meld_status meld_moe_plan_destroy(meld_moe_plan *plan);
MELD_API const int32_t *meld_moe_plan_counts(const meld_moe_plan *plan);
MELD_API const int32_t *meld_moe_plan_offsets(const meld_moe_plan *plan);
MELD_API const int32_t *meld_moe_plan_order(const meld_moe_plan *plan);
MELD_API const int32_t *meld_moe_plan_inverse(const meld_moe_plan *plan);

/* ---- packed expert weights ---------------------------------------------------------------- */
typedef struct meld_moe_weights meld_moe_weights;
/* w: E x N x K row-major of dtype; ld = K for dense storage (>= K). */
MELD_API meld_status meld_moe_weights_pack(meld_context *ctx, const void *w, meld_dtype dtype, size_t E, size_t N,
                                           size_t K, size_t ld, meld_moe_weights **out);
MELD_API meld_status meld_moe_weights_destroy(meld_moe_weights *w);
/* bytes of the packed form */
MELD_API size_t meld_moe_weights_bytes(const meld_moe_weights *w);
/* The microkernel the weights were packed for: "scalar", "avx2", "avx512", "avx512bf16-dot" or
 * "opencl". avx512bf16-dot (bf16 weights, AVX512-BF16 CPUs, MELD_BF16_DOT=1 when packing): VDPBF16PS
 * with activations rounded to bf16 and f32 accumulation; opt-in because the f32 FMA kernel on
 * widened bf16 was faster on the CPU it was measured on. */
MELD_API const char *meld_moe_weights_kernel(const meld_moe_weights *w);

/* ---- grouped matmul ------------------------------------------------------------------------- */
/* Offsets form (torch grouped_mm): rows offsets[e] .. offsets[e+1]-1 of x belong to expert e;
 * offsets[0] = 0, non-decreasing, offsets[E] = M. y is M x N (ldy >= N). Experts with no rows
 * read no weights. */
MELD_API meld_status meld_grouped_matmul(meld_context *ctx, const float *x, size_t ldx, const int32_t *offsets,
                                         const meld_moe_weights *w, float *y, size_t ldy);
/* Gather form (ggml mul_mat_id): row r of x uses expert ids[r]; y[r] = x[r] * W_ids[r]^T. */
MELD_API meld_status meld_grouped_matmul_gather(meld_context *ctx, const float *x, size_t M, size_t ldx,
                                                const int32_t *ids, const meld_moe_weights *w, float *y, size_t ldy);

/* ---- fused MoE FFN ---------------------------------------------------------------------------- */
typedef enum meld_activation {
    MELD_ACT_SILU = 0,        /* silu(gate) * up (Mixtral, Qwen, DeepSeek, OLMoE) */
    MELD_ACT_GELU_TANH = 1,   /* gelu_tanh(gate) * up */
    MELD_ACT_SWIGLU_OAI = 2,  /* GPT-OSS: g = min(gate, limit), u = clamp(up, -limit, limit),
                               * (u + 1) * g * sigmoid(alpha * g) */
} meld_activation;

typedef struct meld_moe_ffn_options {
    meld_activation activation;
    float alpha, limit;         /* SWIGLU_OAI (GPT-OSS: 1.702, 7.0) */
    int interleaved_gate_up;    /* gate_up rows alternate gate, up (GPT-OSS); else [gate; up] halves */
    int accumulate;             /* out += result instead of out = result */
} meld_moe_ffn_options;

/* out[t] = sum_j weights[t, j] * down_e(act(gate_up_e(x[t]))) with e = ids[t, j], summed in
 * ascending j, plus the shared expert (shared_gate_up / shared_down, may be NULL) applied to
 * every token. gate_up: E x 2I x H; down: E x H x I. Bit-identical for any thread count. */
MELD_API meld_status meld_moe_ffn(meld_context *ctx, const float *x, size_t T, size_t ldx, const int32_t *ids,
                                  const float *weights, size_t k, const meld_moe_weights *gate_up,
                                  const meld_moe_weights *down, const meld_moe_weights *shared_gate_up,
                                  const meld_moe_weights *shared_down, const meld_moe_ffn_options *options,
                                  float *out, size_t ldo);

#ifdef __cplusplus
}
#endif
#endif
