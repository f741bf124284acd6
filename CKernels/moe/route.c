/* MoE routing (softmax / sigmoid / raw scores, biased and group-limited top-k, renormalization,
 * scaling, softmax after top-k) and the dispatch plan (a stable counting sort by expert).
 * Routing is scalar per token: E is small, and the result must not depend on the ISA. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "../core/internal.h"

#define ROUTE_MAX_E 4096

/* index of the best not-yet-taken entry: highest value, ties to the lower index */
static size_t best_of(const float *v, const unsigned char *taken, size_t n) {
    size_t b = n;
    for (size_t i = 0; i < n; i++)
        if (!taken[i] && (b == n || v[i] > v[b])) b = i;
    return b;
}

meld_status meld_moe_route(meld_context *ctx, const float *logits, size_t T, size_t E, size_t ld,
                           const meld_route_options *o, int32_t *ids, float *weights) {
    if (!ctx || !o) return MELD_ERR_NULL_POINTER;
    if (T && (!logits || !ids || !weights)) return MELD_ERR_NULL_POINTER;
    const size_t k = o->top_k;
    if (E == 0 || E > ROUTE_MAX_E || k == 0 || k > E || ld < E) return MELD_ERR_INVALID_ARGUMENT;
    if (o->score < MELD_SCORE_SOFTMAX || o->score > MELD_SCORE_LOGITS || !isfinite(o->routed_scaling))
        return MELD_ERR_INVALID_ARGUMENT;
    if (o->n_group) {
        if (E % o->n_group || o->topk_group == 0 || o->topk_group > o->n_group || E / o->n_group < 2 ||
            o->topk_group * (E / o->n_group) < k)
            return MELD_ERR_INVALID_ARGUMENT;
    }
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (T > 64)
    for (size_t t = 0; t < T; t++) {
        const float *l = logits + t * ld;
        float score[ROUTE_MAX_E], choice[ROUTE_MAX_E];
        unsigned char taken[ROUTE_MAX_E];
        if (o->score == MELD_SCORE_SOFTMAX) {
            float m = -INFINITY;
            for (size_t i = 0; i < E; i++) m = l[i] > m ? l[i] : m;
            double sum = 0.0;
            for (size_t i = 0; i < E; i++) { score[i] = expf(l[i] - m); sum += score[i]; }
            for (size_t i = 0; i < E; i++) score[i] = (float)(score[i] / sum);
        } else if (o->score == MELD_SCORE_SIGMOID) {
            for (size_t i = 0; i < E; i++) score[i] = 1.0f / (1.0f + expf(-l[i]));
        } else {
            memcpy(score, l, E * sizeof(float));
        }
        for (size_t i = 0; i < E; i++) {
            float c = score[i] + (o->selection_bias ? o->selection_bias[i] : 0.0f);
            choice[i] = isnan(c) ? -INFINITY : c; /* NaN never wins */
        }
        if (o->n_group) {
            const size_t G = o->n_group, per = E / G;
            float gscore[ROUTE_MAX_E];
            unsigned char gtaken[ROUTE_MAX_E];
            for (size_t g = 0; g < G; g++) {
                memset(taken, 0, per);
                size_t a = best_of(choice + g * per, taken, per);
                taken[a] = 1;
                size_t b = best_of(choice + g * per, taken, per);
                gscore[g] = choice[g * per + a] + choice[g * per + b];
                gtaken[g] = 0;
            }
            for (size_t q = 0; q < o->topk_group; q++) gtaken[best_of(gscore, gtaken, G)] = 1;
            for (size_t g = 0; g < G; g++)
                if (!gtaken[g])
                    for (size_t i = 0; i < per; i++) choice[g * per + i] = -INFINITY;
        }
        memset(taken, 0, E);
        float w[ROUTE_MAX_E];
        for (size_t j = 0; j < k; j++) {
            size_t b = best_of(choice, taken, E);
            taken[b] = 1;
            ids[t * k + j] = (int32_t)b;
            w[j] = score[b];
        }
        if (o->softmax_after_topk) {
            float m = -INFINITY;
            for (size_t j = 0; j < k; j++) m = w[j] > m ? w[j] : m;
            double sum = 0.0;
            for (size_t j = 0; j < k; j++) { w[j] = expf(w[j] - m); sum += w[j]; }
            for (size_t j = 0; j < k; j++) w[j] = (float)(w[j] / sum);
        }
        if (o->normalize) {
            float sum = 0.0f;
            for (size_t j = 0; j < k; j++) sum += w[j];
            sum += 1e-20f;
            for (size_t j = 0; j < k; j++) w[j] = w[j] / sum;
        }
        for (size_t j = 0; j < k; j++) weights[t * k + j] = w[j] * o->routed_scaling;
    }
    return MELD_OK;
}

/* ---- dispatch plan ------------------------------------------------------------------------ */
struct meld_moe_plan {
    size_t T, k, E;
    int32_t *counts, *offsets, *order, *inverse;
};

meld_status meld_moe_plan_create(meld_context *ctx, const int32_t *ids, size_t T, size_t k, size_t E, meld_moe_plan **out) {
    if (!ctx || !out || (T && k && !ids)) return MELD_ERR_NULL_POINTER;
    *out = NULL;
    if (E == 0 || k == 0 || (T && k > (size_t)INT32_MAX / T)) return MELD_ERR_INVALID_ARGUMENT; /* T * k would not fit */
    const size_t M = T * k;
    for (size_t i = 0; i < M; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= E) {
            meld_set_error(ctx, "expert id %d at token %zu, slot %zu is outside [0, %zu)", ids[i], i / k, i % k, E);
            return MELD_ERR_INDEX_OUT_OF_RANGE;
        }
    meld_moe_plan *p = calloc(1, sizeof *p);
    if (!p) return MELD_ERR_OUT_OF_MEMORY;
    p->T = T; p->k = k; p->E = E;
    p->counts = calloc(E, sizeof(int32_t));
    p->offsets = calloc(E + 1, sizeof(int32_t));
    p->order = malloc((M + 1) * sizeof(int32_t));
    p->inverse = malloc((M + 1) * sizeof(int32_t));
    if (!p->counts || !p->offsets || !p->order || !p->inverse) { meld_moe_plan_destroy(p); return MELD_ERR_OUT_OF_MEMORY; }
    for (size_t i = 0; i < M; i++) p->counts[ids[i]]++;
    for (size_t e = 0; e < E; e++) p->offsets[e + 1] = p->offsets[e] + p->counts[e];
    int32_t *next = malloc(E * sizeof(int32_t));
    if (!next) { meld_moe_plan_destroy(p); return MELD_ERR_OUT_OF_MEMORY; }
    memcpy(next, p->offsets, E * sizeof(int32_t));
    for (size_t i = 0; i < M; i++) { /* stable: pairs keep their flat order within an expert */
        int32_t s = next[ids[i]]++;
        p->order[s] = (int32_t)i;
        p->inverse[i] = s;
    }
    free(next);
    *out = p;
    return MELD_OK;
}

meld_status meld_moe_plan_destroy(meld_moe_plan *p) {
    if (!p) return MELD_ERR_NULL_POINTER;
    free(p->counts); free(p->offsets); free(p->order); free(p->inverse); free(p);
    return MELD_OK;
}

const int32_t *meld_moe_plan_counts(const meld_moe_plan *p) { return p ? p->counts : NULL; }
const int32_t *meld_moe_plan_offsets(const meld_moe_plan *p) { return p ? p->offsets : NULL; }
const int32_t *meld_moe_plan_order(const meld_moe_plan *p) { return p ? p->order : NULL; }
const int32_t *meld_moe_plan_inverse(const meld_moe_plan *p) { return p ? p->inverse : NULL; }
