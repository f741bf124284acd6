/* MoE grouped-matmul benchmark: the gate_up projection (N = 2I, K = H) of three published
 * shapes, T in 1..2048, routing uniform / Zipf / all-to-one. In the same run: a peak-FMA loop,
 * a STREAM triad, and the baseline gather -> per-expert cblas_sgemm -> scatter (OpenBLAS; run
 * once plain and once with OPENBLAS_CORETYPE=SkylakeX: the variable must be set before start).
 * Prints a table and one JSON object per case. */
#include <cblas.h>
#include <math.h>
#include <meld.h>
#include "bench_util.h"

void openblas_set_num_threads(int);
char *openblas_get_corename(void);
int blas_thread_shutdown_(void); /* OpenBLAS: stop the worker pool (the next call starts it again) */
int kmp_get_blocktime(void);      /* LLVM libomp */
void kmp_set_blocktime(int);

/* Each library's idle workers spin after a call: OpenBLAS's for ~100 ms, libomp's for its
 * blocktime (200 ms). Alternated right after the other library, a case ran with a third busy
 * thread on two cores (olmoe T=512: 114-143 ms against 102-106 ms alone). So before each timed
 * call the other library's pool is put to sleep and the caller's own pool is woken, untimed. */
static void wake_openmp(void) {
    int sink = 0;
#pragma omp parallel reduction(+ : sink)
    sink += 1;
    (void)sink;
}

/* an empty region with blocktime 0: its workers go to sleep as it ends */
static void quiesce_openmp(void) {
    const int bt = kmp_get_blocktime();
    kmp_set_blocktime(0);
    wake_openmp();
    kmp_set_blocktime(bt);
}

/* a multithreaded sgemm (above OpenBLAS's threading threshold) starts its pool */
static void wake_openblas(float *scratch) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 128, 128, 128, 1.0f, scratch, 128, scratch, 128, 0.0f,
                scratch + 128 * 128, 128);
}

/* Independent FMA chains: the machine's fp32 FMA peak as compiled code can reach it, in the
 * widest vectors the CPU has (an AVX-512 loop on an AVX2-only CPU is an illegal instruction). */
__attribute__((target("avx512f"))) static double fma_loop_avx512(long iters) {
    __m512 a[16], b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    float s = 0;
    for (int i = 0; i < 16; i++) s += _mm512_reduce_add_ps(a[i]);
    return 2.0 * 16 * 16 * (double)iters + (s == 12345.f);
}

/* 12 chains: two FMA pipes of 4-5 cycles latency each need 8-10 in flight */
__attribute__((target("avx2,fma"))) static double fma_loop_avx2(long iters) {
    __m256 a[12], b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
    float s = 0, l[8];
    for (int i = 0; i < 12; i++) {
        _mm256_storeu_ps(l, a[i]);
        for (int j = 0; j < 8; j++) s += l[j];
    }
    return 2.0 * 12 * 8 * (double)iters + (s == 12345.f);
}

/* which loop: 2 AVX-512, 1 AVX2+FMA, 0 scalar fmaf */
static int fma_width(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
}

static double fma_loop_scalar(long iters) {
    float a[8], s = 0;
    for (int i = 0; i < 8; i++) a[i] = (float)i;
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 8; i++) a[i] = fmaf(a[i], 1.0000001f, 1e-7f);
    for (int i = 0; i < 8; i++) s += a[i];
    return 2.0 * 8 * (double)iters + (s == 12345.f);
}

static double peak_fma(long iters) {
    const int wd = fma_width();
    double flops = 0;
#pragma omp parallel reduction(+ : flops)
    flops += wd == 2 ? fma_loop_avx512(iters) : wd == 1 ? fma_loop_avx2(iters) : fma_loop_scalar(iters);
    return flops;
}

/* one timed pass of the peak loop on the current threads (GFLOP/s) */
static double peak_pass_gflops(long iters) {
    double t0 = now_s(), f = peak_fma(iters);
    return f / (now_s() - t0) / 1e9;
}

static double peak_gflops(int threads) {
    omp_set_num_threads(threads);
    double best = 0;
    for (int r = 0; r < 3; r++) best = fmax(best, peak_pass_gflops(20000000));
    return best;
}

typedef struct shape { const char *name; size_t hidden, inter, experts, k; } shape;

static void make_ids(int32_t *ids, size_t T, size_t k, size_t E, int routing, uint64_t seed) {
    for (size_t t = 0; t < T; t++) {
        for (size_t j = 0; j < k; j++) {
            int32_t e;
            for (;;) {
                uint64_t r = mix64(seed ^ (t * 131 + j * 7 + 1) * 0x9E3779B97F4A7C15ull) ;
                seed += 0x632BE59BD9B4E019ull;
                if (routing == 2) { e = (int32_t)j; break; } /* all tokens to the same k experts */
                if (routing == 0) e = (int32_t)(r % E);
                else { /* Zipf(1): P(e) ~ 1/(e+1), by inversion */
                    double u = (double)(r >> 11) * 0x1p-53, h = 0, total = 0;
                    for (size_t q = 0; q < E; q++) total += 1.0 / (double)(q + 1);
                    e = (int32_t)E - 1;
                    for (size_t q = 0; q < E; q++) { h += 1.0 / (double)(q + 1) / total; if (u < h) { e = (int32_t)q; break; } }
                }
                int dup = 0;
                for (size_t p = 0; p < j; p++) dup |= ids[t * k + p] == e;
                if (!dup) break;
            }
            ids[t * k + j] = e;
        }
    }
}

/* the baseline: per expert, gather its rows, one sgemm, scatter back */
static void baseline(const float *xr, size_t M, size_t K, size_t N, size_t E, const int32_t *ids, int32_t *rows,
                     const float *w, float *ga, float *gc, float *yb) {
    for (size_t e = 0; e < E; e++) {
        size_t m = 0;
        for (size_t q = 0; q < M; q++) if ((size_t)ids[q] == e) rows[m++] = (int32_t)q;
        if (!m) continue;
        for (size_t q = 0; q < m; q++) memcpy(ga + q * K, xr + (size_t)rows[q] * K, K * 4);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)N, (int)K, 1.0f, ga, (int)K,
                    w + e * N * K, (int)K, 0.0f, gc, (int)N);
        for (size_t q = 0; q < m; q++) memcpy(yb + (size_t)rows[q] * N, gc + q * N, N * 4);
    }
}

/* one measured case, printed at the end against the highest peak and triad of the run */
typedef struct moe_row {
    const shape *s;
    size_t T, M, E, N, K, active;
    int routing;
    double tm, tb, maxdiff;
    double peak;  /* best peak-FMA pass alternated with this case (GFLOP/s) */
    double triad; /* decode: best triad of passes alternated with this case (GB/s) */
    double read;  /* decode: best streaming read of as many bytes as the active weights (GB/s) */
} moe_row;

void moe_bench(const bench_cfg *c, int quick) {
    openblas_set_num_threads(c->threads);
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    /* The peak-FMA loop and the triad run before every shape and once more at the end (and the
     * peak alternated with each case); the table, printed last, shows the highest of each beside
     * the alternated ones: a neighbour slowing one measurement would otherwise inflate every
     * ratio taken against it. */
    double peak = 0, triad = 0;
    moe_row rows_out[3 * 6 * 3];
    size_t nrows = 0;
    shape shapes[] = {{"mixtral*", 4096, 3584, 8, 2}, {"qwen3-30b", 2048, 768, 128, 8}, {"olmoe", 2048, 1024, 64, 8}};
    size_t Ts[] = {1, 8, 32, 128, 512, 2048};
    const char *rname[] = {"unif", "zipf", "one"};
    meld_context *ctx;
    CHECK(meld_context_create(c->threads, &ctx));
    /* decode cases are memory-bound: their triad reference is a pass alternated with them, as in
     * the merge benchmark (the run's highest triad may come from a faster phase of the machine) */
    triad_arrays ta = triad_alloc((size_t)32 << 20, c->threads);
    /* and a plain read of as many bytes as the active weights: what streaming them can reach */
    const size_t rb_bytes = (size_t)1 << 30;
    char *rb = xmalloc(rb_bytes);
    memset(rb, 1, rb_bytes);
    for (size_t si = 0; si < 3; si++) {
        const shape *const sp = &shapes[si];
        const shape s = *sp;
        if (c->shape && strncmp(s.name, c->shape, strlen(c->shape))) continue;
        blas_thread_shutdown_(); /* the last case's baseline pool: asleep, not spinning beside these */
        peak = fmax(peak, peak_gflops(c->threads));
        triad = fmax(triad, triad_gbs((size_t)32 << 20, 3, c->threads));
        const size_t N = 2 * s.inter, K = s.hidden, E = s.experts;
        float *w = xmalloc(E * N * K * 4);
        fill_normalish(w, E * N * K, 7 + si, 0.02f);
        meld_moe_weights *pw;
        CHECK(meld_moe_weights_pack(ctx, w, MELD_F32, E, N, K, K, &pw));
        size_t Tmax = quick ? 32 : 2048;
        float *x = xmalloc(Tmax * K * 4), *y = xmalloc(Tmax * s.k * N * 4), *yb = xmalloc(Tmax * s.k * N * 4);
        float *ga = xmalloc(Tmax * s.k * K * 4), *gc = xmalloc(Tmax * s.k * N * 4);
        fill_normalish(x, Tmax * K, 99, 1.0f);
        int32_t *ids = xmalloc(Tmax * s.k * 4), *rows = xmalloc(Tmax * s.k * 4);
        for (size_t ti = 0; ti < 6; ti++) {
            size_t T = Ts[ti];
            if (T > Tmax || (c->tokens && T != c->tokens)) continue;
            for (int routing = 0; routing < 3; routing++) {
                if (quick && routing) continue;
                make_ids(ids, T, s.k, E, routing, 1234 + T);
                const size_t M = T * s.k;
                /* the gather form: row r = token r / k */
                float *xr = xmalloc(M * K * 4);
                for (size_t r = 0; r < M; r++) memcpy(xr + r * K, x + (r / s.k) * K, K * 4);
                const int reps = c->reps;
                /* Meld and the baseline alternate, best of each: both see the same machine.
                 * One untimed round first (first-touch of outputs and scratch), then rounds
                 * until reps are done and 1 s is spent (at most 40): two runs of a 100 ms case,
                 * or a few of a 2 ms one, were often all slowed by neighbours on a shared machine.
                 * Large cases too: with 2 rounds, mixtral* T=512 all-to-one read 0.82-1.03x
                 * OpenBLAS from run to run on the Zen 3 VM (single calls there swing 350-490 ms). */
                CHECK(meld_grouped_matmul_gather(ctx, xr, M, K, ids, pw, y, N));
                baseline(xr, M, K, N, E, ids, rows, w, ga, gc, yb);
                size_t active = 0;
                for (size_t e = 0; e < E; e++) for (size_t r = 0; r < M; r++) if ((size_t)ids[r] == e) { active++; break; }
                const size_t wbytes = active * N * K * 4;
                double tm = 1e30, tb = 1e30, tt = 1e30, tr = 1e30, pk = 0, spent = 0;
                for (int r = 0; r < 40 && (r < reps || spent < 1.0); r++) {
                    blas_thread_shutdown_();
                    wake_openmp();
                    /* this VM's clock moves with its host's load (the peak loop read 360-485
                     * GFLOP/s within minutes): %peak is against a short peak pass alternated with
                     * the case, as decode's %triad is against an alternated triad */
                    pk = fmax(pk, peak_pass_gflops(4000000));
                    if (T <= 8) tt = fmin(tt, triad_pass_s(&ta));
                    if (T <= 8 && wbytes <= rb_bytes) tr = fmin(tr, read_pass_s(rb, wbytes, 1, c->threads));
                    double t0 = now_s();
                    CHECK(meld_grouped_matmul_gather(ctx, xr, M, K, ids, pw, y, N));
                    double t1 = now_s();
                    quiesce_openmp();
                    wake_openblas(gc);
                    double t2 = now_s();
                    baseline(xr, M, K, N, E, ids, rows, w, ga, gc, yb);
                    double t3 = now_s();
                    tm = fmin(tm, t1 - t0);
                    tb = fmin(tb, t3 - t2);
                    spent += t3 - t2 + t1 - t0;
                }
                blas_thread_shutdown_();
                peak = fmax(peak, pk);
                double maxdiff = 0;
                for (size_t q = 0; q < M * N; q += 97) maxdiff = fmax(maxdiff, fabs(y[q] - yb[q]));
                rows_out[nrows++] = (moe_row){sp, T, M, E, N, K, active, routing, tm, tb, maxdiff, pk,
                                              T <= 8 ? 12.0 * (double)ta.n / tt / 1e9 : 0, tr < 1e30 ? (double)wbytes / tr / 1e9 : 0};
                free(xr);
            }
        }
        meld_moe_weights_destroy(pw);
        free(w); free(x); free(y); free(yb); free(ga); free(gc); free(ids); free(rows);
    }
    meld_context_destroy(ctx);
    triad_free(&ta);
    free(rb);
    blas_thread_shutdown_();
    peak = fmax(peak, peak_gflops(c->threads));
    triad = fmax(triad, triad_gbs((size_t)32 << 20, 3, c->threads));
    printf("# MoE grouped matmul (gate_up: N = 2I, K = H), %d threads, peak-FMA loop %.1f GFLOP/s, triad %.1f GB/s\n"
           "# (the highest measured in the run), baseline OpenBLAS core %s (OPENBLAS_CORETYPE=%s); Meld and the\n"
           "# baseline alternate within each case, best of each; each case also alternates a short peak-FMA pass: %%peak\n"
           "# is against that pass ([max]: against the run's highest peak); decode (T <= 8) also alternates a triad pass: its\n"
           "# %%triad is against that pass (in brackets: against the run's highest triad), and %%read against a streaming\n"
           "# read of as many bytes, alternated too\n", c->threads, peak, triad, openblas_get_corename(),
           coretype ? coretype : "unset");
    printf("%-10s %5s %-6s %9s %9s %7s %8s %9s %7s %7s %s\n", "shape", "T", "route", "meld ms", "GFLOP/s", "%peak", "[max]", "blas ms", "speedup",
           "Tk/E", "decode %triad [run max] %read");
    for (size_t i = 0; i < nrows; i++) {
        const moe_row *r = &rows_out[i];
        const double flops = 2.0 * (double)r->M * (double)r->N * (double)r->K, gf = flops / r->tm / 1e9;
        const double wbytes = (double)r->active * (double)r->N * (double)r->K * 4.0;
        const double dec = wbytes / r->tm / 1e9 / (r->T <= 8 ? r->triad : triad), dec_max = wbytes / r->tm / 1e9 / triad;
        const double tke = (double)r->M / (double)r->E;
        printf("%-10s %5zu %-6s %9.3f %9.1f %6.1f%% [%5.1f%%] %9.3f %6.2fx %7.2f ", r->s->name, r->T, rname[r->routing],
               r->tm * 1e3, gf, 100 * gf / r->peak, 100 * gf / peak, r->tb * 1e3, r->tb / r->tm, tke);
        if (r->T <= 8) printf("%5.1f%% [%.1f%%] %.1f%%\n", 100 * dec, 100 * dec_max, r->read > 0 ? 100 * wbytes / r->tm / 1e9 / r->read : 0);
        else printf("(%5.1f%%)\n", 100 * dec);
        if (c->json)
            printf("{\"bench\":\"moe_grouped_matmul\",\"shape\":\"%s\",\"H\":%zu,\"I\":%zu,\"E\":%zu,\"k\":%zu,\"T\":%zu,\"routing\":\"%s\","
                   "\"meld_ms\":%.3f,\"gflops\":%.2f,\"peak_gflops\":%.1f,\"peak_frac\":%.3f,\"peak_frac_run_max\":%.3f,\"blas_ms\":%.3f,\"blas_core\":\"%s\","
                   "\"speedup\":%.2f,\"active_weight_gb\":%.3f,\"triad_frac\":%.3f,\"triad_frac_run_max\":%.3f,\"read_frac\":%.3f,\"max_abs_diff\":%.2e}\n",
                   r->s->name, r->s->hidden, r->s->inter, r->E, r->s->k, r->T, rname[r->routing], r->tm * 1e3, gf, r->peak, gf / r->peak, gf / peak,
                   r->tb * 1e3, openblas_get_corename(), r->tb / r->tm, wbytes / 1e9, dec, dec_max,
                   r->read > 0 ? wbytes / r->tm / 1e9 / r->read : 0, r->maxdiff);
    }
}
