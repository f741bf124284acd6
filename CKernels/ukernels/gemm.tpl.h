/* GEMM microkernel (template): MELD_MR x (2 * MELD_W) register block. Contract: ukernel.h. */
#define MELD_NR (2 * MELD_W)
#ifndef MELD_GEMM_SPREAD_PREFETCH
#define MELD_GEMM_SPREAD_PREFETCH MELD_SPREAD_NONE /* the registry's gemm_spread_prefetch (ukernel.h) */
#endif
#ifndef MELD_GEMM_STREAM_FLOPS_PER_BYTE
#define MELD_GEMM_STREAM_FLOPS_PER_BYTE 16 /* the registry's gemm_stream_flops_per_byte */
#endif
#ifndef MELD_GEMM_PREFETCH_LOCALITY
#define MELD_GEMM_PREFETCH_LOCALITY 3 /* __builtin_prefetch's: 3 = L1; an ISA header may lower it */
#endif

/* R rows (compile time: mr <= R <= MELD_MR; decode calls with few rows do no wasted FMAs).
 * Each C element gets the same FMA sequence whatever R, and whichever A form (bit-identical).
 * A: row pointers a (PACKED 0), or one k-major panel ap, element (r, k) at ap[k * MELD_MR + r]
 * (PACKED 1: one base register and immediate offsets, where MR row pointers spill to the
 * stack). pf_lines 64-byte lines from b_next are prefetched as b is consumed, spread evenly over
 * the kc steps. */
static inline __attribute__((always_inline)) void gemm_body(size_t kc, const float *const *a, const float *ap,
                                                            const void *b, const void *b_next, size_t pf_lines,
                                                            const int bdt, float *const *c, size_t mr, size_t nr,
                                                            int accumulate, const int R, const int PACKED) {
    vf c0[MELD_MR], c1[MELD_MR];
    const size_t es = dt_bytes(bdt);
    const char *next = b_next;
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) c0[r] = c1[r] = vf_zero();
#define GEMM_STEP(k) do { \
        vf b0 = load_dt(b, bdt, (k) * MELD_NR), b1 = load_dt(b, bdt, (k) * MELD_NR + MELD_W); \
        for (int r = 0; r < R; r++) { \
            vf av = vf_set1(PACKED ? ap[(k) * MELD_MR + (size_t)r] : a[r][k]); \
            c0[r] = vf_fma(av, b0, c0[r]); \
            c1[r] = vf_fma(av, b1, c1[r]); \
        } } while (0)
    /* separate loops, not a test per step: calls that prefetch nothing run the plain one */
    if (next && pf_lines * 64 == kc * MELD_NR * es)
        /* the whole next panel (a line a step on AVX2 f32, two on AVX-512 f32): its own loop with
         * the panel's constant stride (1-row decode, 2 FMAs a step, ran a few % slower through
         * the general one below, in 5 of 6 alternated pairs) */
        for (size_t k = 0; k < kc; k++) {
            __builtin_prefetch(next + k * MELD_NR * es, 0, MELD_GEMM_PREFETCH_LOCALITY);
            if (MELD_NR * es > 64) __builtin_prefetch(next + k * MELD_NR * es + 64, 0, MELD_GEMM_PREFETCH_LOCALITY);
            GEMM_STEP(k);
        }
    else if (next && pf_lines) {
        /* a share of it (decode's row tiles split the panel): st bytes a step, at most a
         * panel's NR weights; below a line a step, lines are prefetched twice or more rather
         * than tested for each step */
        const size_t st = (pf_lines * 64 + kc - 1) / kc;
        for (size_t k = 0; k < kc; k++) {
            __builtin_prefetch(next + k * st, 0, MELD_GEMM_PREFETCH_LOCALITY);
            if (MELD_NR * es > 64 && st > 64) __builtin_prefetch(next + k * st + 64, 0, MELD_GEMM_PREFETCH_LOCALITY);
            GEMM_STEP(k);
        }
    } else {
        size_t k = 0;
        for (; k + 2 <= kc; k += 2) { GEMM_STEP(k); GEMM_STEP(k + 1); }
        if (k < kc) GEMM_STEP(k);
    }
#undef GEMM_STEP
    /* Stores unrolled over the compile-time R: the accumulators stay in registers (a loop to
     * the runtime mr indexes them, which sent all 2R through the stack before and after the k
     * loop). A partial tile goes through a buffer. */
    if (mr == (size_t)R && nr == MELD_NR) {
#pragma clang loop unroll(full)
        for (int r = 0; r < R; r++) {
            if (accumulate) { c0[r] = vf_add(vf_load(c[r]), c0[r]); c1[r] = vf_add(vf_load(c[r] + MELD_W), c1[r]); }
            vf_store(c[r], c0[r]);
            vf_store(c[r] + MELD_W, c1[r]);
        }
        return;
    }
    float tmp[MELD_MR][MELD_NR];
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
        vf_store(tmp[r], c0[r]);
        vf_store(tmp[r] + MELD_W, c1[r]);
    }
    for (size_t r = 0; r < mr; r++) {
        if (nr == MELD_NR) {
            vf t0 = vf_load(tmp[r]), t1 = vf_load(tmp[r] + MELD_W);
            if (accumulate) { t0 = vf_add(vf_load(c[r]), t0); t1 = vf_add(vf_load(c[r] + MELD_W), t1); }
            vf_store(c[r], t0);
            vf_store(c[r] + MELD_W, t1);
        } else
            for (size_t j = 0; j < nr; j++) c[r][j] = accumulate ? c[r][j] + tmp[r][j] : tmp[r][j];
    }
}

static inline __attribute__((always_inline)) void gemm_rows(size_t kc, const float *const *a, const float *ap,
                                                            const void *b, const void *bn, size_t pf, const int bdt,
                                                            float *const *c, size_t mr, size_t nr, int accumulate,
                                                            const int PACKED) {
    /* 1, 2 and 4 rows, 5-7 exactly (the row tiles moe/grouped.c makes of a short last tile and
     * the one before it: AVX2 6 + 3 as 4 + 5, AVX-512 12 + 1 as 6 + 7), 8, and MR; between them,
     * the next size up. Fewer than 4 rows (8 accumulators) cannot hide the FMA latency, so 3
     * rows take a 4-row block's time anyway. */
    if (mr <= 1) gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, 1, PACKED);
    else if (mr <= 2) gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, 2, PACKED);
    else if (mr <= 4) gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, 4 < MELD_MR ? 4 : MELD_MR, PACKED);
    else if (mr == 5 && 5 < MELD_MR) gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, 5 < MELD_MR ? 5 : MELD_MR, PACKED);
    else if (mr == 6 && 6 < MELD_MR) gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, 6 < MELD_MR ? 6 : MELD_MR, PACKED);
    else if (mr == 7 && 7 < MELD_MR) gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, 7 < MELD_MR ? 7 : MELD_MR, PACKED);
    else if (mr <= 8 && 8 < MELD_MR) gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, 8 < MELD_MR ? 8 : MELD_MR, PACKED);
    else gemm_body(kc, a, ap, b, bn, pf, bdt, c, mr, nr, accumulate, MELD_MR, PACKED);
}

#define GEMM_DTYPES(A, AP, PACKED) \
    switch (b_dt) { \
    case MELD_F32: gemm_rows(kc, A, AP, b, b_next, pf_lines, MELD_F32, c, mr, nr, accumulate, PACKED); break; \
    case MELD_BF16: gemm_rows(kc, A, AP, b, b_next, pf_lines, MELD_BF16, c, mr, nr, accumulate, PACKED); break; \
    default: gemm_rows(kc, A, AP, b, b_next, pf_lines, MELD_F16, c, mr, nr, accumulate, PACKED); break; \
    }

void UK(meld_f32_gemm)(size_t kc, const float *const *a, const void *b, const void *b_next, size_t pf_lines, int b_dt,
                       float *const *c, size_t mr, size_t nr, int accumulate) {
    GEMM_DTYPES(a, NULL, 0)
}

void UK(meld_f32_gemm_packed)(size_t kc, const float *a, const void *b, const void *b_next, size_t pf_lines, int b_dt,
                              float *const *c, size_t mr, size_t nr, int accumulate) {
    GEMM_DTYPES(NULL, a, 1)
}
#undef GEMM_DTYPES
