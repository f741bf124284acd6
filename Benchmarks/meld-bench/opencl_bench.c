/* The OpenCL path beside the CPU path: the fused merge passes on device-resident tensors (GB/s
 * and the ratio to the host STREAM triad measured in the same run — PoCL runs on the CPU — and to
 * the device's own copy bandwidth), and the grouped matmul prefill in GFLOP/s. */
#include <meld.h>
#include "bench_util.h"

void opencl_bench(const bench_cfg *c) {
    size_t ndev = 0;
    meld_opencl_device_count(&ndev);
    if (!ndev) { printf("# OpenCL: no platform or device found, skipped\n"); return; }
    meld_context *g, *h;
    CHECK(meld_context_create(c->threads, &g));
    CHECK(meld_context_create(c->threads, &h));
    meld_status st = meld_context_use_opencl(g, -1);
    if (st != MELD_OK) { printf("# OpenCL: %s: %s\n", meld_status_string(st), meld_context_last_error(g)); return; }
    char name[256];
    meld_device_kind kind;
    meld_context_device(g, &kind, name, sizeof name);
    const size_t n = c->n, K = 3;
    double triad = triad_gbs(n, c->reps, c->threads);
    float *host = xmalloc(n * 4);
    meld_buffer *base, *x[3], *out, *copy;
    CHECK(meld_buffer_create(g, n * 4, &base));
    CHECK(meld_buffer_create(g, n * 4, &out));
    CHECK(meld_buffer_create(g, n * 4, &copy));
    fill_normalish(host, n, 1, 0.02f);
    CHECK(meld_buffer_upload(g, base, 0, host, n * 4));
    for (size_t k = 0; k < K; k++) {
        fill_normalish(host, n, 10 + k, 0.001f);
        CHECK(meld_buffer_create(g, n * 4, &x[k]));
        CHECK(meld_buffer_upload(g, x[k], 0, host, n * 4));
    }
    /* the device's copy bandwidth, through the conversion kernel (f32 -> f32) */
    double t;
    BEST_OF(c->reps, t, CHECK(meld_convert(g, meld_buffer_view(base, MELD_F32, n), meld_buffer_span(copy, MELD_F32, n))));
    double copy_gbs = 8.0 * (double)n / t / 1e9;
    printf("# OpenCL device: %s; host triad %.1f GB/s; device copy (convert kernel) %.1f GB/s; n = %zu, K = %zu\n", name, triad,
           copy_gbs, n, K);
    meld_view b = meld_buffer_view(base, MELD_F32, n), m[3];
    for (size_t k = 0; k < K; k++) m[k] = meld_buffer_view(x[k], MELD_F32, n);
    meld_span o = meld_buffer_span(out, MELD_F32, n);
    float w[3] = {1.0f, 0.6f, 0.8f};
    double dens[3] = {0.2, 0.5, 0.35};
    meld_selection sel[3];
    meld_ties_options opt = meld_ties_options_default();
    struct { const char *name; double secs; } rows[4];
    BEST_OF(c->reps, t, CHECK(meld_task_arithmetic(g, b, K, m, w, 1.0f, 0, o)));
    rows[0].name = "task_arithmetic"; rows[0].secs = t;
    CHECK(meld_task_select(g, b, K, m, dens, sel));
    BEST_OF(c->reps, t, CHECK(meld_ties_fused(g, b, K, m, w, sel, &opt, o)));
    rows[1].name = "ties_fused_pass"; rows[1].secs = t;
    meld_sparsifier sp[3];
    for (size_t k = 0; k < K; k++) sp[k] = (meld_sparsifier){.method = MELD_SPARSIFY_RANDOM, .density = 0.3, .rescale = MELD_RESCALE_DENSITY, .seed = 1, .stream = k};
    meld_merge_options mo = {.consensus = MELD_CONSENSUS_SUM, .divisor = MELD_DIVISOR_NONE, .lambda = 1.0f};
    BEST_OF(c->reps, t, CHECK(meld_merge_task_vectors(g, b, K, m, w, sp, &mo, o)));
    rows[2].name = "dare_ties_fused"; rows[2].secs = t;
    BEST_OF(c->reps > 2 ? 2 : c->reps, t, CHECK(meld_task_select(g, b, K, m, dens, sel)));
    rows[3].name = "task_select(K)"; rows[3].secs = t;
    for (int i = 0; i < 4; i++) {
        double bytes = (double)(K + (i == 3 ? 1 : 2)) * (double)n * 4.0, gbs = bytes / rows[i].secs / 1e9;
        printf("opencl %-18s f32 %9.2f ms %8.2f GB/s  %5.1f%% of host triad  %5.1f%% of device copy%s\n", rows[i].name, rows[i].secs * 1e3, gbs,
               100 * gbs / triad, 100 * gbs / copy_gbs, i == 1 ? "  (target: >= 30% of triad on PoCL, >= 50% of copy on a GPU)" : "");
        if (c->json)
            printf("{\"bench\":\"opencl\",\"device\":\"%s\",\"kernel\":\"%s\",\"ms\":%.3f,\"gbs\":%.2f,\"triad_gbs\":%.2f,\"copy_gbs\":%.2f}\n",
                   name, rows[i].name, rows[i].secs * 1e3, gbs, triad, copy_gbs);
    }
    /* grouped matmul prefill, Qwen3-30B-A3B gate_up (N 1536, K 2048, E 128), T = 512, k = 8 */
    {
        const size_t E = 128, N = 1536, KK = 2048, M = 512 * 8;
        float *wv = xmalloc(E * N * KK * 4), *xv = xmalloc(M * KK * 4), *yv = xmalloc(M * N * 4);
        fill_normalish(wv, E * N * KK, 3, 0.02f);
        fill_normalish(xv, M * KK, 4, 1.0f);
        int32_t *ids = xmalloc(M * 4);
        for (size_t r = 0; r < M; r++) ids[r] = (int32_t)(mix64(r) % E);
        meld_moe_weights *pw, *pc;
        CHECK(meld_moe_weights_pack(g, wv, MELD_F32, E, N, KK, KK, &pw));
        CHECK(meld_moe_weights_pack(h, wv, MELD_F32, E, N, KK, KK, &pc));
        double tg, tc;
        BEST_OF(2, tg, CHECK(meld_grouped_matmul_gather(g, xv, M, KK, ids, pw, yv, N)));
        BEST_OF(2, tc, CHECK(meld_grouped_matmul_gather(h, xv, M, KK, ids, pc, yv, N)));
        double fl = 2.0 * (double)M * (double)N * (double)KK;
        printf("opencl grouped_matmul qwen3 T=512: %.1f ms, %.1f GFLOP/s (CPU path %.1f GFLOP/s)\n", tg * 1e3, fl / tg / 1e9, fl / tc / 1e9);
        if (c->json)
            printf("{\"bench\":\"opencl\",\"device\":\"%s\",\"kernel\":\"grouped_matmul_qwen3_T512\",\"ms\":%.3f,\"gflops\":%.1f,\"cpu_gflops\":%.1f}\n",
                   name, tg * 1e3, fl / tg / 1e9, fl / tc / 1e9);
        meld_moe_weights_destroy(pw);
        meld_moe_weights_destroy(pc);
        free(wv); free(xv); free(yv); free(ids);
    }
    for (size_t k = 0; k < K; k++) meld_buffer_destroy(x[k]);
    meld_buffer_destroy(base); meld_buffer_destroy(out); meld_buffer_destroy(copy);
    free(host);
    meld_context_destroy(g);
    meld_context_destroy(h);
}
