/* The streaming driver: tiles claimed by the threads of one OpenMP region, a zero-padded tail. */
#include <string.h>
#include "internal.h"

size_t meld_stream_tiles(size_t n) { return (n + MELD_TILE - 1) / MELD_TILE; }

static void run_tile(const meld_stream *s, size_t t, meld_tile_fn fn, void *op) {
    const size_t l0 = t * MELD_TILE, i0 = s->first + l0; /* local and global */
    size_t len = s->n - l0 < MELD_TILE ? s->n - l0 : MELD_TILE;
    size_t body = len & ~(size_t)(MELD_UK_ALIGN - 1), rem = len - body;
    meld_tile tile;
    tile.thread = omp_get_thread_num();
    tile.index = t;
    if (body) {
        tile.i0 = i0;
        tile.n = tile.valid = body;
        for (int j = 0; j < s->nin; j++) {
            tile.in[j] = s->in[j] ? (const char *)s->in[j] + i0 * meld_elem_size(s->in_dt[j]) : NULL;
            tile.in_dt[j] = s->in_dt[j];
        }
        for (int j = 0; j < s->nout; j++) {
            tile.out[j] = s->out[j] ? (char *)s->out[j] + l0 * meld_elem_size(s->out_dt[j]) : NULL;
            tile.out_dt[j] = s->out_dt[j];
        }
        fn(&tile, op);
    }
    if (rem) {
        /* Pad the last partial vector group with zeros, in f32 (int8 stays int8). */
        float inbuf[MELD_STREAM_MAX][MELD_UK_ALIGN];
        float outbuf[4][MELD_UK_ALIGN];
        const size_t base = i0 + body, lbase = l0 + body;
        tile.i0 = base;
        tile.n = MELD_UK_ALIGN;
        tile.valid = rem;
        for (int j = 0; j < s->nin; j++) {
            memset(inbuf[j], 0, sizeof inbuf[j]);
            if (!s->in[j]) { tile.in[j] = NULL; tile.in_dt[j] = s->in_dt[j]; continue; }
            if (s->in_dt[j] == MELD_ELEM_I8) {
                memcpy(inbuf[j], (const int8_t *)s->in[j] + base, rem);
                tile.in_dt[j] = MELD_ELEM_I8;
            } else {
                for (size_t i = 0; i < rem; i++) inbuf[j][i] = meld_load_scalar(s->in[j], s->in_dt[j], base + i);
                tile.in_dt[j] = MELD_F32;
            }
            tile.in[j] = inbuf[j];
        }
        for (int j = 0; j < s->nout; j++) {
            tile.out[j] = s->out[j] ? outbuf[j] : NULL;
            tile.out_dt[j] = s->out_dt[j] == MELD_ELEM_I8 ? MELD_ELEM_I8 : MELD_F32;
        }
        fn(&tile, op);
        for (int j = 0; j < s->nout; j++) {
            if (!s->out[j]) continue;
            if (s->out_dt[j] == MELD_ELEM_I8) { memcpy((int8_t *)s->out[j] + lbase, outbuf[j], rem); continue; }
            /* convert through the scalar ukernel so rounding matches the vector paths */
            float tmp[MELD_UK_ALIGN];
            memcpy(tmp, outbuf[j], sizeof tmp);
            char conv[MELD_UK_ALIGN * 4];
            meld_ukernels_scalar.convert(MELD_UK_ALIGN, (meld_uk_in){tmp, MELD_F32}, conv, s->out_dt[j]);
            memcpy((char *)s->out[j] + lbase * meld_elem_size(s->out_dt[j]), conv, rem * meld_elem_size(s->out_dt[j]));
        }
    }
}

/* Side work (meld_context_set_side_work) is taken only while this many tiles remain unclaimed,
 * so that the thread busy with it does not hold up the end of the pass: about the other thread's
 * time for one 2 MiB piece of output written to the page cache. TIES bf16 e2e, best of 10: 16
 * tiles 0.118 s, 32 and 64 0.117 s, 128 0.133 s (passes of 64 tiles then took none). Tried: a
 * margin in time (the unclaimed tiles at this thread's recent time a tile, against the mean side
 * call), no different in the fastest f32 TIES runs (8 alternated pairs); slow page-cache writes
 * make the waits whatever the margin. */
#define MELD_SIDE_MARGIN 32

/* Tiles [t0, t1) on up to nt threads. Runs of tiles are claimed in turn, about 8 per thread: a
 * thread that loses its core for a while (another process, a busy host) delays only the run it
 * holds, where a static split would hold the pass until that thread had done its half. Runs, not
 * single tiles: threads streaming interleaved 64 KiB tiles ran 10-20% slower. A tile's result
 * does not depend on which thread runs it. */
static void run_tiles(meld_context *ctx, const meld_stream *s, size_t t0, size_t t1, meld_tile_fn fn, void *op) {
    const size_t tiles = t1 - t0;
    int nt = ctx->threads;
    if ((size_t)nt > tiles) nt = (int)tiles;
    if (nt <= 1) {
        for (size_t t = t0; t < t1; t++) run_tile(s, t, fn, op);
        return;
    }
    const size_t run = tiles / (8 * (size_t)nt) > 1 ? tiles / (8 * (size_t)nt) : 1;
    const meld_side_fn side = ctx->side;
    size_t next = t0;
#pragma omp parallel num_threads(nt)
    for (;;) {
        while (side && __atomic_load_n(&next, __ATOMIC_RELAXED) + MELD_SIDE_MARGIN <= t1 &&
               !__atomic_exchange_n(&ctx->side_busy, 1, __ATOMIC_ACQUIRE)) {
            const int did = side(ctx->side_user);
            __atomic_store_n(&ctx->side_busy, 0, __ATOMIC_RELEASE);
            if (!did) break;
        }
        /* runs shrink toward the end (a share of what is left, down to one tile), so that the
         * threads finish together: `meld merge` runs a pass a 1M-element chunk (64 tiles, runs
         * of 4), and at most pass ends one thread waited for the other's last run. TIES 150M
         * parameters, 2 threads, MELD_TIMING kernels (writes included) best of 8 and 6,
         * alternated: bf16 0.181-0.195 -> 0.180-0.184 s, f32 0.248 -> 0.235 s; samples in the
         * OpenMP runtime's wait in the fastest runs 6.6-7.8% -> 5.1-5.5% (bf16). The merge
         * kernels' own benchmark (16M entries) is unchanged. */
        size_t a = __atomic_load_n(&next, __ATOMIC_RELAXED), r;
        do {
            if (a >= t1) break;
            const size_t share = (t1 - a) / (2 * (size_t)nt);
            r = share < run ? (share > 1 ? share : 1) : run;
        } while (!__atomic_compare_exchange_n(&next, &a, a + r, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
        if (a >= t1) break;
        for (size_t t = a; t < a + r && t < t1; t++) run_tile(s, t, fn, op);
    }
}

meld_status meld_stream_run(meld_context *ctx, const meld_stream *s, meld_tile_fn fn, void *op) {
    const size_t tiles = meld_stream_tiles(s->n);
    if (tiles == 0) return MELD_OK;
    /* meld_context_set_window: window by window, each reported once read */
    const size_t per = !ctx->window_done ? tiles : ctx->window / MELD_TILE > 1 ? ctx->window / MELD_TILE : 1;
    for (size_t t0 = 0; t0 < tiles; t0 += per) {
        const size_t t1 = t0 + per < tiles ? t0 + per : tiles;
        run_tiles(ctx, s, t0, t1, fn, op);
        if (ctx->window_done) {
            const size_t end = t1 * MELD_TILE < s->n ? t1 * MELD_TILE : s->n;
            ctx->window_done(ctx->window_user, s->first + t0 * MELD_TILE, end - t0 * MELD_TILE);
        }
    }
    return MELD_OK;
}
