/* Packed expert weights, the grouped matmul (offsets and gather forms) and the fused MoE FFN.
 * The framework (blocking, task list, threading) is here; the arithmetic is the ISA's GEMM
 * microkernel (ukernels/gemm.tpl.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "moe_internal.h"
#include "../device/opencl.h"

/* Blocking: a task is MC rows x NC columns of one expert; inside it, KC-deep slices, each MR-row
 * tile of activations reused across the task's NR-column weight panels (run_task). */
#define GM_KC 256
#define GM_MC_ROWS 96   /* MC: the multiple of MR nearest below (8 blocks of AVX-512's 12 rows) */
#define GM_NC_PANELS 8  /* NC = 8 * NR */
#define GM_COPY_BYTES ((size_t)32 << 20) /* the copy of prefill rows: at most this much at once */

/* element offset of the kc x nr slice of (expert e, k block starting at k0, panel); the pair
 * layout rounds k up to even (blocks before the last are GM_KC, even, long) */
static inline size_t panel_offset(const meld_moe_weights *w, size_t e, size_t k0, size_t panel) {
    size_t kc = w->K - k0 < GM_KC ? w->K - k0 : GM_KC, K = w->K;
    if (w->pairs) { kc += kc & 1; K += K & 1; }
    return (e * K + k0) * w->panels * w->nr + panel * kc * w->nr;
}

void meld_bf16_gemm_dot__avx512bf16(size_t kc, const float *const *a, const void *b, const void *b_next, size_t pf_lines,
                                    int b_dt, float *const *c, size_t mr, size_t nr, int accumulate);

/* AVX512-BF16 dot products for bf16 weights on the AVX-512 path when MELD_BF16_DOT=1. Opt-in:
 * on the Zen 5 machine this was measured on, VDPBF16PS (2 k-steps an instruction, activations
 * rounded to bf16) ran at 231 GFLOP/s against 324 for widened bf16 in the f32 FMA kernel. */
static int use_bf16_dot(const meld_context *ctx, meld_dtype dtype) {
#if defined(__x86_64__)
    const char *env = getenv("MELD_BF16_DOT");
    if (!env || strcmp(env, "1")) return 0;
    __builtin_cpu_init();
    return dtype == MELD_BF16 && (ctx->isa == MELD_ISA_AVX512 || ctx->isa == MELD_ISA_AVX512BF16) && __builtin_cpu_supports("avx512bf16") &&
           ctx->uk->gemm_nr == 32;
#else
    (void)ctx; (void)dtype;
    return 0;
#endif
}

const char *meld_moe_weights_kernel(const meld_moe_weights *w) {
    if (!w) return "";
    if (w->device) return "opencl";
    return w->pairs ? "avx512bf16-dot" : meld_isa_name(w->isa);
}

meld_status meld_moe_weights_pack(meld_context *ctx, const void *w, meld_dtype dtype, size_t E, size_t N, size_t K,
                                  size_t ld, meld_moe_weights **out) {
    if (!ctx || !out || !w) return MELD_ERR_NULL_POINTER;
    *out = NULL;
    if (!meld_dtype_valid(dtype)) return MELD_ERR_UNSUPPORTED_DTYPE;
    if (E == 0 || N == 0 || K == 0 || ld < K) return MELD_ERR_INVALID_ARGUMENT;
    if (meld_cl_active(ctx)) { /* the device keeps the dense layout; its kernel tiles it in local memory */
        meld_moe_weights *p = calloc(1, sizeof *p);
        if (!p) return MELD_ERR_OUT_OF_MEMORY;
        *p = (meld_moe_weights){.isa = ctx->isa, .dtype = dtype, .E = E, .N = N, .K = K};
        meld_status s = meld_cl_weights_upload(ctx, w, dtype, E, N, K, ld, p);
        if (s != MELD_OK) { free(p); return s; }
        *out = p;
        return MELD_OK;
    }
    const size_t nr = ctx->uk->gemm_nr, panels = (N + nr - 1) / nr, es = meld_dtype_size(dtype);
    meld_moe_weights *p = calloc(1, sizeof *p);
    if (!p) return MELD_ERR_OUT_OF_MEMORY;
    *p = (meld_moe_weights){.isa = ctx->isa, .dtype = dtype, .E = E, .N = N, .K = K, .nr = nr, .panels = panels,
                            .pairs = use_bf16_dot(ctx, dtype)};
    p->bytes = E * panels * (K + (p->pairs ? K & 1 : 0)) * nr * es;
    p->data = meld_alloc_large(p->bytes);
    if (!p->data) { free(p); return MELD_ERR_OUT_OF_MEMORY; }
#pragma omp parallel for schedule(static) num_threads(ctx->threads)
    for (size_t q = 0; q < E * panels; q++) {
        const size_t e = q / panels, panel = q % panels, n0 = panel * nr;
        const char *src = (const char *)w + e * N * ld * es;
        for (size_t k0 = 0; k0 < K; k0 += GM_KC) {
            const size_t kc = K - k0 < GM_KC ? K - k0 : GM_KC;
            char *dst = (char *)p->data + panel_offset(p, e, k0, panel) * es;
            const size_t kcp = p->pairs ? kc + (kc & 1) : kc;
            for (size_t k = 0; k < kcp; k++)
                for (size_t j = 0; j < nr; j++) {
                    /* pairs: element (k, j) sits at ((k / 2) * nr + j) * 2 + k % 2 */
                    size_t at = p->pairs ? ((k / 2) * nr + j) * 2 + (k & 1) : k * nr + j;
                    char *d = dst + at * es;
                    if (n0 + j < N && k < kc) memcpy(d, src + ((n0 + j) * ld + k0 + k) * es, es);
                    else memset(d, 0, es);
                }
        }
    }
    *out = p;
    return MELD_OK;
}

meld_status meld_moe_weights_destroy(meld_moe_weights *w) {
    if (!w) return MELD_ERR_NULL_POINTER;
    meld_cl_weights_release(w);
    free(w->data);
    free(w);
    return MELD_OK;
}

size_t meld_moe_weights_bytes(const meld_moe_weights *w) { return w ? w->bytes : 0; }

/* ---- the grouped core ------------------------------------------------------------------------
 * rows of expert e are positions start[e] .. start[e+1]-1 of arow/crow (row pointers, so both
 * forms and the FFN's sorted intermediates share it). */
typedef struct gm_task { uint32_t e, m0, n0, row0; } gm_task; /* row0: the unit's first row in its phase's copy */
enum gm_copy { COPY_NONE, COPY_ROWS, COPY_PACKED };

/* what the tasks of one call share */
typedef struct gm_call {
    const meld_ukernels *uk;
    meld_gemm_ukernel gemm;
    const meld_moe_weights *w;
    const size_t *start;
    const float *const *arow;
    float *const *crow;
    const float *copy;
    size_t MR, MC, nc, ldp;
    enum gm_copy mode;
} gm_call;

/* rows of the unit (expert e, row block at m0): MC, or fewer in the expert's last block */
static size_t unit_rows(const gm_call *g, size_t e, size_t m0) {
    const size_t left = g->start[e + 1] - g->start[e] - m0;
    return left < g->MC ? left : g->MC;
}

/* Row tile i of a unit of `rows` rows: *off rows in, *mr long. MR-row tiles, but a last tile of
 * t < 4 rows (too few accumulators to hide the FMA latency: it takes a 4-row block's time)
 * shares the last MR + t rows evenly with the tile before it (AVX2: 6 + 2 rows as 4 + 4, 6 + 1
 * as 3 + 4, 6 + 3 as 4 + 5; AVX-512: 12 + 1 as 6 + 7). Splitting every unit evenly measured
 * slower where no tail was short (AVX2, one core, in cache: 64 rows an expert 2.5% slower as
 * 6 x 9 + 5 x 2 than as 6 x 10 + 4): per row, 5-row blocks run below 6-row ones. The bf16 dot
 * kernel (pairs) has blocks of 1, 2, 4 and 8 rows only, and keeps MR-row tiles. */
static void row_tile(const gm_call *g, size_t rows, size_t i, size_t *off, size_t *mr) {
    const size_t MR = g->MR, tiles = (rows + MR - 1) / MR, last = rows - (tiles - 1) * MR;
    if (g->w->pairs || MR < 6 || tiles < 2 || last >= 4 || i + 2 < tiles) {
        *off = i * MR;
        *mr = rows - *off < MR ? rows - *off : MR;
        return;
    }
    const size_t two = MR + last, base = (tiles - 2) * MR;
    *off = base + (i + 2 == tiles ? 0 : two / 2);
    *mr = i + 2 == tiles ? two / 2 : two - two / 2;
}

/* A task of few rows is bound by reading its weights, one of many rows by FMAs. Where a phase
 * has both (skewed routing: a few busy experts, many with a handful of rows), running them side
 * by side overlaps the weight streaming with the arithmetic; in task order, all threads would
 * stream the same tail of small experts together while the FMA units idle. Light: fewer rows
 * than the FLOPs a core does per byte it can stream (~10 f32 FLOPs/byte for one core of two on
 * the Zen 5 machine measured: ~200 GFLOP/s against ~20 GB/s), per weight element read. */
#define GM_FLOPS_PER_BYTE 10
static int rows_light(const gm_call *g, size_t rows) {
    return 2 * rows < GM_FLOPS_PER_BYTE * meld_dtype_size(g->w->dtype); /* FLOPs, bytes per weight element */
}
static int task_light(const gm_call *g, gm_task t) { return rows_light(g, unit_rows(g, t.e, t.m0)); }

/* A prefill unit of this few rows runs in decode order (run_decode_task: its rows read in place,
 * not copied), where its weights stream through every row tile's steps rather than the first
 * tile's: at most the ISA's gemm_stream_flops_per_byte (AVX2 and scalar 16: f32 32 rows, bf16
 * and f16 16; AVX-512 none, not measured there). AVX2 on Zen 3, 2 threads, N 1536, K 2048,
 * alternated: 128 experts x 24 rows 3-16% faster, x 32 rows 2-15% (7 pairs of 7), x 40 the
 * same, 64 x 48 rows 3% slower; random routing, 8 rows an expert on average (light units
 * mostly): mixtral* T = 32 (N 7168, K 4096) 40.5-43.9 -> 31.0-33.8 ms, qwen3 T = 128
 * 66.7-71.8 -> 57.0-59.1. bf16 weights (16 rows at most): 128 x 12 rows 70.4-76.3 -> 58.7-59.8
 * ms, x 16 rows 83.5-108.9 -> 78.1-84.5. */
static int rows_streamed(const gm_call *g, size_t rows) {
    return 2 * rows <= (size_t)g->uk->gemm_stream_flops_per_byte * meld_dtype_size(g->w->dtype);
}

/* The next panel's lines to prefetch: from its first line, count of them (none: NULL, 0). */
typedef struct gm_pf { const char *p; size_t lines; } gm_pf;

/* The panel a task reads after (k block k0, panel at column n0), in its order (its panels of
 * columns t.n0 .. n1, k block by k block), or none at its end: the one its calls prefetch. */
static gm_pf panel_after(const gm_call *g, gm_task t, size_t n1, size_t k0, size_t n0) {
    const meld_moe_weights *w = g->w;
    const size_t NR = w->nr, es = meld_dtype_size(w->dtype);
    if ((n0 += NR) >= n1) { n0 = t.n0; if ((k0 += GM_KC) >= w->K) return (gm_pf){NULL, 0}; }
    const uintptr_t p = (uintptr_t)w->data + panel_offset(w, t.e, k0, n0 / NR) * es;
    const size_t bytes = panel_offset(w, t.e, k0, n0 / NR + 1) * es - (p - (uintptr_t)w->data);
    return (gm_pf){(const char *)(p & ~(uintptr_t)63), ((p & 63) + bytes + 63) / 64};
}

/* One prefill task: rows m0 .. m0+MC of expert e times columns n0 .. n0+nc, in KC-deep slices. Within a
 * slice, one MR-row tile of activations (~12 KiB, in L1) is reused across the task's NR panels,
 * whose KC x NC weights (~256 KiB) stay in L2 after the first row tile brings them in. The other
 * order (one 32 KiB weight panel held in L1 across the row tiles, activations streamed from L2)
 * shared L1 with the activation stream: 384 x 2048 x 2048 on one core, 82-88% -> 89-90% of
 * peak FMA with the unrolled microkernel loop. */
static void run_task(const gm_call *g, gm_task t) {
    const meld_moe_weights *w = g->w;
    const size_t MR = g->MR, N = w->N, K = w->K, NR = w->nr, es = meld_dtype_size(w->dtype);
    const size_t m1 = t.m0 + unit_rows(g, t.e, t.m0);
    const size_t n1 = t.n0 + g->nc < N ? t.n0 + g->nc : N;
    const float *a[16];
    float *c[16];
    /* Where the ISA asks for it (gemm_spread_prefetch), a heavy task of several row tiles
     * spreads prefetches of its next k block's weights (to L2) over this block's calls after
     * the first row tile, which would otherwise wait on memory at every panel (its own prefetch
     * runs one panel ahead): as a burst before each call (AVX2, whose kernel prefetches to
     * L1), or through the call's own steps (AVX-512, whose kernel prefetches to L2). On the
     * Zen 5 machine (AVX-512), 2 threads, alternated in one process, best of 20-30: dense
     * 1536 x 4096 x 2048 67.8 -> 66.6 ms (median 76.3 -> 73.6), qwen3 T = 512 uniform 92.3 ->
     * 81.7 (median 100.4 -> 94.6), zipf 92.6 -> 90.8, olmoe T = 512 99.4 -> 94.9, mixtral*
     * T = 128 50.8 -> 45.9, qwen3 T = 2048 289.7 -> 280.7; bf16 weights (half the bytes to
     * stream) within 2% either way: qwen3 and olmoe T = 512 1-2% slower in 3 runs, dense and
     * mixtral* T = 512 all-to-one 1% faster. The bursts there measured no
     * different from none, and in-kernel L1 prefetches on AVX2 (same machine) 2-4% slower than
     * its bursts. Also tried there, no clear gain (within 3% either way over 6 cases): spreading
     * over the first row tile's calls too, and a task's last k block prefetching the first of
     * the next task (claimed one ahead). AVX2 on Zen 3, mixtral T = 512 all-to-one, builds
     * alternated 5 times: 2 threads 4-10% faster in every pair (0.89-0.96x -> 0.91-1.08x
     * OpenBLAS), 1 thread ~4% (4 pairs of 5). Light tasks are left as they were: with the
     * spread, qwen3 T = 128 read ~5% slower in 2 (noisy) pairs (on AVX2 they now run in decode
     * order: rows_streamed). Tried on qwen3 T = 512 uniform
     * (32 rows an expert, one thread, 3 alternated rounds), no different: prefetching the next
     * task's first k block in this one's last (tasks claimed one ahead), and the second row
     * tile's in-loop prefetch in place of the bursts; the spread itself gains ~1% there. On AVX2
     * that case too runs in decode order now. */
    const size_t rows = m1 - t.m0, tiles = (rows + MR - 1) / MR, panels = (n1 - t.n0 + NR - 1) / NR;
    const int spread = tiles > 1 && !task_light(g, t) ? g->uk->gemm_spread_prefetch : MELD_SPREAD_NONE;
    for (size_t k0 = 0; k0 < K; k0 += GM_KC) {
        const size_t kc = K - k0 < GM_KC ? K - k0 : GM_KC;
        const char *pf = NULL, *pf_end = NULL;
        size_t pf_step = 0; /* bytes a call */
        if (spread && k0 + GM_KC < K) { /* the next k block's panels of the task */
            pf = (const char *)w->data + panel_offset(w, t.e, k0 + GM_KC, t.n0 / NR) * es;
            pf_end = (const char *)w->data + panel_offset(w, t.e, k0 + GM_KC, t.n0 / NR + panels) * es;
            const size_t lines = (size_t)(pf_end - pf + 63) / 64, calls = (tiles - 1) * panels;
            pf_step = (lines + calls - 1) / calls * 64;
        }
        for (size_t i = 0; i < tiles; i++) {
            size_t off, mr;
            row_tile(g, rows, i, &off, &mr);
            const size_t m = t.m0 + off;
            if (g->mode != COPY_PACKED)
                for (size_t r = 0; r < MR; r++) {
                    const size_t rr = m + (r < mr ? r : mr - 1);
                    a[r] = g->mode == COPY_ROWS ? g->copy + (t.row0 + rr - t.m0) * g->ldp + k0 : g->arow[g->start[t.e] + rr] + k0;
                }
            for (size_t n0 = t.n0; n0 < n1; n0 += NR) {
                const size_t panel = n0 / NR, nr = n1 - n0 < NR ? n1 - n0 : NR;
                const char *b = (const char *)w->data + panel_offset(w, t.e, k0, panel) * es;
                /* the first row tile prefetches the panel the task reads next */
                gm_pf bn = i ? (gm_pf){NULL, 0} : panel_after(g, t, n1, k0, n0);
                for (size_t r = 0; r < mr; r++) c[r] = g->crow[g->start[t.e] + m + r] + n0;
                if (pf && i && pf < pf_end) {
                    const size_t left = (size_t)(pf_end - pf + 63) / 64, lines = left < pf_step / 64 ? left : pf_step / 64;
                    if (spread == MELD_SPREAD_IN_KERNEL) bn = (gm_pf){pf, lines}; /* the call's own steps prefetch them */
                    else
                        for (size_t l = 0; l < lines; l++) __builtin_prefetch(pf + l * 64, 0, 1);
                    pf += lines * 64;
                }
                if (g->mode == COPY_PACKED) /* the tile's panel: MR rows of the copy, at k0 */
                    g->uk->gemm_packed(kc, g->copy + (t.row0 + i * MR) * K + k0 * MR, b, bn.p, bn.lines, w->dtype, c, mr, nr, k0 > 0);
                else
                    g->gemm(kc, a, b, bn.p, bn.lines, w->dtype, c, mr, nr, k0 > 0);
            }
        }
    }
}

/* A decode task (few rows, read in place): panel by panel, each panel's row tiles while it is in
 * L1, the calls prefetching the task's next panel. More than one tile (AVX2's 6-row block, 7-8
 * rows) splits the rows evenly (row_tile): 8 as 4 + 4, each tile with 8 accumulators. The prefill order
 * (run_task: a tile across all panels, the first tile streaming them) left memory idle during
 * the later tiles, and a 2-row tile's 4 accumulators latency-bound. AVX2 on Zen 3, T = 8
 * all-to-one, 3 alternated runs: mixtral* 10.1-10.8 -> 8.7-9.0 ms, qwen3 4.1-4.6 -> 4.0-4.1,
 * olmoe 5.6-6.4 -> 5.0-6.1.
 * The tiles split the next panel's prefetch, each its share spread over its steps: the whole
 * panel in the first tile's steps asked for lines faster than memory delivers them, stalling
 * that tile's FMAs, and the later tiles asked for nothing, so the weight stream and the
 * arithmetic took turns. 8 rows x 8 experts, N 1536, K 2048, 2 threads, 4 alternated pairs:
 * 3.7-3.8 -> 2.8-3.3 ms; meld-bench T = 8 all-to-one, 2 alternated runs: qwen3 3.66-3.91 ->
 * 3.18-3.53 ms, olmoe 4.93-5.22 -> 4.49-4.53, mixtral* 8.74-9.23 -> 7.35-7.93. (Before, each
 * later tile prefetched the whole panel again, which measured faster than none or than the
 * panel after it.) */
static void run_decode_task(const gm_call *g, gm_task t) {
    const meld_moe_weights *w = g->w;
    const size_t MR = g->MR, N = w->N, K = w->K, NR = w->nr, es = meld_dtype_size(w->dtype);
    const size_t rows = unit_rows(g, t.e, t.m0), tiles = (rows + MR - 1) / MR;
    const size_t n1 = t.n0 + g->nc < N ? t.n0 + g->nc : N;
    const float *a[16];
    float *c[16];
    for (size_t k0 = 0; k0 < K; k0 += GM_KC) {
        const size_t kc = K - k0 < GM_KC ? K - k0 : GM_KC;
        for (size_t n0 = t.n0; n0 < n1; n0 += NR) {
            const size_t nr = n1 - n0 < NR ? n1 - n0 : NR;
            const char *b = (const char *)w->data + panel_offset(w, t.e, k0, n0 / NR) * es;
            const gm_pf bn = panel_after(g, t, n1, k0, n0);
            const size_t share = (bn.lines + tiles - 1) / tiles; /* lines a tile prefetches */
            for (size_t i = 0; i < tiles; i++) {
                size_t off, mr;
                row_tile(g, rows, i, &off, &mr);
                const size_t m = t.m0 + off;
                for (size_t r = 0; r < MR; r++) a[r] = g->arow[g->start[t.e] + m + (r < mr ? r : mr - 1)] + k0;
                for (size_t r = 0; r < mr; r++) c[r] = g->crow[g->start[t.e] + m + r] + n0;
                const size_t first = i * share < bn.lines ? i * share : bn.lines;
                const size_t lines = bn.lines - first < share ? bn.lines - first : share;
                g->gemm(kc, a, b, bn.p ? bn.p + first * 64 : NULL, lines, w->dtype, c, mr, nr, k0 > 0);
            }
        }
    }
}

/* estimated cost in FLOP-equivalents: the larger of the FMAs and the weight bytes streamed */
static double task_cost(const gm_call *g, gm_task t) {
    const size_t ur = unit_rows(g, t.e, t.m0);
    const size_t cols = g->w->N - t.n0 < g->nc ? g->w->N - t.n0 : g->nc;
    const double flops = 2.0 * (double)(ur * cols * g->w->K);
    const double bytes = (double)(cols * g->w->K * meld_dtype_size(g->w->dtype));
    return flops > GM_FLOPS_PER_BYTE * bytes ? flops : GM_FLOPS_PER_BYTE * bytes;
}

/* Puts a phase's heavy tasks before its light ones (each in their order); returns where the
 * light ones start and how many threads should start on them. */
static size_t split_phase(const gm_call *g, gm_task *t, size_t n, gm_task *tmp, int threads, int *light_threads) {
    size_t h = 0, l = 0;
    double hc = 0, lc = 0;
    for (size_t i = 0; i < n; i++) {
        if (task_light(g, t[i])) { tmp[l++] = t[i]; lc += task_cost(g, t[i]); }
        else { t[h++] = t[i]; hc += task_cost(g, t[i]); }
    }
    memcpy(t + h, tmp, l * sizeof *t);
    long nl = lround(threads * lc / (hc + lc > 0 ? hc + lc : 1));
    *light_threads = (int)(nl < 1 ? 1 : nl > threads - 1 ? threads - 1 : nl);
    return h;
}

/* Orders a phase's tasks (t[0..n), each unit's ncol column tasks consecutive) so that up to G
 * consecutive heavy units of one expert take each column tile side by side: the G threads then
 * work on the same weights at once, which come from memory once for the group (from L3 for the
 * others) where each thread streamed its own column tile before. A dense expert's weights were
 * read once per MC rows; now once per G row blocks. AVX2 on Zen 3, 2 threads,
 * 4096 rows x 7168 x 4096 (mixtral* T = 2048 all-to-one), 4 alternated rounds: 1380-1627 ms
 * -> 1321-1354 ms, 0.84-0.94x -> 0.98-1.01x OpenBLAS. */
static void group_units(const gm_call *g, gm_task *t, size_t n, gm_task *tmp, size_t G, size_t ncol) {
    size_t q = 0;
    for (size_t i = 0; i < n;) {
        size_t u = 1; /* units in this group */
        if (!task_light(g, t[i]))
            while (u < G && i + (u + 1) * ncol <= n && t[i + u * ncol].e == t[i].e && !task_light(g, t[i + u * ncol])) u++;
        for (size_t c = 0; c < ncol; c++)
            for (size_t j = 0; j < u; j++) tmp[q++] = t[i + j * ncol + c];
        i += u * ncol;
    }
    memcpy(t, tmp, n * sizeof *t);
}

static meld_status grouped_core(meld_context *ctx, const meld_moe_weights *w, const size_t *start,
                                const float *const *arow, float *const *crow) {
    const meld_ukernels *uk = ctx->uk;
    gm_call g = {.uk = uk, .gemm = w->pairs ? meld_bf16_gemm_dot__avx512bf16 : uk->gemm, .w = w, .start = start,
                 .arow = arow, .crow = crow};
    /* the AVX512-BF16 dot kernel has its own 8-row block */
    /* Rows per task: each task streams its column tile's K x nc weights once, so those are read
     * once per MC rows. A fixed row count, not a fixed number of MR blocks: AVX2's 6-row blocks
     * made 48-row tasks, which read a dense expert's weights twice as often as AVX-512's 96
     * (mixtral T=512 all-to-one on Zen 3: 0.89-0.98x OpenBLAS before). The AVX512-BF16 dot
     * kernel keeps 8 blocks of its 8 rows. */
    const size_t MR = w->pairs ? 8 : uk->gemm_mr, NR = w->nr, MC = w->pairs ? 8 * MR : GM_MC_ROWS / MR * MR, N = w->N, K = w->K;
    size_t rows_max = 0, active = 0, ntasks = 0, nunits = 0;
    for (size_t e = 0; e < w->E; e++) {
        size_t r = start[e + 1] - start[e];
        rows_max = r > rows_max ? r : rows_max;
        active += r > 0;
    }
    /* Decode: few rows per expert (the 1-8, even where MR is 6; or one row block where
     * MR is larger), read in place. Each task streams its weights, one
     * contiguous run of nc columns per k block (run_decode_task); the widest tiles that still
     * give every thread several tasks. Wide runs stream better: qwen3 T=8 "one" (8 experts of
     * 8 rows) at ~78 GB/s triad, 2 NR-wide tiles 71% of triad, 4 NR 77%, 8 NR 82%. */
    size_t nc = GM_NC_PANELS * NR;
    const int decode = rows_max <= (MR > 8 ? MR : 8);
    if (decode)
        while (nc > NR && active * ((N + nc - 1) / nc) < 8 * (size_t)ctx->threads) nc /= 2;
    for (size_t e = 0; e < w->E; e++) {
        size_t r = start[e + 1] - start[e];
        if (r) ntasks += ((r + MC - 1) / MC) * ((N + nc - 1) / nc);
        nunits += (r + MC - 1) / MC;
    }
    if (!ntasks) return MELD_OK;
    /* Prefill copies the rows once, in phases of whole (expert, row block) units of at most
     * GM_COPY_BYTES (each phase copied in parallel, then its tasks run), and every column task
     * reads the copy:
     *  - packed (the f32 FMA kernel): each MR-row tile as a k-major kc x MR panel, so the kernel
     *    broadcasts A from one pointer (MR row pointers spill and are reloaded every k step);
     *    tiles are padded to MR rows with copies of their last row;
     *  - rows (the bf16 dot kernel, rows on the 4 KiB grid): a padded stride of K + 16 floats.
     *    Row strides of K = 2048 or 4096 floats put the MR rows read at each k into the same
     *    cache sets, where they evict each other and the B panel.
     * Decode rows are too few to gain. */
    enum gm_copy mode = COPY_NONE;
    if (!decode && start[w->E] > 1) {
        if (!w->pairs) mode = COPY_PACKED;
        else {
            int grid = 1;
            for (size_t r = 1; grid && r < start[w->E] && r < 8; r++) grid = (((uintptr_t)arow[r] ^ (uintptr_t)arow[0]) & 4095) == 0;
            if (grid) mode = COPY_ROWS;
        }
    }
    const int pack = mode != COPY_NONE;
    const size_t ldp = mode == COPY_PACKED ? K : K + 16; /* floats per copied row (a packed tile: MR of them) */
    g.MR = MR; g.MC = MC; g.nc = nc; g.ldp = ldp; g.mode = mode;
    size_t copy_bytes = GM_COPY_BYTES;
    const char *env = getenv("MELD_MOE_COPY_BYTES"); /* tests: a small value copies in many phases */
    if (env && *env) copy_bytes = strtoull(env, NULL, 10);
    const size_t cap_rows = copy_bytes / (ldp * sizeof(float)) > MC ? copy_bytes / (ldp * sizeof(float)) : MC;
    /* Units (expert, row block) go to phases in two interleaved lists, heavy and light units
     * each in (expert, row block) order, taken in proportion to their rows, so every phase has
     * its share of both (see split_phase); a unit's column tasks are consecutive (until
     * group_units interleaves those of neighbouring units). phase[f] is the first task of phase
     * f; unit rows are numbered within their phase (row0), packed units rounded up to whole
     * tiles. */
    gm_task *tasks = malloc(2 * ntasks * sizeof *tasks); /* and a partition buffer */
    size_t *phase = malloc(5 * (ntasks + 1) * sizeof *phase); /* and phase_rows, split, cursors (2 a phase) */
    int *light_threads = malloc((ntasks + 1) * sizeof *light_threads);
    gm_task *units = malloc(nunits * sizeof *units);
    const float **src = pack ? malloc((start[w->E] + nunits * MR) * sizeof *src) : NULL; /* copy sources, by phase row */
    if (!tasks || !phase || !light_threads || !units || (pack && !src)) {
        free(tasks); free(phase); free(light_threads); free(units); free(src);
        return MELD_ERR_OUT_OF_MEMORY;
    }
    size_t *phase_rows = phase + (ntasks + 1), *split = phase_rows + (ntasks + 1), *cursor = split + (ntasks + 1);
    size_t nh = 0, nl = nunits, rows_h = 0, rows_l = 0; /* heavy units fill units[] from the front, light from the back */
    for (size_t e = 0; e < w->E; e++)
        for (size_t m0 = 0; m0 < start[e + 1] - start[e]; m0 += MC) {
            const size_t mr = unit_rows(&g, e, m0);
            if (rows_light(&g, mr)) { units[--nl] = (gm_task){(uint32_t)e, (uint32_t)m0, 0, 0}; rows_l += mr; }
            else { units[nh++] = (gm_task){(uint32_t)e, (uint32_t)m0, 0, 0}; rows_h += mr; }
        }
    size_t q = 0, nphase = 0, prow = 0, srow = 0, hi = 0, li = nunits, taken_h = 0, taken_l = 0;
    phase[0] = 0;
    while (hi < nh || li > nl) {
        /* the list that is behind in its share of rows (light units are read back to front) */
        const int heavy = li == nl || (hi < nh && taken_h * rows_l <= taken_l * rows_h);
        const gm_task u = heavy ? units[hi++] : units[--li];
        const size_t mr = unit_rows(&g, u.e, u.m0);
        /* copied rows (streamed units read theirs in place) */
        const size_t rows = !pack || rows_streamed(&g, mr) ? 0 : mode == COPY_PACKED ? (mr + MR - 1) / MR * MR : mr;
        *(heavy ? &taken_h : &taken_l) += mr;
        if (pack && prow + rows > cap_rows) { phase_rows[nphase] = prow; phase[++nphase] = q; prow = 0; }
        if (mode == COPY_PACKED) /* each tile's rows, padded to MR with its last row */
            for (size_t i = 0; i < rows / MR; i++) {
                size_t off, tr;
                row_tile(&g, mr, i, &off, &tr);
                for (size_t r = 0; r < MR; r++) src[srow++] = arow[start[u.e] + u.m0 + off + (r < tr ? r : tr - 1)];
            }
        else
            for (size_t r = 0; r < rows; r++) src[srow++] = arow[start[u.e] + u.m0 + r];
        for (size_t n0 = 0; n0 < N; n0 += nc) tasks[q++] = (gm_task){u.e, u.m0, (uint32_t)n0, (uint32_t)prow};
        prow += rows;
    }
    phase_rows[nphase] = prow;
    phase[++nphase] = q;
    free(units);
    for (size_t f = 0; f < nphase; f++) {
        /* decode (no copy): every task streams its weights; nothing to overlap or share */
        light_threads[f] = 0;
        if (mode != COPY_NONE && ctx->threads > 1) /* groups of one unit: the order as it is */
            group_units(&g, tasks + phase[f], phase[f + 1] - phase[f], tasks + ntasks, (size_t)ctx->threads, (N + nc - 1) / nc);
        split[f] = mode == COPY_NONE ? phase[f + 1]
                                     : phase[f] + split_phase(&g, tasks + phase[f], phase[f + 1] - phase[f], tasks + ntasks,
                                                              ctx->threads, &light_threads[f]);
        cursor[2 * f] = phase[f];
        cursor[2 * f + 1] = split[f];
    }
    /* no buffer where every unit is streamed (srow: the rows copied) */
    float *copy = pack && srow ? meld_scratch(ctx, cap_rows * ldp * sizeof(float)) : NULL;
    if (pack && srow && !copy) { free(tasks); free(phase); free(light_threads); free(src); return MELD_ERR_OUT_OF_MEMORY; }
    g.copy = copy;
#pragma omp parallel num_threads(ctx->threads) if (ntasks > 1)
    {
        const float **srcp = src;
        for (size_t f = 0; f < nphase; f++) {
            if (mode == COPY_ROWS) {
#pragma omp for schedule(static)
                for (size_t r = 0; r < phase_rows[f]; r++) memcpy(copy + r * ldp, srcp[r], K * sizeof(float));
            } else if (mode == COPY_PACKED) {
#pragma omp for schedule(static)
                for (size_t tile = 0; tile < phase_rows[f] / MR; tile++) {
                    const float *const *s = srcp + tile * MR;
                    float *d = copy + tile * MR * K;
                    /* a cache line of each row at a time: rows on the 4 KiB grid share cache
                     * sets, and reading them element by element missed on every load */
                    float t[16][16];
                    for (size_t kb = 0; kb < K; kb += 16) {
                        const size_t kw = K - kb < 16 ? K - kb : 16;
                        if (kw == 16) for (size_t r = 0; r < MR; r++) memcpy(t[r], s[r] + kb, sizeof t[r]);
                        else for (size_t r = 0; r < MR; r++) memcpy(t[r], s[r] + kb, kw * sizeof(float));
                        for (size_t k = 0; k < kw; k++)
                            for (size_t r = 0; r < MR; r++) d[(kb + k) * MR + r] = t[r][k];
                    }
                }
            }
            srcp += pack ? phase_rows[f] : 0;
            /* Tasks go to whichever thread is free (a shared cursor), so a thread slowed by a
             * neighbour does not hold the others at the phase's end; with heavy and light tasks
             * (split_phase), each thread starts on its own list (0 heavy, 1 light), then helps
             * with the other. Any thread may compute any task: the bits do not change. */
            const int own = omp_get_thread_num() >= omp_get_num_threads() - light_threads[f];
            const size_t end[2] = {split[f], phase[f + 1]};
            for (int l = own, tries = 0; tries < 2;) {
                const size_t i = __atomic_fetch_add(&cursor[2 * f + l], 1, __ATOMIC_RELAXED);
                if (i < end[l]) (decode || rows_streamed(&g, unit_rows(&g, tasks[i].e, tasks[i].m0)) ? run_decode_task : run_task)(&g, tasks[i]);
                else { l ^= 1; tries++; }
            }
#pragma omp barrier
        }
    }
    free(tasks); free(phase); free(light_threads); free(src);
    return MELD_OK;
}

static meld_status check_weights(meld_context *ctx, const meld_moe_weights *w) {
    if (!w) return MELD_ERR_NULL_POINTER;
    if (meld_cl_active(ctx) != (w->device != NULL) || (w->device && w->owner != ctx)) {
        meld_set_error(ctx, "expert weights were packed for another device: pack them with this context");
        return MELD_ERR_INVALID_ARGUMENT;
    }
    if (w->isa != ctx->isa) {
        meld_set_error(ctx, "weights were packed for %s, this context runs %s: pack them with this context",
                       meld_isa_name(w->isa), meld_isa_name(ctx->isa));
        return MELD_ERR_INVALID_ARGUMENT;
    }
    return MELD_OK;
}

meld_status meld_grouped_matmul(meld_context *ctx, const float *x, size_t ldx, const int32_t *offsets,
                                const meld_moe_weights *w, float *y, size_t ldy) {
    if (!ctx || !offsets) return MELD_ERR_NULL_POINTER;
    MELD_TRY(check_weights(ctx, w));
    if (offsets[0] != 0) return MELD_ERR_INVALID_ARGUMENT;
    for (size_t e = 0; e < w->E; e++)
        if (offsets[e + 1] < offsets[e]) return MELD_ERR_INVALID_ARGUMENT;
    const size_t M = (size_t)offsets[w->E];
    if (M && (!x || !y)) return MELD_ERR_NULL_POINTER;
    if (ldx < w->K || ldy < w->N) return MELD_ERR_INVALID_ARGUMENT;
    size_t *start = malloc((w->E + 1) * sizeof *start);
    const float **a = malloc((M + 1) * sizeof *a);
    float **c = malloc((M + 1) * sizeof *c);
    meld_status st = MELD_ERR_OUT_OF_MEMORY;
    if (start && a && c && meld_cl_active(ctx)) {
        int32_t *rows = (int32_t *)a; /* row r at position r */
        for (size_t e = 0; e <= w->E; e++) start[e] = (size_t)offsets[e];
        for (size_t r = 0; r < M; r++) rows[r] = (int32_t)r;
        st = meld_cl_grouped(ctx, w, start, rows, x, ldx, M, rows, y, ldy, M);
    } else if (start && a && c) {
        for (size_t e = 0; e <= w->E; e++) start[e] = (size_t)offsets[e];
        for (size_t r = 0; r < M; r++) { a[r] = x + r * ldx; c[r] = y + r * ldy; }
        st = grouped_core(ctx, w, start, a, c);
    }
    free(start); free(a); free(c);
    return st;
}

meld_status meld_grouped_matmul_gather(meld_context *ctx, const float *x, size_t M, size_t ldx, const int32_t *ids,
                                       const meld_moe_weights *w, float *y, size_t ldy) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    MELD_TRY(check_weights(ctx, w));
    if (M && (!x || !y || !ids)) return MELD_ERR_NULL_POINTER;
    if (ldx < w->K || ldy < w->N) return MELD_ERR_INVALID_ARGUMENT;
    meld_moe_plan *plan;
    MELD_TRY(meld_moe_plan_create(ctx, ids, M, 1, w->E, &plan));
    const int32_t *off = meld_moe_plan_offsets(plan), *order = meld_moe_plan_order(plan);
    size_t *start = malloc((w->E + 1) * sizeof *start);
    const float **a = malloc((M + 1) * sizeof *a);
    float **c = malloc((M + 1) * sizeof *c);
    meld_status st = MELD_ERR_OUT_OF_MEMORY;
    if (start && a && c && meld_cl_active(ctx)) {
        for (size_t e = 0; e <= w->E; e++) start[e] = (size_t)off[e];
        st = meld_cl_grouped(ctx, w, start, order, x, ldx, M, order, y, ldy, M);
    } else if (start && a && c) {
        for (size_t e = 0; e <= w->E; e++) start[e] = (size_t)off[e];
        for (size_t s = 0; s < M; s++) { a[s] = x + (size_t)order[s] * ldx; c[s] = y + (size_t)order[s] * ldy; }
        st = grouped_core(ctx, w, start, a, c);
    }
    free(start); free(a); free(c);
    meld_moe_plan_destroy(plan);
    return st;
}

/* ---- fused FFN -------------------------------------------------------------------------------- */
static inline float act(const meld_moe_ffn_options *o, float g, float u) {
    switch (o->activation) {
    case MELD_ACT_SILU: return g / (1.0f + expf(-g)) * u;
    case MELD_ACT_GELU_TANH: {
        float c = 0.7978845608028654f * (g + 0.044715f * g * g * g);
        return 0.5f * g * (1.0f + tanhf(c)) * u;
    }
    default: {
        float gg = g < o->limit ? g : o->limit;
        float uu = u < -o->limit ? -o->limit : u > o->limit ? o->limit : u;
        return (uu + 1.0f) * (gg / (1.0f + expf(-o->alpha * gg)));
    }
    }
}

/* gate_up over the rows (row pointers), activation, down: h[rows x H] */
static meld_status expert_ffn(meld_context *ctx, const meld_moe_weights *gu, const meld_moe_weights *dn,
                              const size_t *start, const float *const *xrow, size_t M, const meld_moe_ffn_options *o,
                              float *h1, float *a, float *out) {
    const size_t I = dn->K, H = dn->N;
    float **c = malloc((M + 1) * sizeof *c);
    const float **ar = malloc((M + 1) * sizeof *ar);
    if (!c || !ar) { free(c); free(ar); return MELD_ERR_OUT_OF_MEMORY; }
    for (size_t s = 0; s < M; s++) c[s] = h1 + s * 2 * I;
    meld_status st = grouped_core(ctx, gu, start, xrow, c);
    if (st == MELD_OK) {
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (M * I > 65536)
        for (size_t s = 0; s < M; s++) {
            const float *r = h1 + s * 2 * I;
            for (size_t i = 0; i < I; i++) {
                float g = o->interleaved_gate_up ? r[2 * i] : r[i], u = o->interleaved_gate_up ? r[2 * i + 1] : r[I + i];
                a[s * I + i] = act(o, g, u);
            }
        }
        for (size_t s = 0; s < M; s++) { ar[s] = a + s * I; c[s] = out + s * H; }
        st = grouped_core(ctx, dn, start, ar, c);
    }
    free(c); free(ar);
    return st;
}

meld_status meld_moe_ffn(meld_context *ctx, const float *x, size_t T, size_t ldx, const int32_t *ids, const float *weights,
                         size_t k, const meld_moe_weights *gate_up, const meld_moe_weights *down,
                         const meld_moe_weights *shared_gate_up, const meld_moe_weights *shared_down,
                         const meld_moe_ffn_options *o, float *out, size_t ldo) {
    if (!ctx || !o) return MELD_ERR_NULL_POINTER;
    MELD_TRY(check_weights(ctx, gate_up));
    MELD_TRY(check_weights(ctx, down));
    if (T && (!x || !ids || !weights || !out)) return MELD_ERR_NULL_POINTER;
    const size_t E = gate_up->E, H = gate_up->K, I = down->K;
    if (down->E != E || gate_up->N != 2 * I || down->N != H || k == 0 || k > E || ldx < H || ldo < H)
        return MELD_ERR_SIZE_MISMATCH;
    if (o->activation < MELD_ACT_SILU || o->activation > MELD_ACT_SWIGLU_OAI) return MELD_ERR_INVALID_ARGUMENT;
    if (!!shared_gate_up != !!shared_down) return MELD_ERR_NULL_POINTER;
    if (shared_gate_up) {
        MELD_TRY(check_weights(ctx, shared_gate_up));
        MELD_TRY(check_weights(ctx, shared_down));
        if (shared_gate_up->E != 1 || shared_down->E != 1 || shared_gate_up->K != H || shared_down->N != H ||
            shared_gate_up->N != 2 * shared_down->K)
            return MELD_ERR_SIZE_MISMATCH;
    }
    MELD_TRY(meld_cl_reject_buffers(ctx, (const void *[]){ids, weights}, 2, "the MoE routing arrays"));
    for (size_t i = 0; i < T * k; i++)
        if (!isfinite(weights[i])) return MELD_ERR_INVALID_ARGUMENT;
    if (T == 0) return MELD_OK;
    if (meld_cl_active(ctx))
        return meld_cl_moe_ffn(ctx, x, T, ldx, ids, weights, k, gate_up, down, shared_gate_up, shared_down, o, out, ldo);
    meld_moe_plan *plan;
    MELD_TRY(meld_moe_plan_create(ctx, ids, T, k, E, &plan));
    const size_t M = T * k, Is = shared_down ? shared_down->K : 0;
    const size_t inter = (M > T ? M : T) * (2 * (I > Is ? I : Is) + (I > Is ? I : Is));
    float *scratch = malloc((inter + (M + (shared_down ? T : 0)) * H) * sizeof(float));
    const float **xrow = malloc((M + 1) * sizeof *xrow);
    size_t *start = malloc((E + 2) * sizeof *start);
    meld_status st = MELD_ERR_OUT_OF_MEMORY;
    if (scratch && xrow && start) {
        const int32_t *off = meld_moe_plan_offsets(plan), *order = meld_moe_plan_order(plan), *inv = meld_moe_plan_inverse(plan);
        float *h1 = scratch, *a = scratch + (M > T ? M : T) * 2 * (I > Is ? I : Is), *y = scratch + inter;
        float *ys = y + M * H;
        for (size_t e = 0; e <= E; e++) start[e] = (size_t)off[e];
        for (size_t s = 0; s < M; s++) xrow[s] = x + (size_t)(order[s] / (int32_t)k) * ldx;
        st = expert_ffn(ctx, gate_up, down, start, xrow, M, o, h1, a, y);
        if (st == MELD_OK && shared_down) {
            size_t sstart[2] = {0, T};
            for (size_t t = 0; t < T; t++) xrow[t] = x + t * ldx;
            st = expert_ffn(ctx, shared_gate_up, shared_down, sstart, xrow, T, o, h1, a, ys);
        }
        if (st == MELD_OK) {
            /* combine in ascending j: bit-identical whatever the thread count */
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (T * H > 65536)
            for (size_t t = 0; t < T; t++) {
                float *dst = out + t * ldo;
                for (size_t hh = 0; hh < H; hh++) {
                    float acc = o->accumulate ? dst[hh] : 0.0f;
                    for (size_t j = 0; j < k; j++) acc = acc + weights[t * k + j] * y[(size_t)inv[t * k + j] * H + hh];
                    if (shared_down) acc = acc + ys[t * H + hh];
                    dst[hh] = acc;
                }
            }
        }
    }
    free(scratch); free(xrow); free(start);
    meld_moe_plan_destroy(plan);
    return st;
}
