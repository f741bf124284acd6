/* Exact magnitude selection without sorting the data.
 *
 * Fast path (one streaming pass): a small block sample brackets the k-th largest |v| between
 * lo and hi; the pass counts entries above hi and collects the bits of entries inside [lo, hi]
 * into per-thread lists, recording for each tile its thread, start and count (ukernel
 * `collect`). Range histograms over the candidates (each thread its own lists, then the chosen
 * bin gathered) give the exact threshold T; the per-tile counts lead to the one tile holding the
 * cutoff tie, which is rescanned. When the k-th largest equals lo or hi (heavy ties) nothing
 * stored is needed. When the sample shows no ties on lo and hi (f32 weights), the pass stores
 * [lo, hi] instead and counts only the entries above hi.
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

/* |x - base| bits of entries [i0, i0 + len) of expert e; the dtype switch sits outside the
 * loops so they vectorize. */
static void sample_run(const sel_src *s, size_t e, size_t i0, size_t len, uint32_t *out) {
    float v[MELD_SEL_RUN];
    for (size_t q = 0; q < len; q += MELD_SEL_RUN) {
        size_t m = len - q < MELD_SEL_RUN ? len - q : MELD_SEL_RUN;
        const void *src[2] = {s->x[e].data, s->base.data};
        const int dts[2] = {s->x[e].dtype, s->base.dtype};
        for (int w = 0; w < (s->base.data ? 2 : 1); w++) {
            float t[MELD_SEL_RUN];
            float *dst = w == 0 ? v : t;
            switch (dts[w]) {
            case MELD_F32: memcpy(dst, (const float *)src[w] + i0 + q, m * sizeof(float)); break;
            case MELD_BF16: {
                const uint16_t *h = (const uint16_t *)src[w] + i0 + q;
                for (size_t i = 0; i < m; i++) dst[i] = meld_bf16_to_f32(h[i]);
                break;
            }
            default: {
                const uint16_t *h = (const uint16_t *)src[w] + i0 + q;
                for (size_t i = 0; i < m; i++) dst[i] = meld_f16_to_f32(h[i]);
                break;
            }
            }
            if (w == 1)
                for (size_t i = 0; i < m; i++) v[i] = v[i] - t[i];
        }
        for (size_t i = 0; i < m; i++) out[q + i] = meld_f32_bits(v[i]) & 0x7fffffffu;
    }
}

/* Given a histogram and the 1-based rank wanted from the top, return the bin holding it and
 * reduce *rank to the rank within that bin; *above gets the count above it. */
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

/* ---- selection among candidates: range histograms ------------------------------------------
 * Candidates lie in a known range [lo, hi]; a histogram of (v - lo) >> shift over SEL_BINS bins
 * resolves 12 bits of it per pass. */
enum { SEL_BINS = 4096, SEL_WAYS = 4 };

/* the smallest shift that maps [lo, hi] onto fewer than `bins` bins */
static int range_shift(uint32_t lo, uint32_t hi, uint32_t bins) {
    int shift = 0;
    while (((uint64_t)(hi - lo) >> shift) >= bins) shift++;
    return shift;
}

/* h[b] += how many v of p[0..len) in [lo, hi] have (v - lo) >> shift == b. The counts go to
 * SEL_WAYS interleaved copies first: quantized weights give long runs of one value, which would
 * otherwise chain every increment through one counter. tmp: SEL_WAYS * SEL_BINS words. */
static void hist_range(const uint32_t *p, size_t len, uint32_t lo, uint32_t hi, int shift, uint32_t *h, uint32_t *tmp) {
    const uint32_t span = hi - lo;
    const uint32_t bins = (span >> shift) + 1;
    for (int w = 0; w < SEL_WAYS; w++) memset(tmp + (size_t)w * SEL_BINS, 0, bins * sizeof *tmp);
    size_t i = 0;
    for (; i + SEL_WAYS <= len; i += SEL_WAYS)
        for (int w = 0; w < SEL_WAYS; w++) {
            uint32_t d = p[i + w] - lo;
            if (d <= span) tmp[(size_t)w * SEL_BINS + (d >> shift)]++;
        }
    for (; i < len; i++) {
        uint32_t d = p[i] - lo;
        if (d <= span) tmp[d >> shift]++;
    }
    for (uint32_t b = 0; b < bins; b++) {
        uint32_t c = 0;
        for (int w = 0; w < SEL_WAYS; w++) c += tmp[(size_t)w * SEL_BINS + b];
        h[b] += c;
    }
}

/* The rank-th largest (1-based) of a[0..len) (reordered: entries outside the chosen bins are
 * dropped as it narrows; those equal to the answer never are); *tie_rank: its rank among the
 * entries equal to it; *equal (may be NULL): how many entries equal it. */
static uint32_t kth_in_range(uint32_t *a, size_t len, uint64_t rank, uint64_t *tie_rank, uint64_t *equal, uint32_t *tmp) {
    uint32_t h[SEL_BINS];
    uint64_t h64[SEL_BINS];
    for (;;) {
        if (len <= 48 && len > 0) {
            /* few left: sort them, largest first (a histogram pass would cost more) */
            for (size_t i = 1; i < len; i++) {
                uint32_t v = a[i];
                size_t j = i;
                for (; j > 0 && a[j - 1] < v; j--) a[j] = a[j - 1];
                a[j] = v;
            }
            uint32_t v = a[rank - 1];
            size_t first = rank - 1, last = rank;
            while (first > 0 && a[first - 1] == v) first--;
            while (last < len && a[last] == v) last++;
            *tie_rank = rank - first;
            if (equal) *equal = last - first;
            return v;
        }
        uint32_t lo = 0xffffffffu, hi = 0;
        for (size_t i = 0; i < len; i++) {
            lo = a[i] < lo ? a[i] : lo;
            hi = a[i] > hi ? a[i] : hi;
        }
        if (len == 0 || lo == hi) {
            *tie_rank = rank;
            if (equal) *equal = len;
            return lo;
        }
        int shift = range_shift(lo, hi, SEL_BINS);
        uint32_t bins = ((hi - lo) >> shift) + 1;
        memset(h, 0, bins * sizeof *h);
        hist_range(a, len, lo, hi, shift, h, tmp);
        for (uint32_t b = 0; b < bins; b++) h64[b] = h[b];
        uint64_t above = 0;
        uint32_t blo = lo + (pick_digit(h64, bins, &rank, &above) << shift);
        uint32_t bspan = (uint32_t)(((uint64_t)1 << shift) - 1);
        size_t m = 0;
        for (size_t i = 0; i < len; i++) {
            uint32_t v = a[i];
            a[m] = v;
            m += v - blo <= bspan;
        }
        len = m;
    }
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
        int shift = range_shift(lo, hi, 2048);
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
    int inclusive;         /* candidates [lo, hi] (ends not counted), else (lo, hi) */
    size_t cap;
    size_t tiles;
    /* per thread t, per pass-expert j: slot t * ne + j */
    uint64_t *gt, *eq_hi, *eq_lo;
    size_t *count;
    uint32_t **cand;
    /* [j * tiles + tile]: entries of that tile strictly inside the bracket, equal to hi, to lo */
    uint32_t *tile_cand, *tile_hi, *tile_lo;
    /* where each tile's candidates went: the thread that ran it, and [j * tiles + tile] their
     * start in that thread's list for expert j (tiles go to threads in any order) */
    uint32_t *tile_thread;
    size_t *tile_start;
} collect_op;

static void collect_tile(const meld_tile *t, void *opv) {
    collect_op *op = opv;
    const sel_src *s = op->s;
    size_t slot = (size_t)t->thread * op->ne;
    size_t before[MELD_MAX_MODELS];
    uint64_t bh[MELD_MAX_MODELS], bl[MELD_MAX_MODELS];
    for (size_t j = 0; j < op->ne; j++) { before[j] = op->count[slot + j]; bh[j] = op->eq_hi[slot + j]; bl[j] = op->eq_lo[slot + j]; }
    if (op->tile_thread[t->index] == UINT32_MAX) { /* the tile's first part (a padded tail may follow, same thread) */
        op->tile_thread[t->index] = (uint32_t)t->thread;
        for (size_t j = 0; j < op->ne; j++) op->tile_start[j * op->tiles + t->index] = before[j];
    }
    if (t->valid == t->n) {
        meld_uk_in x[MELD_MAX_MODELS];
        for (size_t j = 0; j < op->ne; j++) x[j] = (meld_uk_in){t->in[1 + j], t->in_dt[1 + j]};
        meld_uk_collect_args a = {.k = op->ne, .base = {t->in[0], t->in_dt[0]}, .x = x, .lo = op->lo,
                                  .hi = op->hi, .inclusive = op->inclusive, .gt = op->gt + slot, .eq_hi = op->eq_hi + slot, .eq_lo = op->eq_lo + slot,
                                  .cand = op->cand + slot,
                                  .count = op->count + slot, .cap = op->cap};
        op->uk->collect(t->n, t->i0, &a);
    } else {
        /* padded tail: only the valid entries count */
        for (size_t j = 0; j < op->ne; j++)
            for (size_t i = t->i0; i < t->i0 + t->valid; i++) {
                uint32_t b = src_bits(s, op->expert[j], i);
                const int incl = op->inclusive;
                if (!incl) {
                    op->eq_hi[slot + j] += b == op->hi[j];
                    op->eq_lo[slot + j] += b == op->lo[j] && op->lo[j] < op->hi[j];
                }
                if (b > op->hi[j]) op->gt[slot + j]++;
                else if (incl ? b >= op->lo[j] : b > op->lo[j] && b < op->hi[j]) {
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

meld_status meld_select_kth(uint32_t *a, size_t len, uint64_t rank, uint32_t *value, uint64_t *tie_rank) {
    uint32_t *tmp = malloc(SEL_WAYS * SEL_BINS * sizeof *tmp);
    if (!tmp) return MELD_ERR_OUT_OF_MEMORY;
    *value = kth_in_range(a, len, rank, tie_rank, NULL, tmp);
    free(tmp);
    return MELD_OK;
}

meld_status meld_select_bracket(const uint32_t *sample, size_t S, size_t n, uint64_t k, uint32_t *lo, uint32_t *hi,
                                int *tied_ends) {
    double q = (double)k / (double)n;
    double rank = q * (double)S; /* rank from the top of the k-th largest, in the sample */
    double delta = 4.0 * sqrt((double)S * q * (1.0 - q)) + 24.0;
    double rhi = rank - delta, rlo = rank + delta;
    *hi = 0x7fffffffu;
    *lo = 0;
    if (tied_ends) *tied_ends = 1;
    const int want_hi = rhi >= 1.0, want_lo = rlo <= (double)S;
    if (!want_hi && !want_lo) return MELD_OK;
    /* Both ends from one histogram of the sample: the bins holding the two ranks, then each
     * bin's entries alone. */
    uint32_t mn = 0xffffffffu, mx = 0;
    for (size_t i = 0; i < S; i++) {
        mn = sample[i] < mn ? sample[i] : mn;
        mx = sample[i] > mx ? sample[i] : mx;
    }
    if (mn == mx) {
        if (want_hi) *hi = mn;
        if (want_lo) *lo = mn;
        return MELD_OK;
    }
    uint32_t *tmp = malloc((SEL_WAYS * SEL_BINS + SEL_BINS) * sizeof *tmp);
    if (!tmp) return MELD_ERR_OUT_OF_MEMORY;
    uint32_t *h = tmp + SEL_WAYS * SEL_BINS;
    const int shift = range_shift(mn, mx, SEL_BINS);
    const uint32_t bins = ((mx - mn) >> shift) + 1;
    memset(h, 0, bins * sizeof *h);
    hist_range(sample, S, mn, mx, shift, h, tmp);
    uint64_t h64[SEL_BINS];
    for (uint32_t b = 0; b < bins; b++) h64[b] = h[b];
    uint64_t r[2] = {want_hi ? (uint64_t)rhi : 1, want_lo ? (uint64_t)rlo : 1}, above = 0;
    uint32_t bin[2];
    for (int e = 0; e < 2; e++) bin[e] = pick_digit(h64, bins, &r[e], &above);
    /* each list gets one slot of slack: the gather stores every entry and advances past the kept ones */
    uint32_t *w = malloc((h64[bin[0]] + h64[bin[1]] + 2) * sizeof *w);
    if (!w) { free(tmp); return MELD_ERR_OUT_OF_MEMORY; }
    uint32_t *w1 = w + h64[bin[0]] + 1;
    size_t c0 = 0, c1 = 0;
    for (size_t i = 0; i < S; i++) {
        const uint32_t v = sample[i], d = (v - mn) >> shift;
        w[c0] = v;
        c0 += d == bin[0];
        w1[c1] = v;
        c1 += d == bin[1];
    }
    uint64_t tie, eh = 0, el = 0;
    if (want_hi) *hi = kth_in_range(w, c0, r[0], &tie, &eh, tmp);
    if (want_lo) *lo = kth_in_range(w1, c1, r[1], &tie, &el, tmp);
    /* each end an entry or two of the sample, against the 2 delta between them (f32 weights),
     * or a share of them (quantized, bf16). An end not taken from the sample (0 or the top)
     * counts as tied: 0 may hold every unchanged weight of a task vector. */
    if (tied_ends)
        *tied_ends = !want_hi || !want_lo || (double)(*lo == *hi ? eh : eh + el) > 2.0 * delta / 16.0 + 4.0;
    free(w);
    free(tmp);
    return MELD_OK;
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
    /* MELD_SELECT=radix forces the full radix path, =inclusive or =exclusive the collect pass's
     * form, so tests cover every path whatever the data */
    const char *force = getenv("MELD_SELECT");
    if (force && !strcmp(force, "radix")) {
        for (size_t j = 0; j < ne; j++)
            MELD_TRY(radix_range(ctx, s, active[j], kk[active[j]], 0, 0x7fffffffu, 0, &out[active[j]]));
        return MELD_OK;
    }

    uint32_t lo[MELD_MAX_MODELS], hi[MELD_MAX_MODELS];
    const int nt = ctx->threads;
    size_t cap;
    int inclusive = 0, tied[MELD_MAX_MODELS];
    if (n <= MELD_SEL_SMALL) {
        for (size_t j = 0; j < ne; j++) { lo[j] = 0; hi[j] = 0x7fffffffu; }
        cap = n + MELD_UK_ALIGN;
    } else {
        const size_t B = meld_sel_blocks(n), S = B * MELD_SEL_RUN, step = n / B;
        uint32_t *sample = malloc(ne * S * sizeof *sample);
        if (!sample) return MELD_ERR_OUT_OF_MEMORY;
        meld_status st[MELD_MAX_MODELS];
        /* the blocks of all experts in parallel, then each expert's bracket; under
         * meld_context_set_window the blocks a window at a time, in index order (the samples
         * land in the same places) */
        const size_t per = !ctx->window_done ? B : ctx->window / step > 1 ? ctx->window / step : 1;
        for (size_t b0 = 0; b0 < B; b0 += per) {
            const size_t nb = b0 + per < B ? per : B - b0;
#pragma omp parallel for schedule(static) num_threads(nt)
            for (size_t q = 0; q < ne * nb; q++) {
                const size_t r = q / nb * B + b0 + q % nb; /* expert q / nb, block b0 + q % nb */
                sample_run(s, active[r / B], r % B * step, MELD_SEL_RUN, sample + r * MELD_SEL_RUN);
            }
            if (ctx->window_done) ctx->window_done(ctx->window_user, b0 * step, (b0 + nb == B ? n : (b0 + nb) * step) - b0 * step);
        }
#pragma omp parallel for schedule(static, 1) num_threads(nt)
        for (size_t j = 0; j < ne; j++)
            st[j] = meld_select_bracket(sample + j * S, S, n, kk[active[j]], &lo[j], &hi[j], &tied[j]);
        free(sample);
        /* Store the bracket's ends too (two counts fewer an element in the pass) when the
         * sample says they are no heavy ties, as with f32 weights. Quantized (bf16) task
         * vectors put a few percent of the entries on each end; storing those costs more, in
         * the candidates' histograms, than the counts save. */
        inclusive = 1;
        for (size_t j = 0; j < ne; j++) inclusive &= st[j] == MELD_OK && !tied[j];
        if (force) inclusive = !strcmp(force, "inclusive") ? 1 : !strcmp(force, "exclusive") ? 0 : inclusive;
        for (size_t j = 0; j < ne; j++) MELD_TRY(st[j]);
        cap = (size_t)(0.16 * (double)n / nt) + 4096; /* 4 bytes a candidate: heavy ties fit */
    }

    const size_t slots = (size_t)nt * ne, tiles = meld_stream_tiles(n);
    size_t bytes = slots * (3 * sizeof(uint64_t) + sizeof(size_t) + sizeof(uint32_t *)) + ne * tiles * sizeof(size_t) +
                   (3 * ne + 1) * tiles * sizeof(uint32_t) + slots * cap * sizeof(uint32_t) + 64;
    char *mem = meld_scratch(ctx, bytes);
    if (!mem) return MELD_ERR_OUT_OF_MEMORY;
    collect_op op = {.s = s, .uk = ctx->uk, .ne = ne, .expert = active, .lo = lo, .hi = hi, .inclusive = inclusive,
                     .cap = cap, .tiles = tiles};
    op.gt = (uint64_t *)mem;
    op.eq_hi = op.gt + slots;
    op.eq_lo = op.eq_hi + slots;
    op.count = (size_t *)(op.eq_lo + slots);
    op.cand = (uint32_t **)(op.count + slots);
    op.tile_start = (size_t *)(op.cand + slots);
    op.tile_cand = (uint32_t *)(op.tile_start + ne * tiles);
    op.tile_hi = op.tile_cand + ne * tiles;
    op.tile_lo = op.tile_hi + ne * tiles;
    op.tile_thread = op.tile_lo + ne * tiles;
    uint32_t *lists = op.tile_thread + tiles;
    memset(op.gt, 0, 3 * slots * sizeof *op.gt);
    memset(op.count, 0, slots * sizeof *op.count);
    memset(op.tile_cand, 0, 3 * ne * tiles * sizeof *op.tile_cand);
    memset(op.tile_thread, 0xff, tiles * sizeof *op.tile_thread);
    for (size_t i = 0; i < slots; i++) op.cand[i] = lists + i * cap;

    /* Tried: claiming this pass's tiles from the tensor's end, so that the fused pass, which
     * starts at its head, would find that in L3. No different (meld-bench, K = 3, 1M and 2M
     * entries, f32 and bf16, 3 alternated pairs). */
    meld_stream str = {.n = n, .nin = 1 + (int)ne, .nout = 0};
    str.in[0] = s->base.data;
    str.in_dt[0] = s->base.data ? (int)s->base.dtype : MELD_F32;
    for (size_t j = 0; j < ne; j++) { str.in[1 + j] = s->x[active[j]].data; str.in_dt[1 + j] = s->x[active[j]].dtype; }
    MELD_TRY(meld_stream_run(ctx, &str, collect_tile, &op));

    typedef struct { size_t e; uint32_t lo, hi; uint64_t above; int needed; } range_job;
    range_job fallback[MELD_MAX_MODELS];
    /* Where each expert's k-th largest lies, from the counts: ranks from the top are (hi, inf) G,
     * == hi EH, (lo, hi) C, == lo EL; inclusive, [lo, hi] C with EH = EL = 0. Outside the
     * bracket (or inside with too many values to store) a radix over the range that must hold
     * it takes over. The candidates' range: [clo, chi]. */
    enum { AT_HI, AMONG, AT_LO, FALLBACK };
    int where[MELD_MAX_MODELS];
    uint64_t rnk[MELD_MAX_MODELS];
    uint32_t T[MELD_MAX_MODELS];
    size_t among[MELD_MAX_MODELS], na = 0;
    uint32_t clo[MELD_MAX_MODELS], chi[MELD_MAX_MODELS];
    for (size_t j = 0; j < ne; j++) {
        clo[j] = inclusive ? lo[j] : lo[j] + 1;
        chi[j] = inclusive ? hi[j] : hi[j] - 1;
        uint64_t k = kk[active[j]], G = 0, C = 0, EH = 0, EL = 0;
        int stored = 1;
        for (int t = 0; t < nt; t++) {
            size_t sl = (size_t)t * ne + j;
            G += op.gt[sl];
            EH += op.eq_hi[sl];
            EL += op.eq_lo[sl];
            C += op.count[sl];
            if (op.count[sl] + MELD_UK_ALIGN > cap) stored = 0;
        }
        if (lo[j] == hi[j]) EL = 0; /* the same entries as EH */
        uint64_t r = G >= k ? 0 : k - G;
        fallback[j].needed = 0;
        where[j] = FALLBACK;
        if (r == 0) fallback[j] = (range_job){active[j], hi[j] + 1, 0x7fffffffu, 0, 1};
        else if (r <= EH) { where[j] = AT_HI; T[j] = hi[j]; }
        else if ((r -= EH) <= C) {
            if (stored) { where[j] = AMONG; among[na++] = j; }
            else fallback[j] = (range_job){active[j], clo[j], chi[j], G + EH, 1};
        } else if ((r -= C) <= EL) { where[j] = AT_LO; T[j] = lo[j]; }
        else fallback[j] = (range_job){active[j], 0, lo[j] - 1, G + EH + C + EL, 1};
        rnk[j] = r;
    }

    if (na) {
        /* The exact value among the candidates: each thread histograms its own lists over
         * (lo, hi) (12 bits resolved), the bin holding the rank is gathered from all lists, and a
         * serial selection finishes within it. */
        uint32_t *hist = malloc(((size_t)nt * na * SEL_BINS + (size_t)nt * SEL_WAYS * SEL_BINS) * sizeof *hist);
        if (!hist) return MELD_ERR_OUT_OF_MEMORY;
        uint32_t *tmp = hist + (size_t)nt * na * SEL_BINS;
        int shift[MELD_MAX_MODELS];
        for (size_t q = 0; q < na; q++) shift[q] = range_shift(clo[among[q]], chi[among[q]], SEL_BINS);
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num();
            for (size_t q = 0; q < na; q++) {
                const size_t j = among[q], sl = (size_t)t * ne + j;
                uint32_t *h = hist + ((size_t)t * na + q) * SEL_BINS;
                memset(h, 0, SEL_BINS * sizeof *h);
                hist_range(op.cand[sl], op.count[sl], clo[j], chi[j], shift[q], h, tmp + (size_t)t * SEL_WAYS * SEL_BINS);
            }
        }
        uint32_t blo[MELD_MAX_MODELS], bspan[MELD_MAX_MODELS];
        size_t boff[MELD_MAX_MODELS + 1];
        uint64_t brank[MELD_MAX_MODELS];
        boff[0] = 0;
        for (size_t q = 0; q < na; q++) {
            const size_t j = among[q];
            uint64_t h64[SEL_BINS], above = 0;
            const uint32_t bins = ((chi[j] - clo[j]) >> shift[q]) + 1;
            for (uint32_t b = 0; b < bins; b++) {
                h64[b] = 0;
                for (int t = 0; t < nt; t++) h64[b] += hist[((size_t)t * na + q) * SEL_BINS + b];
            }
            brank[q] = rnk[j];
            uint32_t dg = pick_digit(h64, bins, &brank[q], &above);
            blo[q] = clo[j] + (dg << shift[q]);
            bspan[q] = (uint32_t)(((uint64_t)1 << shift[q]) - 1);
            boff[q + 1] = boff[q] + (size_t)h64[dg];
        }
        /* each thread's part of a bin gets one slot of slack: the gather stores every entry
         * and advances past the kept ones (no branch), so its last store may land one past */
        const size_t slack = (size_t)nt;
        uint32_t *bin = malloc((boff[na] + na * slack + SEL_WAYS * SEL_BINS + 1) * sizeof *bin);
        if (!bin) { free(hist); return MELD_ERR_OUT_OF_MEMORY; }
        uint32_t *seg_hist[MELD_MAX_MODELS];
        for (size_t q = 0; q < na; q++) seg_hist[q] = hist + (size_t)((blo[q] - clo[among[q]]) >> shift[q]);
#define SEG_COUNT(u, q) seg_hist[q][((size_t)(u) * na + (q)) * SEL_BINS]
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num();
            for (size_t q = 0; q < na; q++) {
                const size_t j = among[q], sl = (size_t)t * ne + j;
                size_t at = boff[q] + q * slack;
                for (int u = 0; u < t; u++) at += SEG_COUNT(u, q) + 1;
                const uint32_t *p = op.cand[sl], b0 = blo[q], span = bspan[q];
                for (size_t i = 0, len = op.count[sl]; i < len; i++) {
                    const uint32_t v = p[i];
                    bin[at] = v;
                    at += v - b0 <= span;
                }
            }
        }
        for (size_t q = 0; q < na; q++) {
            uint32_t *first = bin + boff[q] + q * slack, *dst = first + SEG_COUNT(0, q), *src = dst + 1;
            for (int u = 1; u < nt; u++) {
                memmove(dst, src, SEG_COUNT(u, q) * sizeof *dst);
                dst += SEG_COUNT(u, q);
                src += SEG_COUNT(u, q) + 1;
            }
            uint64_t tie;
            T[among[q]] = kth_in_range(first, boff[q + 1] - boff[q], brank[q], &tie, NULL, bin + boff[na] + na * slack + 1);
            rnk[among[q]] = tie;
        }
#undef SEG_COUNT
        free(bin);
        free(hist);
    }

    /* Walk tiles in index order to the tile holding the r-th entry equal to T, then rescan that
     * tile for its index. Tie counts per tile come from the collect pass for T = hi or lo, and
     * from the tile's stretch of the candidate list of the thread that ran it otherwise.
     * Experts finish independently: in parallel when there are several. */
#pragma omp parallel for schedule(static, 1) num_threads(nt < (int)ne ? nt : (int)ne) if (ne > 1)
    for (size_t j = 0; j < ne; j++) {
        if (where[j] == FALLBACK) continue;
        const size_t e = active[j];
        const uint32_t *per_tile = where[j] == AT_HI ? op.tile_hi + j * tiles : where[j] == AT_LO ? op.tile_lo + j * tiles : NULL;
        uint64_t cutoff = n, tie_rank = rnk[j];
        for (size_t tile = 0; tile < tiles; tile++) {
            uint64_t ties = 0;
            if (per_tile) ties = per_tile[tile];
            else {
                const uint32_t *p = op.cand[(size_t)op.tile_thread[tile] * ne + j] + op.tile_start[j * tiles + tile], Tj = T[j];
                for (uint32_t i = 0, c = op.tile_cand[j * tiles + tile]; i < c; i++) ties += p[i] == Tj;
            }
            if (ties >= tie_rank) {
                size_t a = tile * MELD_TILE, b = a + MELD_TILE < n ? a + MELD_TILE : n;
                cutoff = find_tie(s, e, T[j], a, b, tie_rank) + 1;
                break;
            }
            tie_rank -= ties;
        }
        out[e] = (meld_selection){.threshold = T[j], .tie_cutoff = cutoff, .kept = kk[e]};
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
