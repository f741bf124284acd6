/* Merge kernel benchmark: per kernel and dtype, GB/s over the bytes each kernel must move
 * (inputs read once + output written once) and its ratio to a STREAM triad measured beside it;
 * magnitude selection as a multiple of one streaming read of its tensor. Each case alternates
 * the reference pass (triad or read) with the kernel, best of each, so both see the same
 * machine: on a shared machine the bandwidth drifts within a run. */
#include <math.h>
#include <meld.h>
#include "bench_util.h"

static void report(const bench_cfg *c, const char *kernel, const char *dtype, double secs, double bytes,
                   double triad, const char *target_name, double target, double ratio) {
    double gbs = bytes / secs / 1e9;
    printf("%-22s %-5s %9.2f ms %8.2f GB/s  %6.1f%% of triad  %s %.2f (target %.2f) %s\n", kernel, dtype,
           secs * 1e3, gbs, 100.0 * gbs / triad, target_name, ratio, target,
           (strcmp(target_name, "reads") == 0 ? ratio <= target : ratio >= target) ? "ok" : "MISS");
    if (c->json)
        printf("{\"bench\":\"merge\",\"kernel\":\"%s\",\"dtype\":\"%s\",\"n\":%zu,\"threads\":%d,\"ms\":%.3f,"
               "\"gbs\":%.3f,\"triad_gbs\":%.3f,\"%s\":%.3f}\n",
               kernel, dtype, c->n, c->threads, secs * 1e3, gbs, triad, target_name, ratio);
}

void merge_bench(const bench_cfg *c) {
    const size_t n = c->n;
    const int K = 3;
    meld_context *ctx;
    CHECK(meld_context_create(c->threads, &ctx));
    meld_isa isa;
    meld_context_isa(ctx, &isa);
    triad_arrays ta = triad_alloc(n, c->threads);
    double triad = triad_gbs(n, c->reps, c->threads);
    printf("# merge kernels: n = %zu, K = %d, %d threads, isa %s, STREAM triad %.2f GB/s at the start; each\n"
           "# ratio is to a triad timed alternately with its kernel (best of %d each)\n", n, K, c->threads,
           meld_isa_name(isa), triad, c->reps);
/* t: best seconds of body; triad: GB/s of the best triad pass run alternately with it */
#define CASE(body) do { \
        double tt_ = 1e30; t = 1e30; \
        for (int r_ = 0; r_ < c->reps; r_++) { \
            tt_ = fmin(tt_, triad_pass_s(&ta)); \
            double t0_ = now_s(); body; t = fmin(t, now_s() - t0_); \
        } \
        triad = 12.0 * (double)n / tt_ / 1e9; \
    } while (0)

    float *base32 = xmalloc(n * 4), *x32[3], *out32 = xmalloc(n * 4);
    fill_normalish(base32, n, 1, 0.02f);
    for (int k = 0; k < K; k++) {
        x32[k] = xmalloc(n * 4);
        fill_normalish(x32[k], n, 10 + k, 0.001f);
        for (size_t i = 0; i < n; i++) x32[k][i] += base32[i];
    }
    uint16_t *base16 = xmalloc(n * 2), *x16[3], *out16 = xmalloc(n * 2);
    CHECK(meld_convert(ctx, (meld_view){base32, n, MELD_F32}, (meld_span){base16, n, MELD_BF16}));
    for (int k = 0; k < K; k++) {
        x16[k] = xmalloc(n * 2);
        CHECK(meld_convert(ctx, (meld_view){x32[k], n, MELD_F32}, (meld_span){x16[k], n, MELD_BF16}));
    }
    float w[3] = {1.0f, 0.6f, 0.8f};
    double dens[3] = {0.2, 0.5, 0.35};
    meld_ties_options opt = meld_ties_options_default();

    for (int pass = 0; pass < 2; pass++) {
        meld_dtype dt = pass == 0 ? MELD_F32 : MELD_BF16;
        const char *dn = meld_dtype_name(dt);
        size_t es = meld_dtype_size(dt);
        void *base = pass == 0 ? (void *)base32 : (void *)base16, *out = pass == 0 ? (void *)out32 : (void *)out16;
        meld_view b = {base, n, dt}, m[3];
        for (int k = 0; k < K; k++) m[k] = (meld_view){pass == 0 ? (void *)x32[k] : (void *)x16[k], n, dt};
        meld_span o = {out, n, dt};
        double t, tensor = (double)n * (double)es;

        CASE(CHECK(meld_linear(ctx, K, m, w, 1, o)));
        report(c, "linear", dn, t, (K + 1) * tensor, triad, "triad_ratio", 0.80, (K + 1) * tensor / t / 1e9 / triad);
        CASE(CHECK(meld_task_arithmetic(ctx, b, K, m, w, 1.0f, 0, o)));
        report(c, "task_arithmetic", dn, t, (K + 2) * tensor, triad, "triad_ratio", 0.80, (K + 2) * tensor / t / 1e9 / triad);

        /* selection of one tensor vs one streaming read of it */
        meld_selection sel[3];
        double tread = 1e30;
        t = 1e30;
        for (int r = 0; r < c->reps; r++) {
            tread = fmin(tread, read_pass_s(m[0].data, n * es, 1, c->threads));
            double t0 = now_s();
            CHECK(meld_magnitude_select(ctx, m[0], 0.2, &sel[0]));
            t = fmin(t, now_s() - t0);
        }
        report(c, "select(1 tensor)", dn, t, tensor, triad, "reads", 3.0, t / tread);

        CASE(CHECK(meld_task_select(ctx, b, K, m, dens, sel)));
        report(c, "task_select(K)", dn, t, (K + 1) * tensor, triad, "triad_ratio", 0.0, (K + 1) * tensor / t / 1e9 / triad);
        CASE(CHECK(meld_ties_fused(ctx, b, K, m, w, sel, &opt, o)));
        report(c, "ties_fused_pass", dn, t, (K + 2) * tensor, triad, "triad_ratio", 0.0, (K + 2) * tensor / t / 1e9 / triad);
        CASE(CHECK(meld_ties(ctx, b, K, m, w, dens, &opt, o)));
        report(c, "ties_end_to_end", dn, t, (K + 2) * tensor, triad, "triad_ratio", 0.40, (K + 2) * tensor / t / 1e9 / triad);

        /* dare_ties: Philox masks generated inside the fused pass (no rescale pass) */
        meld_sparsifier sp[3];
        for (int k = 0; k < K; k++)
            sp[k] = (meld_sparsifier){.method = MELD_SPARSIFY_RANDOM, .density = 0.3f, .rescale = MELD_RESCALE_DENSITY, .seed = 1, .stream = (uint64_t)k};
        meld_merge_options mo = {.consensus = MELD_CONSENSUS_SUM, .divisor = MELD_DIVISOR_NONE, .lambda = 1.0f};
        CASE(CHECK(meld_merge_task_vectors(ctx, b, K, m, w, sp, &mo, o)));
        report(c, "dare_ties_fused", dn, t, (K + 2) * tensor, triad, "triad_ratio", 0.40, (K + 2) * tensor / t / 1e9 / triad);
        for (int k = 0; k < K; k++) sp[k].rescale = MELD_RESCALE_L1;
        CASE(CHECK(meld_merge_task_vectors(ctx, b, K, m, w, sp, &mo, o)));
        report(c, "dare_ties_l1_rescale", dn, t, (K + 2) * tensor, triad, "triad_ratio", 0.0, (K + 2) * tensor / t / 1e9 / triad);

        /* SLERP and Model Stock: a reduction pass plus a combine pass; bytes = inputs + output once */
        CASE(CHECK(meld_slerp(ctx, 0.3f, m[0], m[1], o)));
        report(c, "slerp", dn, t, 3 * tensor, triad, "triad_ratio", 0.50, 3 * tensor / t / 1e9 / triad);
        CASE(CHECK(meld_model_stock(ctx, b, K, m, o, NULL)));
        report(c, "model_stock", dn, t, (K + 2) * tensor, triad, "triad_ratio", 0.50, (K + 2) * tensor / t / 1e9 / triad);

        /* K = 4 packed deltas of 10% density applied to the base */
        {
            enum { KP = 4 };
            uint8_t *mask[KP];
            void *vals[KP];
            meld_packed_view pv[KP];
            float sc[KP] = {1.0f, 0.5f, 0.25f, 0.75f};
            double touched = 2.0 * tensor; /* base read + output written */
            for (int k = 0; k < KP; k++) {
                meld_sparsifier s1 = {.method = MELD_SPARSIFY_RANDOM, .density = 0.1f, .seed = 3, .stream = (uint64_t)k};
                float scale;
                mask[k] = xmalloc((n + 7) / 8);
                CHECK(meld_sparsify_mask(ctx, b, m[k % K], &s1, mask[k], &scale));
                size_t nnz;
                CHECK(meld_mask_count(mask[k], n, &nnz));
                vals[k] = xmalloc(nnz * es + 64);
                CHECK(meld_pack(ctx, b, m[k % K], mask[k], 1.0f, (meld_span){vals[k], nnz, dt}));
                pv[k] = (meld_packed_view){mask[k], vals[k], n, nnz, dt};
                touched += (double)((n + 7) / 8) + (double)nnz * (double)es;
            }
            CASE(CHECK(meld_sparse_apply(ctx, b, KP, pv, sc, o)));
            report(c, "sparse_apply_K4_10pct", dn, t, touched, triad, "triad_ratio", 0.60, touched / t / 1e9 / triad);
            for (int k = 0; k < KP; k++) { free(mask[k]); free(vals[k]); }
        }
    }
    triad_free(&ta);
    free(base32); free(out32); free(base16); free(out16);
    for (int k = 0; k < K; k++) { free(x32[k]); free(x16[k]); }
    meld_context_destroy(ctx);
}
