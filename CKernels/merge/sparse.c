/* Sparsifiers (DARE, DELLA, breadcrumbs, masks), the generalized task-vector merge, masked
 * sparse task vectors. Semantics and the RNG layout: include/meld/meld_sparse.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "task_vectors.h"
#include "../device/opencl.h"

/* ---- RNG ---------------------------------------------------------------------------------- */
static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

meld_status meld_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    if (!counter || !key || !out) return MELD_ERR_NULL_POINTER;
    meld_philox_block(counter, key[0], key[1], out);
    return MELD_OK;
}

uint64_t meld_rng_stream(const char *name, size_t len, uint32_t expert) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; name && i < len; i++) { h ^= (uint8_t)name[i]; h *= 0x100000001b3ull; }
    return splitmix64(h ^ ((uint64_t)expert + 1) * 0x9E3779B97F4A7C15ull);
}

static void rng_key(uint64_t seed, uint64_t stream, uint32_t *k0, uint32_t *k1) {
    uint64_t k = splitmix64(seed ^ splitmix64(stream));
    *k0 = (uint32_t)k;
    *k1 = (uint32_t)(k >> 32);
}

static inline uint32_t p24_of(double p) {
    if (!(p > 0.0)) return 0;
    if (p >= 1.0) return 1u << 24;
    /* ceil(x) for 0 < x < 2^24, without a library call per element (DELLA makes one each) */
    const double x = p * 16777216.0;
    const uint32_t t = (uint32_t)x;
    return t + ((double)t < x);
}

/* DARE's keep threshold: ceil(p 2^32) in [0, 2^32] (32-bit uniforms) */
static uint64_t p32_of(double p) {
    if (!(p > 0.0)) return 0;
    if (p >= 1.0) return 1ull << 32;
    return (uint64_t)ceil(ldexp(p, 32));
}

/* ---- validation ---------------------------------------------------------------------------- */
static meld_status check_sparsifier(const meld_sparsifier *s) {
    if (!s) return MELD_ERR_NULL_POINTER;
    if (s->method < MELD_SPARSIFY_NONE || s->method > MELD_SPARSIFY_MASK) return MELD_ERR_INVALID_ARGUMENT;
    if (s->rescale < MELD_RESCALE_NONE || s->rescale > MELD_RESCALE_L1) return MELD_ERR_INVALID_ARGUMENT;
    if (!(s->density >= 0.0 && s->density <= 1.0)) return MELD_ERR_INVALID_ARGUMENT;
    if (s->method == MELD_SPARSIFY_MAGNITUDE_OUTLIERS && !(s->gamma >= 0.0 && s->gamma <= 1.0)) return MELD_ERR_INVALID_ARGUMENT;
    if (s->method == MELD_SPARSIFY_DELLA && s->density < 1.0 && s->density > 0.0) {
        if (!(s->epsilon >= 0.0) || !(s->density - s->epsilon > 0.0) || !(s->density + s->epsilon < 1.0))
            return MELD_ERR_INVALID_ARGUMENT;
        if (s->rescale == MELD_RESCALE_DENSITY) return MELD_ERR_UNSUPPORTED;
    }
    if (s->method == MELD_SPARSIFY_MASK && !s->mask) return MELD_ERR_NULL_POINTER;
    return MELD_OK;
}

/* ---- DELLA: per-row ranks by a stable LSD radix sort, then Philox against p(rank) -------- */
typedef struct della_job {
    meld_view base, x;
    size_t n, row;
    double d, eps;
    uint32_t k0, k1;
    uint8_t *mask;
    const meld_ukernels *uk;
    const uint32_t *thr; /* p24 of p(rank) for the ranks of a whole row (della_mask) */
} della_job;

/* The keep threshold of rank q + 1 of m: p = (d - eps) + 2 eps q / (m - 1), in 24 bits. */
static uint32_t della_p24(const della_job *j, size_t q, size_t m) {
    return p24_of(m > 1 ? (j->d - j->eps) + 2.0 * j->eps * (double)q / (double)(m - 1) : j->d);
}

/* Row r's keep bits: ranks by a stable radix sort, then Philox against p(rank). key: 3 rows of
 * scratch, idx: 2, bits: row / 8 + 2 bytes. */
static void della_row(const della_job *j, size_t r, size_t row, uint32_t *key, uint32_t *idx, uint8_t *bits) {
    const size_t n = j->n;
    const size_t a = r * row, m = a + row < n ? row : n - a;
    uint32_t *k2 = key + row, *i2 = idx + row;
    /* The next row (this thread's next, see della_mask) into the cache while this one sorts:
     * the rows start on new pages, where the hardware prefetcher stops, and the row's loads
     * below waited on memory for half of DELLA's time. */
    if (a + m < n) {
        const size_t m2 = a + m + row < n ? row : n - a - m;
        const char *px = (const char *)j->x.data + (a + m) * meld_dtype_size(j->x.dtype);
        for (size_t o = 0; o < m2 * meld_dtype_size(j->x.dtype); o += 64) __builtin_prefetch(px + o, 0, 3);
        if (j->base.data) {
            const char *pb = (const char *)j->base.data + (a + m) * meld_dtype_size(j->base.dtype);
            for (size_t o = 0; o < m2 * meld_dtype_size(j->base.dtype); o += 64) __builtin_prefetch(pb + o, 0, 3);
        }
    }
    for (size_t i = 0; i < m; i++) {
        float v = meld_load_scalar(j->x.data, j->x.dtype, a + i);
        if (j->base.data) v = v - meld_load_scalar(j->base.data, j->base.dtype, a + i);
        key[i] = meld_f32_bits(v) & 0x7fffffffu;
        idx[i] = (uint32_t)i;
    }
    /* stable LSD radix sort by magnitude: 11 + 10 + 10 bits, the three digits' counts in one
     * pass */
    uint32_t cnts[2048 + 1024 + 1024] = {0};
    for (size_t i = 0; i < m; i++) {
        cnts[key[i] & 2047]++;
        cnts[2048 + ((key[i] >> 11) & 1023)]++;
        cnts[3072 + ((key[i] >> 21) & 1023)]++;
    }
    for (int pass = 0; pass < 3; pass++) {
        const int shift = pass == 0 ? 0 : pass == 1 ? 11 : 21;
        const uint32_t bins = pass == 0 ? 2048 : 1024;
        uint32_t *cnt = cnts + (pass == 0 ? 0 : pass == 1 ? 2048 : 3072), sum = 0;
        for (uint32_t b = 0; b < bins; b++) { uint32_t c = cnt[b]; cnt[b] = sum; sum += c; }
        for (size_t i = 0; i < m; i++) {
            uint32_t d = cnt[(key[i] >> shift) & (bins - 1)]++;
            k2[d] = key[i];
            i2[d] = idx[i];
        }
        memcpy(key, k2, m * sizeof *key);
        memcpy(idx, i2, m * sizeof *idx);
    }
    /* the row's uniforms in index order, from the vectorized Philox (one scalar block per four
     * elements took a third of DELLA's time) */
    uint32_t *u = key + 2 * row;
    j->uk->philox_u24(m, a, j->k0, j->k1, u);
    /* the row's bits gather in bits[] (byte b: mask byte a / 8 + b); only a byte shared with
     * the next or previous row needs an atomic update. An atomic update per kept element, on
     * cache lines that the neighbouring rows' thread writes too, took ~40% of DELLA's time
     * (545M-parameter merge: 15.4-16.1 s -> 9.3-9.6 s). */
    const size_t b0 = a >> 3, nb = ((a + m - 1) >> 3) - b0 + 1;
    memset(bits, 0, nb);
    for (size_t q = 0; q < m; q++) { /* q = rank - 1 */
        size_t i = a + idx[q];
        bits[(i >> 3) - b0] |= (uint8_t)((u[idx[q]] < (m == row ? j->thr[q] : della_p24(j, q, m))) << (i & 7));
    }
    for (size_t b = 0; b < nb; b++) {
        if ((b == 0 && (a & 7)) || (b == nb - 1 && ((a + m) & 7))) {
#pragma omp atomic update
            j->mask[b0 + b] |= bits[b];
        } else {
            j->mask[b0 + b] = bits[b];
        }
    }
}

static meld_status della_mask(meld_context *ctx, const della_job *jin) {
    della_job jj = *jin;
    const della_job *j = &jj;
    const size_t n = j->n, row = j->row ? j->row : n, rows = n ? (n + row - 1) / row : 0;
    /* the thresholds of a whole row's ranks, once (a double division an element otherwise) */
    uint32_t *thr = malloc((row ? row : 1) * sizeof *thr);
    if (!thr) return MELD_ERR_OUT_OF_MEMORY;
    for (size_t q = 0; q < row; q++) thr[q] = della_p24(j, q, row);
    jj.thr = thr;
    jj.uk = ctx->uk;
    /* meld_context_set_window: rows a window at a time, each reported once read */
    const size_t per = !ctx->window_done ? rows : ctx->window / row > 1 ? ctx->window / row : 1;
    memset(j->mask, 0, (n + 7) / 8);
    meld_status st = MELD_OK;
    size_t next = 0; /* the next row to claim */
#pragma omp parallel num_threads(ctx->threads)
    {
        uint32_t *key = malloc(row * sizeof(uint32_t) * 3), *idx = malloc(row * sizeof(uint32_t) * 2);
        uint8_t *bits = malloc(row / 8 + 2);
        if (!key || !idx || !bits) {
#pragma omp atomic write
            st = MELD_ERR_OUT_OF_MEMORY;
        }
        for (size_t r0 = 0; r0 < rows; r0 += per) {
            const size_t r1 = r0 + per < rows ? r0 + per : rows;
            /* Runs of rows claimed in turn, about 8 a thread (as the stream driver's tiles): a
             * thread that loses its core for a while (the tool's writer thread, a busy host)
             * holds up only its run, where a static split held the window until its share was
             * done. Runs of adjacent rows, so that the row prefetched is mostly the thread's own
             * next one. */
            const size_t run = (r1 - r0) / (8 * (size_t)omp_get_num_threads()) > 1 ? (r1 - r0) / (8 * (size_t)omp_get_num_threads()) : 1;
#pragma omp single
            next = r0; /* (the single ends in a barrier) */
            for (size_t r; (r = __atomic_fetch_add(&next, run, __ATOMIC_RELAXED)) < r1;)
                for (size_t e = r + run < r1 ? r + run : r1; r < e; r++)
                    if (key && idx && bits) della_row(j, r, row, key, idx, bits);
#pragma omp barrier
#pragma omp master
            if (ctx->window_done) ctx->window_done(ctx->window_user, r0 * row, (r1 * row < n ? r1 * row : n) - r0 * row);
        }
        free(key);
        free(idx);
        free(bits);
    }
    free(thr);
    return st;
}

/* ---- from sparsifiers to keep rules ------------------------------------------------------- */
typedef struct rule_plan {
    tv_rule rule[MELD_MAX_MODELS];
    uint8_t *owned[MELD_MAX_MODELS]; /* DELLA bitmaps */
} rule_plan;

static void plan_free(rule_plan *p, size_t k) {
    for (size_t i = 0; i < k; i++) free(p->owned[i]);
}

/* L1 rescale needs sum|d| and sum|kept d| per expert: one reduction pass over all of them. */
typedef struct l1_op {
    const meld_ukernels *uk;
    size_t k;
    const tv_rule *rule;
    uint8_t *const *keep; /* per rule: a bitmap that receives its Philox keep bits, or NULL */
    double *partial; /* [tile][2k] */
} l1_op;

static void l1_tile(const meld_tile *t, void *opv) {
    l1_op *op = opv;
    meld_uk_in x[MELD_MAX_MODELS];
    meld_uk_rule r[MELD_MAX_MODELS];
    size_t nbits = meld_tile_scratch_count(op->rule, op->k), b = 0;
    uint8_t bits[nbits ? nbits : 1][MELD_TILE / 8];
    for (size_t k = 0; k < op->k; k++) {
        x[k] = (meld_uk_in){t->in[1 + k], t->in_dt[1 + k]};
        b += meld_tile_rule(t, &op->rule[k], op->uk, bits[b < nbits ? b : 0], &r[k]);
        r[k].scale = 1.0f; /* the sums are of the unscaled deltas */
        if (op->keep[k]) { /* tiles start on byte boundaries; a padded tail keeps its real bits */
            meld_bits_copy(op->keep[k] + t->i0 / 8, r[k].bits, t->valid);
        }
    }
    double *out = op->partial + t->index * 2 * op->k;
    meld_uk_l1_args a = {.k = op->k, .base = {t->in[0], t->in_dt[0]}, .x = x, .rule = r, .out = out};
    op->uk->l1(t->n, t->i0, &a);
}

/* Random rules among them are turned into MASK rules over the bits this pass drew (owned: the
 * plan's bitmaps), so that the merge pass reads them instead of running Philox again. */
static meld_status l1_scales(meld_context *ctx, meld_view base, size_t k, const meld_view *x, tv_rule *rules,
                             const int *want, uint8_t **owned) {
    size_t idx[MELD_MAX_MODELS], m = 0;
    for (size_t i = 0; i < k; i++) if (want[i]) idx[m++] = i;
    if (!m) return MELD_OK;
    const size_t n = base.numel, tiles = meld_stream_tiles(n);
    double *partial = calloc(tiles * 2 * m + 1, sizeof(double));
    if (!partial) return MELD_ERR_OUT_OF_MEMORY;
    tv_rule sub[MELD_MAX_MODELS];
    uint8_t *keep[MELD_MAX_MODELS];
    for (size_t j = 0; j < m; j++) {
        keep[j] = NULL;
        if (rules[idx[j]].kind == TV_BERNOULLI && !owned[idx[j]]) {
            if (!(owned[idx[j]] = malloc((n + 7) / 8))) { free(partial); return MELD_ERR_OUT_OF_MEMORY; }
            keep[j] = owned[idx[j]];
        }
    }
    meld_stream s = {.n = n, .nin = 1 + (int)m};
    s.in[0] = base.data;
    s.in_dt[0] = base.dtype;
    for (size_t j = 0; j < m; j++) {
        sub[j] = rules[idx[j]];
        s.in[1 + j] = x[idx[j]].data;
        s.in_dt[1 + j] = x[idx[j]].dtype;
    }
    l1_op op = {.uk = ctx->uk, .k = m, .rule = sub, .keep = keep, .partial = partial};
    meld_status st = meld_stream_run(ctx, &s, l1_tile, &op);
    for (size_t j = 0; st == MELD_OK && j < m; j++) {
        double before = 0, after = 0;
        for (size_t t = 0; t < tiles; t++) { before += partial[t * 2 * m + 2 * j]; after += partial[t * 2 * m + 2 * j + 1]; }
        rules[idx[j]].scale = (before < 1e-7 || after < 1e-7) ? 1.0f : (float)(before / after);
        if (keep[j]) { rules[idx[j]].kind = TV_MASK; rules[idx[j]].mask = keep[j]; }
    }
    free(partial);
    return st;
}

static meld_status build_rules(meld_context *ctx, meld_view base, size_t k, const meld_view *x,
                               const meld_sparsifier *sp, rule_plan *plan) {
    const size_t n = base.numel;
    memset(plan, 0, sizeof *plan);
    meld_view sv[MELD_MAX_MODELS];
    uint64_t sk[MELD_MAX_MODELS];
    size_t owner[MELD_MAX_MODELS], ns = 0;
    int want_l1[MELD_MAX_MODELS] = {0};
    for (size_t i = 0; i < k; i++) {
        const meld_sparsifier *s = &sp[i];
        tv_rule *r = &plan->rule[i];
        *r = (tv_rule){.kind = TV_ALL, .scale = 1.0f};
        double d = s->density;
        if (s->method == MELD_SPARSIFY_NONE) continue;
        if (s->method != MELD_SPARSIFY_MASK) { /* a caller's bitmap is the rule whatever the density */
            if (d >= 1.0) continue;
            if (d <= 0.0 || n == 0) { r->kind = TV_NONE; continue; }
        }
        switch (s->method) {
        case MELD_SPARSIFY_MAGNITUDE:
            MELD_TRY(meld_density_count(d, n, &sk[ns]));
            sv[ns] = x[i]; owner[ns++] = i;
            break;
        case MELD_SPARSIFY_MAGNITUDE_OUTLIERS: {
            if (ns + 2 > MELD_MAX_MODELS) return MELD_ERR_INVALID_ARGUMENT;
            int64_t target = (int64_t)floor(d * (double)n), top = (int64_t)floor(s->gamma * (double)n);
            int64_t bot = (int64_t)n - target - top;
            if (bot < 0) { top += bot; bot = 0; }
            /* ascending ranks [bot, bot + target) = the top (top + target) minus the top (top) */
            sk[ns] = (uint64_t)(top + target); sv[ns] = x[i]; owner[ns++] = i;
            sk[ns] = (uint64_t)top; sv[ns] = x[i]; owner[ns++] = i;
            r->kind = TV_WINDOW;
            break;
        }
        case MELD_SPARSIFY_RANDOM:
            r->kind = TV_BERNOULLI;
            rng_key(s->seed, s->stream, &r->key0, &r->key1);
            r->p32 = p32_of(d);
            if (s->rescale == MELD_RESCALE_DENSITY) r->scale = (float)(1.0 / s->density);
            break;
        case MELD_SPARSIFY_DELLA: {
            plan->owned[i] = malloc((n + 7) / 8);
            if (!plan->owned[i]) return MELD_ERR_OUT_OF_MEMORY;
            della_job j = {.base = base, .x = x[i], .n = n, .row = s->row_length, .d = s->density, .eps = s->epsilon,
                           .mask = plan->owned[i]};
            rng_key(s->seed, s->stream, &j.k0, &j.k1);
            MELD_TRY(della_mask(ctx, &j));
            r->kind = TV_MASK;
            r->mask = plan->owned[i];
            break;
        }
        case MELD_SPARSIFY_MASK:
            r->kind = TV_MASK;
            r->mask = s->mask;
            break;
        default: break;
        }
        if (s->rescale == MELD_RESCALE_L1) want_l1[i] = 1;
    }
    if (ns) {
        meld_selection sel[MELD_MAX_MODELS];
        MELD_TRY(meld_select_many(ctx, base, ns, sv, sk, sel));
        for (size_t q = 0; q < ns; q++) {
            tv_rule *r = &plan->rule[owner[q]];
            tv_rule t = meld_tv_rule_from_selection(&sel[q], n);
            if (r->kind == TV_WINDOW) {
                /* first of the pair: the wide top; second: the excluded top */
                if (q + 1 < ns && owner[q + 1] == owner[q]) {
                    tv_rule ex = meld_tv_rule_from_selection(&sel[q + 1], n);
                    if (t.kind == TV_NONE) *r = (tv_rule){.kind = TV_NONE, .scale = 1.0f};
                    else {
                        uint32_t thr = t.kind == TV_ALL ? 0 : t.thr;
                        uint64_t cut = t.kind == TV_ALL ? n : t.cut;
                        r->thr = thr; r->cut = cut;
                        /* nothing excluded: a TOP rule; everything excluded: NONE */
                        if (ex.kind == TV_NONE) { r->kind = TV_TOP; }
                        else if (ex.kind == TV_ALL) { r->kind = TV_NONE; }
                        else { r->thr2 = ex.thr; r->cut2 = ex.cut; }
                    }
                    q++;
                }
            } else {
                t.scale = r->scale;
                *r = t;
            }
        }
    }
    return l1_scales(ctx, base, k, x, plan->rule, want_l1, plan->owned);
}

_Static_assert(MELD_MERGE_RANGE_ALIGN % MELD_TILE == 0, "a range starts on a tile boundary");

struct meld_merge_plan {
    meld_context *ctx;
    meld_view base;
    size_t k, n;
    meld_view x[MELD_MAX_MODELS];
    float w[MELD_MAX_MODELS];
    meld_merge_options options;
    float fixed_div;
    rule_plan rules;
};

meld_status meld_merge_plan_create(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                                   const float *weights, const meld_sparsifier *sparsifiers,
                                   const meld_merge_options *options, meld_merge_plan **out) {
    if (!out) return MELD_ERR_NULL_POINTER;
    *out = NULL;
    if (!ctx || !weights || !sparsifiers || !options) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_view(base, base.numel));
    MELD_TRY(meld_check_models(k, models, base.numel));
    MELD_TRY(meld_check_weights(ctx, weights, k));
    for (size_t i = 0; i < k; i++) MELD_TRY(check_sparsifier(&sparsifiers[i]));
    for (size_t i = 0; i < k && meld_cl_active(ctx); i++)
        if (sparsifiers[i].method == MELD_SPARSIFY_DELLA || sparsifiers[i].rescale == MELD_RESCALE_L1) {
            /* DELLA's row ranks and L1 norms are computed on the host */
            const void *p[2] = {base.data, models[i].data};
            MELD_TRY(meld_cl_reject_buffers(ctx, p, 2, "DELLA and L1 rescaling"));
        }
    if (options->consensus < MELD_CONSENSUS_NONE || options->consensus > MELD_CONSENSUS_COUNT ||
        options->divisor < MELD_DIVISOR_NONE || options->divisor > MELD_DIVISOR_COUNT || !isfinite(options->lambda))
        return MELD_ERR_INVALID_ARGUMENT;
    meld_merge_plan *p = calloc(1, sizeof *p);
    if (!p) return MELD_ERR_OUT_OF_MEMORY;
    meld_status st = build_rules(ctx, base, k, models, sparsifiers, &p->rules);
    if (st != MELD_OK) {
        plan_free(&p->rules, k);
        free(p);
        return st;
    }
    float wsum = 0.0f;
    for (size_t i = 0; i < k; i++) {
        p->x[i] = models[i];
        p->w[i] = weights[i];
        wsum += weights[i];
    }
    p->ctx = ctx;
    p->base = base;
    p->k = k;
    p->n = base.numel;
    p->options = *options;
    p->fixed_div = fabsf(wsum) < 1e-8f ? 1.0f : wsum;
    *out = p;
    return MELD_OK;
}

meld_status meld_merge_plan_run(meld_context *ctx, const meld_merge_plan *plan, size_t first, meld_span out) {
    if (!ctx || !plan) return MELD_ERR_NULL_POINTER;
    if (ctx != plan->ctx) return MELD_ERR_INVALID_ARGUMENT;
    if (first > plan->n || out.numel > plan->n - first) return MELD_ERR_SIZE_MISMATCH;
    if (first % MELD_MERGE_RANGE_ALIGN) return MELD_ERR_INVALID_ARGUMENT;
    MELD_TRY(meld_check_span(out, out.numel));
    const meld_merge_options *o = &plan->options;
    tv_request r = {.base = plan->base, .k = plan->k, .x = plan->x, .rule = plan->rules.rule, .w = plan->w,
                    .consensus = o->consensus, .vote_unweighted = o->vote_unweighted, .divisor = o->divisor,
                    .fixed_div = plan->fixed_div, .lambda = o->lambda, .out = out, .n = out.numel, .first = first};
    return meld_tv_run(ctx, &r);
}

meld_status meld_merge_plan_destroy(meld_merge_plan *plan) {
    if (!plan) return MELD_OK;
    plan_free(&plan->rules, plan->k);
    free(plan);
    return MELD_OK;
}

meld_status meld_merge_task_vectors(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                                    const float *weights, const meld_sparsifier *sparsifiers,
                                    const meld_merge_options *options, meld_span out) {
    if (!ctx || !weights || !sparsifiers || !options) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(out, out.numel));
    MELD_TRY(meld_check_view(base, out.numel));
    meld_merge_plan *plan;
    MELD_TRY(meld_merge_plan_create(ctx, base, k, models, weights, sparsifiers, options, &plan));
    meld_status st = meld_merge_plan_run(ctx, plan, 0, out);
    meld_merge_plan_destroy(plan);
    return st;
}

meld_status meld_sparsify_mask(meld_context *ctx, meld_view base, meld_view x, const meld_sparsifier *sparsifier,
                               uint8_t *mask, float *scale) {
    if (!ctx || !mask || !scale) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_view(x, x.numel));
    if (base.data || base.numel) MELD_TRY(meld_check_view(base, x.numel));
    MELD_TRY(check_sparsifier(sparsifier));
    MELD_TRY(meld_cl_reject_buffers(ctx, (const void *[]){base.data, x.data}, 2, "meld_sparsify_mask"));
    const size_t n = x.numel;
    meld_view b = base.data ? base : (meld_view){NULL, n, x.dtype};
    rule_plan plan;
    meld_status st = build_rules(ctx, b, 1, &x, sparsifier, &plan);
    if (st == MELD_OK) {
        /* materialize the rule: a task-vector pass with one expert writes 1.0 where kept would
         * need a dense temp; evaluate it per element instead (same predicate as the kernels) */
        const tv_rule *r = &plan.rule[0];
        if (r->kind == TV_BERNOULLI) { /* the kernels' own Philox bits, a tile at a time */
            const size_t tiles = meld_stream_tiles(n);
#pragma omp parallel for schedule(static) num_threads(ctx->threads)
            for (size_t t = 0; t < tiles; t++) {
                const size_t i0 = t * MELD_TILE, len = n - i0 < MELD_TILE ? n - i0 : MELD_TILE;
                const size_t padded = (len + MELD_UK_ALIGN - 1) & ~(size_t)(MELD_UK_ALIGN - 1);
                uint8_t bits[MELD_TILE / 8];
                meld_uk_philox_args pa = {r->key0, r->key1, r->p32, bits};
                ctx->uk->philox_bits(padded, i0, &pa);
                meld_bits_copy(mask + i0 / 8, bits, len);
            }
        } else if (r->kind == TV_MASK) { /* a bitmap already (DELLA, DARE's bits kept by the L1 pass, the caller's) */
            meld_bits_copy(mask, r->mask, n);
        } else {
#pragma omp parallel for schedule(static) num_threads(ctx->threads)
            for (size_t byte = 0; byte < (n + 7) / 8; byte++) {
                uint8_t m = 0;
                for (size_t i = byte * 8; i < byte * 8 + 8 && i < n; i++) {
                    float v = meld_load_scalar(x.data, x.dtype, i);
                    if (b.data) v = v - meld_load_scalar(b.data, b.dtype, i);
                    uint32_t bits = meld_f32_bits(v) & 0x7fffffffu;
                    int keep;
                    switch (r->kind) {
                    case TV_ALL: keep = 1; break;
                    case TV_TOP: keep = bits > r->thr || (bits == r->thr && i < r->cut); break;
                    case TV_WINDOW:
                        keep = (bits > r->thr || (bits == r->thr && i < r->cut)) && !(bits > r->thr2 || (bits == r->thr2 && i < r->cut2));
                        break;
                    default: keep = 0;
                    }
                    m |= (uint8_t)(keep << (i & 7));
                }
                mask[byte] = m;
            }
        }
        *scale = r->scale;
    }
    plan_free(&plan, 1);
    return st;
}

/* ---- packed sparse task vectors ------------------------------------------------------------- */
/* Set bits of nw 64-bit words. The library is built for baseline x86-64, where a popcount is a
 * dozen-instruction bit trick: with the POPCNT instruction (chosen at run time) the tile offsets
 * of a K = 4 apply took a quarter of the apply's time less. */
#define POPCOUNT_WORDS(NAME, ATTR)                                  \
    ATTR static size_t NAME(const uint8_t *p, size_t nw) {          \
        size_t c = 0;                                               \
        for (size_t q = 0; q < nw; q++) {                           \
            uint64_t w;                                             \
            memcpy(&w, p + 8 * q, 8);                               \
            c += (size_t)__builtin_popcountll(w);                   \
        }                                                           \
        return c;                                                   \
    }
#if defined(__x86_64__) || defined(__i386__)
POPCOUNT_WORDS(popcount_words_hw, __attribute__((target("popcnt"))))
#endif
POPCOUNT_WORDS(popcount_words_sw, )

static size_t popcount_words(const uint8_t *p, size_t nw) {
#if defined(__x86_64__) || defined(__i386__)
    static int hw = -1; /* every thread stores the same value */
    int h = __atomic_load_n(&hw, __ATOMIC_RELAXED);
    if (h < 0) __atomic_store_n(&hw, h = __builtin_cpu_supports("popcnt") ? 1 : 0, __ATOMIC_RELAXED);
    if (h) return popcount_words_hw(p, nw);
#endif
    return popcount_words_sw(p, nw);
}

/* popcount of bits [a, b) of mask, by 64-bit words where aligned */
static size_t popcount_range(const uint8_t *mask, size_t a, size_t b) {
    size_t c = 0, i = a;
    for (; i < b && (i & 63); i++) c += (mask[i >> 3] >> (i & 7)) & 1;
    if (i + 64 <= b) {
        const size_t nw = (b - i) / 64;
        c += popcount_words(mask + (i >> 3), nw);
        i += 64 * nw;
    }
    for (; i < b; i++) c += (mask[i >> 3] >> (i & 7)) & 1;
    return c;
}

meld_status meld_mask_count(const uint8_t *mask, size_t n, size_t *nnz) {
    if (!nnz || (!mask && n)) return MELD_ERR_NULL_POINTER;
    *nnz = popcount_range(mask, 0, n);
    return MELD_OK;
}

static size_t tile_popcount(const uint8_t *mask, size_t n, size_t tile) {
    size_t a = tile * MELD_TILE, b = n < a + MELD_TILE ? n : a + MELD_TILE;
    return popcount_range(mask, a, b);
}

meld_status meld_pack(meld_context *ctx, meld_view base, meld_view x, const uint8_t *mask, float scale, meld_span values) {
    if (!ctx || (!mask && x.numel)) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_view(x, x.numel));
    if (base.data || base.numel) MELD_TRY(meld_check_view(base, x.numel));
    size_t nnz;
    MELD_TRY(meld_mask_count(mask, x.numel, &nnz));
    MELD_TRY(meld_check_span(values, nnz));
    if (!isfinite(scale)) return MELD_ERR_INVALID_ARGUMENT;
    MELD_TRY(meld_cl_reject_buffers(ctx, (const void *[]){base.data, x.data, values.data}, 3, "meld_pack"));
    const size_t n = x.numel, tiles = meld_stream_tiles(n);
    size_t *start = malloc((tiles + 1) * sizeof *start);
    if (!start) return MELD_ERR_OUT_OF_MEMORY;
    start[0] = 0;
    for (size_t t = 0; t < tiles; t++) start[t + 1] = start[t] + tile_popcount(mask, n, t);
#pragma omp parallel for schedule(static) num_threads(ctx->threads)
    for (size_t t = 0; t < tiles; t++) {
        size_t j = start[t], end = n < (t + 1) * MELD_TILE ? n : (t + 1) * MELD_TILE;
        for (size_t i = t * MELD_TILE; i < end; i++) {
            if (!((mask[i >> 3] >> (i & 7)) & 1)) continue;
            float v = meld_load_scalar(x.data, x.dtype, i);
            if (base.data) v = v - meld_load_scalar(base.data, base.dtype, i);
            v = v * scale;
            /* the same RNE conversions as the vector stores (core/fp.h) */
            if (values.dtype == MELD_F32) ((float *)values.data)[j] = v;
            else ((uint16_t *)values.data)[j] = values.dtype == MELD_F16 ? meld_f32_to_f16(v) : meld_f32_to_bf16(v);
            j++;
        }
    }
    free(start);
    return MELD_OK;
}

typedef struct apply_op {
    const meld_ukernels *uk;
    size_t k;
    const meld_packed_view *d;
    const float *scale;
    size_t *start; /* [k][tiles] first packed entry of each tile */
    size_t tiles;
} apply_op;

static void apply_tile(const meld_tile *t, void *opv) {
    apply_op *op = opv;
    uint8_t bits[t->valid == t->n ? 1 : op->k][MELD_TILE / 8];
    const uint8_t *bp[MELD_MAX_MODELS];
    meld_uk_in vals[MELD_MAX_MODELS];
    float *pad[MELD_MAX_MODELS] = {0};
    const size_t tile0 = t->index * MELD_TILE;
    for (size_t k = 0; k < op->k; k++) {
        const meld_packed_view *d = &op->d[k];
        size_t first = op->start[k * op->tiles + t->index] + popcount_range(d->mask, tile0, t->i0); /* tail call */
        bp[k] = meld_tile_mask(t, d->mask, bits[t->valid == t->n ? 0 : k]);
        /* entries used by this call: from the tile offsets when it covers its whole tile */
        const size_t tile_end = tile0 + MELD_TILE < d->numel ? tile0 + MELD_TILE : d->numel;
        const size_t next = t->index + 1 < op->tiles ? op->start[k * op->tiles + t->index + 1] : d->nnz;
        size_t used = t->i0 == tile0 && t->i0 + t->valid == tile_end && t->valid == t->n
                          ? next - op->start[k * op->tiles + t->index]
                          : popcount_range(bp[k], 0, t->n);
        /* the ukernel reads up to MELD_UK_ALIGN entries past the last one it uses: at the end of
         * the values, read a zero-padded f32 copy instead */
        if (first + used + MELD_UK_ALIGN > d->nnz && (pad[k] = calloc(used + MELD_UK_ALIGN, sizeof(float)))) {
            for (size_t q = 0; q < used; q++) pad[k][q] = meld_load_scalar(d->values, d->dtype, first + q);
            vals[k] = (meld_uk_in){pad[k], MELD_F32};
        } else {
            vals[k] = (meld_uk_in){(const char *)d->values + first * meld_dtype_size(d->dtype), d->dtype};
        }
    }
    meld_uk_apply_args a = {.k = op->k, .base = {t->in[0], t->in_dt[0]}, .bits = bp, .values = vals,
                            .scale = op->scale, .out = t->out[0], .out_dt = t->out_dt[0]};
    op->uk->apply(t->n, &a);
    for (size_t k = 0; k < op->k; k++) free(pad[k]);
}

meld_status meld_sparse_apply(meld_context *ctx, meld_view base, size_t k, const meld_packed_view *deltas,
                              const float *scales, meld_span out) {
    if (!ctx || !deltas || !scales) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_span(out, out.numel));
    if (base.data || base.numel) MELD_TRY(meld_check_view(base, out.numel));
    if (k == 0 || k > MELD_MAX_MODELS) return MELD_ERR_INVALID_ARGUMENT;
    MELD_TRY(meld_check_floats(scales, k));
    const size_t n = out.numel, tiles = meld_stream_tiles(n);
    for (size_t i = 0; i < k; i++) {
        if (deltas[i].numel != n) return MELD_ERR_SIZE_MISMATCH;
        if (!meld_dtype_valid(deltas[i].dtype)) return MELD_ERR_UNSUPPORTED_DTYPE;
        if (n && (!deltas[i].mask || (!deltas[i].values && deltas[i].nnz))) return MELD_ERR_NULL_POINTER;
    }
    if (meld_cl_active(ctx)) {
        for (size_t i = 0; i < k; i++) {
            size_t nnz;
            MELD_TRY(meld_mask_count(deltas[i].mask, n, &nnz));
            if (nnz != deltas[i].nnz) return MELD_ERR_SIZE_MISMATCH;
        }
        return meld_cl_sparse_apply(ctx, base, k, deltas, scales, out);
    }
    size_t *start = malloc((k * tiles + 1) * sizeof *start);
    if (!start) return MELD_ERR_OUT_OF_MEMORY;
    /* first packed entry of every tile: per-tile popcounts in parallel, then prefix sums, whose
     * totals also check each delta's nnz against its mask */
#pragma omp parallel for schedule(static) num_threads(ctx->threads)
    for (size_t q = 0; q < k * tiles; q++) start[q] = tile_popcount(deltas[q / tiles].mask, n, q % tiles);
    for (size_t i = 0; i < k; i++) {
        size_t c = 0;
        for (size_t t = 0; t < tiles; t++) { size_t v = start[i * tiles + t]; start[i * tiles + t] = c; c += v; }
        if (c != deltas[i].nnz) { free(start); return MELD_ERR_SIZE_MISMATCH; }
    }
    meld_stream s = {.n = n, .nin = 1, .nout = 1};
    s.in[0] = base.data;
    s.in_dt[0] = base.data ? (int)base.dtype : MELD_F32;
    s.out[0] = out.data;
    s.out_dt[0] = out.dtype;
    apply_op op = {.uk = ctx->uk, .k = k, .d = deltas, .scale = scales, .start = start, .tiles = tiles};
    meld_status st = meld_stream_run(ctx, &s, apply_tile, &op);
    free(start);
    return st;
}
