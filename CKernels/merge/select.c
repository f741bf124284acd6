/* Exact magnitude selection without sorting the data.
 *
 * Fast path (one streaming pass): a small block sample brackets the k-th largest |v| between
 * lo and hi; the pass counts entries above hi and collects the bits of entries inside [lo, hi]
 * into per-thread lists, in index order, with a count per tile (ukernel `collect`). A radix
 * select over the few candidates gives the exact threshold T; the per-tile counts lead to the
 * one tile holding the cutoff tie, which is rescanned. When every candidate equals T (lo == hi,
 * heavy ties) nothing needs storing at all.
 * Fallback (bracket missed, or too many distinct candidates to store): radix selection by range
 * histograms over the magnitude range known to hold the k-th largest, then per-tile counts of
 * the threshold to place the cutoff. Both give the same answer; the fallback is only slower. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "../core/internal.h"
#include "../device/opencl.h"

#include "select.h"

typedef struct sel_src {
    meld_view base; /* data NULL: select on the values themselves */
    size_t k;
    const meld_view *x;
    size_t n;
} sel_src;

static inline uint32_t src_bits(const sel_src *s, size_t e, size_t i) {
    float v = meld_load_scalar(s->x[e].data, s->x[e].dtype, i);
    if (s->base.data) v = v - meld_load_scalar(s->base.data, s->base.dtype, i);
    return meld_f32_bits(v) & 0x7fffffffu;
}

/* Radix digits, most significant first: bits 30..20, 19..10, 9..0. */
static const int digit_shift[3] = {20, 10, 0};
static const uint32_t digit_mask[3] = {0x7ff, 0x3ff, 0x3ff};

/* Given a histogram of one digit and the 1-based rank wanted from the top, return the digit
 * and reduce *rank to the rank within that digit's bin; *above gets the count above it. */
static uint32_t pick_digit(const uint64_t *hist, uint32_t bins, uint64_t *rank, uint64_t *above) {
    uint64_t cum = 0;
    for (uint32_t b = bins; b-- > 0;) {
        if (cum + hist[b] >= *rank) {
            *rank -= cum;
            *above += cum;
            return b;
        }
        cum += hist[b];
    }
    return 0; /* unreachable when rank <= total */
}

/* Exact rank-th largest (1-based) among arrays of bits; returns the value and the rank of the
 * wanted entry among those equal to it. After the first digit only the entries of the chosen
 * bin are kept (copied once), so the later digits scan a small array. */
static uint32_t radix_small(uint32_t *const *lists, const size_t *lens, int nlists, uint64_t rank,
                            uint64_t *tie_rank) {
    uint64_t hist[2048], above = 0;
    memset(hist, 0, sizeof hist);
    for (int l = 0; l < nlists; l++) {
        for (size_t i = 0; i < lens[l]; i++) hist[lists[l][i] >> digit_shift[0]]++;
    }
    uint32_t prefix = pick_digit(hist, digit_mask[0] + 1, &rank, &above) << digit_shift[0];
    uint32_t pmask = digit_mask[0] << digit_shift[0];
    size_t m = (size_t)hist[prefix >> digit_shift[0]];
    uint32_t *bin = malloc((m ? m : 1) * sizeof *bin);
    if (bin) {
        size_t q = 0;
        for (int l = 0; l < nlists; l++)
            for (size_t i = 0; i < lens[l]; i++)
                if ((lists[l][i] & pmask) == prefix) bin[q++] = lists[l][i];
    }
    for (int d = 1; d < 3; d++) {
        uint32_t bins = digit_mask[d] + 1;
        memset(hist, 0, bins * sizeof hist[0]);
        if (bin) {
            for (size_t i = 0; i < m; i++)
                if ((bin[i] & pmask) == prefix) hist[(bin[i] >> digit_shift[d]) & digit_mask[d]]++;
        } else {
            for (int l = 0; l < nlists; l++)
                for (size_t i = 0; i < lens[l]; i++)
                    if ((lists[l][i] & pmask) == prefix) hist[(lists[l][i] >> digit_shift[d]) & digit_mask[d]]++;
        }
        uint32_t dg = pick_digit(hist, bins, &rank, &above);
        prefix |= dg << digit_shift[d];
        pmask |= digit_mask[d] << digit_shift[d];
    }
    free(bin);
    *tie_rank = rank;
    return prefix;
}

/* Radix selection over the whole tensor for expert e, restricted to the magnitude range
 * [lo, hi] known to hold the k-th largest, with `above` entries known to lie above hi: range
 * histograms of at most 2048 bins (ukernel `hist`) narrow the range to one value T; per-tile
 * counts of T then place the tie cutoff, rescanning one tile. */
typedef struct hist_op {
    const sel_src *s;
    size_t e;
    const meld_ukernels *uk;
    meld_uk_hist_args proto;
    uint32_t *hist;      /* [thread][2048] */
    uint32_t *per_tile;  /* when set: the tile's single-bin count goes to per_tile[tile] */
} hist_op;

static void hist_tile(const meld_tile *t, void *opv) {
    hist_op *op = opv;
    meld_uk_hist_args a = op->proto;
    a.base = (meld_uk_in){t->in[0], t->in_dt[0]};
    a.x = (meld_uk_in){t->in[1], t->in_dt[1]};
    uint32_t one = 0;
    a.hist = op->per_tile ? &one : op->hist + (size_t)t->thread * 2048;
    if (t->valid == t->n) op->uk->hist(t->n, &a);
    else
        for (size_t i = t->i0; i < t->i0 + t->valid; i++) {
            uint32_t b = src_bits(op->s, op->e, i);
            if (b >= a.lo && b <= a.hi) a.hist[(b - a.lo) >> a.shift]++;
        }
    if (op->per_tile) op->per_tile[t->index] += one; /* a tile's body and padded tail both add */
}

static meld_status radix_range(meld_context *ctx, const sel_src *s, size_t e, uint64_t k, uint32_t lo,
                               uint32_t hi, uint64_t above, meld_selection *out) {
    const size_t n = s->n, tiles = meld_stream_tiles(n);
    const int nt = ctx->threads;
    uint32_t *mem = meld_scratch(ctx, ((size_t)nt * 2048 + tiles) * sizeof(uint32_t));
    if (!mem) return MELD_ERR_OUT_OF_MEMORY;
    meld_stream str = {.n = n, .nin = 2};
    str.in[0] = s->base.data;
    str.in_dt[0] = s->base.data ? (int)s->base.dtype : MELD_F32;
    str.in[1] = s->x[e].data;
    str.in_dt[1] = s->x[e].dtype;
    hist_op op = {.s = s, .e = e, .uk = ctx->uk, .hist = mem};
    uint64_t rank = k - above, hist[2048];
    while (lo < hi) {
        int shift = 0;
        while (((uint64_t)(hi - lo) >> shift) >= 2048) shift++;
        uint32_t bins = (uint32_t)((uint64_t)(hi - lo) >> shift) + 1;
        memset(mem, 0, (size_t)nt * 2048 * sizeof(uint32_t));
        op.proto = (meld_uk_hist_args){.lo = lo, .hi = hi, .shift = shift};
        MELD_TRY(meld_stream_run(ctx, &str, hist_tile, &op));
        for (uint32_t b = 0; b < bins; b++) {
            hist[b] = 0;
            for (int t = 0; t < nt; t++) hist[b] += mem[(size_t)t * 2048 + b];
        }
        uint64_t skipped = 0;
        uint32_t dg = pick_digit(hist, bins, &rank, &skipped);
        lo += dg << shift;
        if (shift < 31 && lo + ((1u << shift) - 1) < hi) hi = lo + ((1u << shift) - 1);
    }
    /* rank = how many entries equal to T = lo are kept */
    op.proto = (meld_uk_hist_args){.lo = lo, .hi = lo, .shift = 0};
    op.per_tile = mem + (size_t)nt * 2048;
    memset(op.per_tile, 0, tiles * sizeof *op.per_tile);
    MELD_TRY(meld_stream_run(ctx, &str, hist_tile, &op));
    uint64_t cutoff = n;
    for (size_t tile = 0; tile < tiles; tile++) {
        if (op.per_tile[tile] < rank) { rank -= op.per_tile[tile]; continue; }
        size_t a = tile * MELD_TILE, b = a + MELD_TILE < n ? a + MELD_TILE : n;
        for (size_t i = a; i < b; i++)
            if (src_bits(s, e, i) == lo && --rank == 0) { cutoff = i + 1; break; }
        break;
    }
    *out = (meld_selection){.threshold = lo, .tie_cutoff = cutoff, .kept = k};
    return MELD_OK;
}

/* ---- the collect pass -------------------------------------------------------------------- */
typedef struct collect_op {
    const sel_src *s;
    const meld_ukernels *uk;
    size_t ne;             /* experts in this pass */
    const size_t *expert;  /* their indices in s->x */
    const uint32_t *lo, *hi;
    size_t cap;
    size_t tiles;
    /* per thread t, per pass-expert j: slot t * ne + j */
    uint64_t *gt, *eq_hi, *eq_lo;
    size_t *count;
    uint32_t **cand;
    /* [j * tiles + tile]: entries of that tile strictly inside the bracket, equal to hi, to lo */
    uint32_t *tile_cand, *tile_hi, *tile_lo;
} collect_op;

static void collect_tile(const meld_tile *t, void *opv) {
    collect_op *op = opv;
    const sel_src *s = op->s;
    size_t slot = (size_t)t->thread * op->ne;
    size_t before[MELD_MAX_MODELS];
    uint64_t bh[MELD_MAX_MODELS], bl[MELD_MAX_MODELS];
    for (size_t j = 0; j < op->ne; j++) { before[j] = op->count[slot + j]; bh[j] = op->eq_hi[slot + j]; bl[j] = op->eq_lo[slot + j]; }
    if (t->valid == t->n) {
        meld_uk_in x[MELD_MAX_MODELS];
        for (size_t j = 0; j < op->ne; j++) x[j] = (meld_uk_in){t->in[1 + j], t->in_dt[1 + j]};
        meld_uk_collect_args a = {.k = op->ne, .base = {t->in[0], t->in_dt[0]}, .x = x, .lo = op->lo,
                                  .hi = op->hi, .gt = op->gt + slot, .eq_hi = op->eq_hi + slot, .eq_lo = op->eq_lo + slot,
                                  .cand = op->cand + slot,
                                  .count = op->count + slot, .cap = op->cap};
        op->uk->collect(t->n, t->i0, &a);
    } else {
        /* padded tail: only the valid entries count */
        for (size_t j = 0; j < op->ne; j++)
            for (size_t i = t->i0; i < t->i0 + t->valid; i++) {
                uint32_t b = src_bits(s, op->expert[j], i);
                op->eq_hi[slot + j] += b == op->hi[j];
                op->eq_lo[slot + j] += b == op->lo[j];
                if (b > op->hi[j]) op->gt[slot + j]++;
                else if (b > op->lo[j] && b < op->hi[j]) {
                    size_t c = op->count[slot + j]++;
                    if (c + MELD_UK_ALIGN <= op->cap) op->cand[slot + j][c] = b;
                }
            }
    }
    for (size_t j = 0; j < op->ne; j++) {
        op->tile_cand[j * op->tiles + t->index] += (uint32_t)(op->count[slot + j] - before[j]);
        op->tile_hi[j * op->tiles + t->index] += (uint32_t)(op->eq_hi[slot + j] - bh[j]);
        op->tile_lo[j * op->tiles + t->index] += (uint32_t)(op->eq_lo[slot + j] - bl[j]);
    }
}

/* The k-th largest (1-based rank from the top) of a small array. */
uint32_t meld_select_kth(uint32_t *a, size_t len, uint64_t rank, uint64_t *tie_rank) {
    size_t lens[1] = {len};
    return radix_small(&a, lens, 1, rank, tie_rank);
}
static uint32_t kth_largest(uint32_t *a, size_t len, uint64_t rank) {
    uint64_t tie;
    return meld_select_kth(a, len, rank, &tie);
}

void meld_select_bracket(uint32_t *sample, size_t S, size_t n, uint64_t k, uint32_t *lo, uint32_t *hi) {
    double q = (double)k / (double)n;
    double rank = q * (double)S; /* rank from the top of the k-th largest, in the sample */
    double delta = 4.0 * sqrt((double)S * q * (1.0 - q)) + 24.0;
    double rhi = rank - delta, rlo = rank + delta;
    *hi = rhi < 1.0 ? 0x7fffffffu : kth_largest(sample, S, (uint64_t)rhi);
    *lo = rlo > (double)S ? 0u : kth_largest(sample, S, (uint64_t)rlo);
}

/* Index of the tie_rank-th entry equal to T in [i0, i1), or i1 if there are fewer. */
static size_t find_tie(const sel_src *s, size_t e, uint32_t T, size_t i0, size_t i1, uint64_t tie_rank) {
    for (size_t i = i0; i < i1; i++)
        if (src_bits(s, e, i) == T && --tie_rank == 0) return i;
    return i1;
}

static meld_status select_many(meld_context *ctx, const sel_src *s, const uint64_t *kk, meld_selection *out) {
    if (meld_cl_active(ctx)) return meld_cl_select(ctx, s->base, s->k, s->x, kk, out);
    const size_t n = s->n;
    size_t active[MELD_MAX_MODELS], ne = 0;
    for (size_t e = 0; e < s->k; e++) {
        if (kk[e] == 0) out[e] = (meld_selection){.threshold = 0xffffffffu, .tie_cutoff = 0, .kept = 0};
        else if (kk[e] >= n) out[e] = (meld_selection){.threshold = 0, .tie_cutoff = n, .kept = n};
        else active[ne++] = e;
    }
    if (ne == 0) return MELD_OK;
    /* MELD_SELECT=radix forces the full radix path, so tests cover both paths */
    const char *force = getenv("MELD_SELECT");
    if (force && !strcmp(force, "radix")) {
        for (size_t j = 0; j < ne; j++)
            MELD_TRY(radix_range(ctx, s, active[j], kk[active[j]], 0, 0x7fffffffu, 0, &out[active[j]]));
        return MELD_OK;
    }

    uint32_t lo[MELD_MAX_MODELS], hi[MELD_MAX_MODELS];
    const int nt = ctx->threads;
    size_t cap;
    if (n <= MELD_SEL_SMALL) {
        for (size_t j = 0; j < ne; j++) { lo[j] = 0; hi[j] = 0x7fffffffu; }
        cap = n + MELD_UK_ALIGN;
    } else {
        uint32_t sample[MELD_SEL_BLOCKS * MELD_SEL_RUN];
        const size_t S = MELD_SEL_BLOCKS * MELD_SEL_RUN, step = n / MELD_SEL_BLOCKS;
        for (size_t j = 0; j < ne; j++) {
            size_t m = 0;
            for (size_t b = 0; b < MELD_SEL_BLOCKS; b++)
                for (size_t r = 0; r < MELD_SEL_RUN; r++) sample[m++] = src_bits(s, active[j], b * step + r);
            meld_select_bracket(sample, S, n, kk[active[j]], &lo[j], &hi[j]);
        }
        cap = (size_t)(0.16 * (double)n / nt) + 4096; /* 4 bytes a candidate: heavy ties fit */
    }

    const size_t slots = (size_t)nt * ne, tiles = meld_stream_tiles(n);
    size_t bytes = slots * (3 * sizeof(uint64_t) + sizeof(size_t) + sizeof(uint32_t *)) + 3 * ne * tiles * sizeof(uint32_t) +
                   slots * cap * sizeof(uint32_t) + 64;
    char *mem = meld_scratch(ctx, bytes);
    if (!mem) return MELD_ERR_OUT_OF_MEMORY;
    collect_op op = {.s = s, .uk = ctx->uk, .ne = ne, .expert = active, .lo = lo, .hi = hi, .cap = cap, .tiles = tiles};
    op.gt = (uint64_t *)mem;
    op.eq_hi = op.gt + slots;
    op.eq_lo = op.eq_hi + slots;
    op.count = (size_t *)(op.eq_lo + slots);
    op.cand = (uint32_t **)(op.count + slots);
    op.tile_cand = (uint32_t *)(op.cand + slots);
    op.tile_hi = op.tile_cand + ne * tiles;
    op.tile_lo = op.tile_hi + ne * tiles;
    uint32_t *lists = op.tile_lo + ne * tiles;
    memset(op.gt, 0, 3 * slots * sizeof *op.gt);
    memset(op.count, 0, slots * sizeof *op.count);
    memset(op.tile_cand, 0, 3 * ne * tiles * sizeof *op.tile_cand);
    for (size_t i = 0; i < slots; i++) op.cand[i] = lists + i * cap;

    meld_stream str = {.n = n, .nin = 1 + (int)ne, .nout = 0};
    str.in[0] = s->base.data;
    str.in_dt[0] = s->base.data ? (int)s->base.dtype : MELD_F32;
    for (size_t j = 0; j < ne; j++) { str.in[1 + j] = s->x[active[j]].data; str.in_dt[1 + j] = s->x[active[j]].dtype; }
    MELD_TRY(meld_stream_run(ctx, &str, collect_tile, &op));

    typedef struct { size_t e; uint32_t lo, hi; uint64_t above; int needed; } range_job;
    range_job fallback[MELD_MAX_MODELS];
    /* experts finish independently: in parallel when there are several */
#pragma omp parallel for schedule(static, 1) num_threads(nt < (int)ne ? nt : (int)ne) if (ne > 1)
    for (size_t j = 0; j < ne; j++) {
        size_t e = active[j];
        uint64_t k = kk[e], G = 0, C = 0, EH = 0, EL = 0;
        int stored = 1;
        uint32_t *lp[4096];
        size_t lens[4096];
        fallback[j].needed = 0;
        for (int t = 0; t < nt && t < 4096; t++) {
            size_t sl = (size_t)t * ne + j;
            G += op.gt[sl];
            EH += op.eq_hi[sl];
            EL += op.eq_lo[sl];
            C += op.count[sl];
            if (op.count[sl] + MELD_UK_ALIGN > cap) stored = 0;
            lp[t] = op.cand[sl];
            lens[t] = op.count[sl];
        }
        if (lo[j] == hi[j]) EL = 0; /* the same entries as EH */
        /* ranks from the top: (hi, inf) G, == hi EH, (lo, hi) C, == lo EL. The k-th largest lies
         * in one of them; outside the bracket (or inside with too many values to store) a radix
         * over the range that must hold it takes over. */
        uint64_t r = G >= k ? 0 : k - G;
        const uint32_t *per_tile = NULL; /* tie counts per tile, when known without scanning */
        uint32_t T;
        if (nt > 4096 || r == 0) { fallback[j] = (range_job){e, hi[j] + 1, 0x7fffffffu, 0, 1}; continue; }
        if (r <= EH) { T = hi[j]; per_tile = op.tile_hi + j * tiles; }
        else if ((r -= EH) <= C) {
            if (!stored) { fallback[j] = (range_job){e, lo[j] + 1, hi[j] - 1, G + EH, 1}; continue; }
            uint64_t tie;
            T = radix_small(lp, lens, nt, r, &tie);
            r = tie;
        } else if ((r -= C) <= EL) { T = lo[j]; per_tile = op.tile_lo + j * tiles; }
        else { fallback[j] = (range_job){e, 0, lo[j] - 1, G + EH + C + EL, 1}; continue; }
        /* Walk tiles in index order to the tile holding the r-th entry equal to T, then rescan
         * that tile for its index (the candidate lists are in tile order). */
        int th = 0;
        size_t off = 0;
        uint64_t cutoff = n, tie_rank = r;
        for (size_t tile = 0; tile < tiles; tile++) {
            uint64_t ties = 0;
            if (per_tile) ties = per_tile[tile];
            else {
                for (uint64_t q = 0, c = op.tile_cand[j * tiles + tile]; q < c; q++) {
                    while (off >= lens[th]) { th++; off = 0; }
                    ties += lp[th][off++] == T;
                }
            }
            if (ties >= tie_rank) {
                size_t a = tile * MELD_TILE, b = a + MELD_TILE < n ? a + MELD_TILE : n;
                cutoff = find_tie(s, e, T, a, b, tie_rank) + 1;
                break;
            }
            tie_rank -= ties;
        }
        out[e] = (meld_selection){.threshold = T, .tie_cutoff = cutoff, .kept = k};
    }
    /* the fallback reuses the scratch that held the candidate lists */
    for (size_t j = 0; j < ne; j++) {
        const range_job *r = &fallback[j];
        if (r->needed) MELD_TRY(radix_range(ctx, s, r->e, kk[r->e], r->lo, r->hi, r->above, &out[r->e]));
    }
    return MELD_OK;
}

/* ---- public entry points ---------------------------------------------------------------- */

meld_status meld_density_count(double density, size_t n, uint64_t *k) {
    if (!k) return MELD_ERR_NULL_POINTER;
    if (!(density >= 0.0 && density <= 1.0)) return MELD_ERR_INVALID_ARGUMENT; /* NaN too */
    if (density >= 1.0) *k = n;
    else if (density <= 0.0 || n == 0) *k = 0;
    else {
        uint64_t c = (uint64_t)floor(density * (double)n);
        *k = c < 1 ? 1 : c;
    }
    return MELD_OK;
}

meld_status meld_select_topk(meld_context *ctx, meld_view v, uint64_t k, meld_selection *out) {
    if (!ctx || !out) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_view(v, v.numel));
    if (k > v.numel) return MELD_ERR_INVALID_ARGUMENT;
    sel_src s = {.k = 1, .x = &v, .n = v.numel};
    return select_many(ctx, &s, &k, out);
}

meld_status meld_magnitude_select(meld_context *ctx, meld_view v, double density, meld_selection *out) {
    uint64_t k;
    MELD_TRY(meld_density_count(density, v.numel, &k));
    return meld_select_topk(ctx, v, k, out);
}

meld_status meld_select_many(meld_context *ctx, meld_view base, size_t count, const meld_view *x,
                             const uint64_t *k, meld_selection *out) {
    sel_src s = {.base = base, .k = count, .x = x, .n = base.data ? base.numel : (count ? x[0].numel : 0)};
    return select_many(ctx, &s, k, out);
}

meld_status meld_task_select(meld_context *ctx, meld_view base, size_t k, const meld_view *models,
                             const double *densities, meld_selection *out) {
    if (!ctx || !densities || !out) return MELD_ERR_NULL_POINTER;
    MELD_TRY(meld_check_view(base, base.numel));
    MELD_TRY(meld_check_models(k, models, base.numel));
    uint64_t kk[MELD_MAX_MODELS];
    for (size_t e = 0; e < k; e++) MELD_TRY(meld_density_count(densities[e], base.numel, &kk[e]));
    sel_src s = {.base = base, .k = k, .x = models, .n = base.numel};
    return select_many(ctx, &s, kk, out);
}
