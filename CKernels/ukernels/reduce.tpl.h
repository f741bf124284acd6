/* Reduction and sparse-apply microkernels (templates). Contract: ukernel.h. */

/* 16 f32 values of an input at element i, widened by the ISA's load. */
static inline void load16(float *dst, const void *p, int dt, size_t i) {
    for (int h = 0; h < 16; h += MELD_W) vf_store(dst + h, load_dt(p, dt, i + (size_t)h));
}

static inline double lanes_sum(const double *acc) {
    double s = 0.0;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

/* Gram matrix of the (base-relative) inputs in f64: 16 lane accumulators per pair, element i in
 * lane i % 16 on every ISA, lanes summed in order at the end (the fixed blocking order that makes
 * results ISA-independent). vd_fma_exact: the f32 * f32 product is exact in f64, so a fused
 * multiply-add rounds as the multiply-then-add of the scalar path.
 * AVX2, K = 3 with a base: 24 accumulators, so some spill; but the pass is bound by the f32 -> f64
 * widening and the f64 FMAs, which share the FP pipes (Zen 3, one core: ~0.6 ns an element =
 * 12 vcvtps2pd at ~0.38 ns + 24 FMAs at ~0.21 ns per 16). Keeping the accumulators in registers
 * (pairs over L1 blocks, lane groups, widened deltas buffered in L1) was never faster. */
#define GRAM_VPV (MELD_W / MELD_DW) /* f64 vectors per f32 vector */
#define GRAM_ACC (16 / MELD_DW)     /* f64 vectors per 16 lanes */
MELD_BODY_INLINE void gram_body(size_t n, const meld_uk_gram_args *a, const size_t K, const int dt) {
    const size_t P = K * (K + 1) / 2;
    vd acc[MELD_GRAM_MAX * (MELD_GRAM_MAX + 1) / 2][GRAM_ACC];
    for (size_t p = 0; p < P; p++) for (int j = 0; j < GRAM_ACC; j++) acc[p][j] = vd_zero();
    const void *bp = a->base.p;
    const int pf = K + (bp != NULL) >= 2; /* several streams: software prefetch (see prefetch_dt) */
    for (size_t i = 0; i < n; i += 16) {
        if (pf) {
            if (bp) prefetch_dt(bp, a->base.dt, i);
            for (size_t k = 0; k < K; k++) prefetch_dt(a->x[k].p, a->x[k].dt, i);
        }
        for (int h = 0; h < 16 / MELD_W; h++) {
            const size_t at = i + (size_t)h * MELD_W;
            vf b = bp ? load_dt(bp, dt >= 0 ? dt : a->base.dt, at) : vf_zero();
            vd d[MELD_GRAM_MAX][GRAM_VPV];
            for (size_t k = 0; k < K; k++) {
                vf x = load_dt(a->x[k].p, dt >= 0 ? dt : a->x[k].dt, at);
                if (bp) x = vf_sub(x, b);
                vd_widen(x, d[k]);
            }
            size_t p = 0;
            for (size_t q = 0; q < K; q++)
                for (size_t r = q; r < K; r++, p++)
                    for (int u = 0; u < GRAM_VPV; u++)
                        acc[p][h * GRAM_VPV + u] = vd_fma_exact(d[q][u], d[r][u], acc[p][h * GRAM_VPV + u]);
        }
    }
    for (size_t p = 0; p < P; p++) {
        double lanes[16];
        for (int j = 0; j < GRAM_ACC; j++) vd_store(lanes + j * MELD_DW, acc[p][j]);
        a->out[p] += lanes_sum(lanes);
    }
}

/* constant K for the common sizes, so the accumulators stay in registers, and a constant dtype
 * when all inputs share one (a runtime dtype left a compare and branch at every load) */
#define GRAM_K(DT) switch (a->k) { case 1: gram_body(n, a, 1, DT); return; case 2: gram_body(n, a, 2, DT); return; \
    case 3: gram_body(n, a, 3, DT); return; case 4: gram_body(n, a, 4, DT); return; default: break; }
void UK(meld_f64_gram)(size_t n, const meld_uk_gram_args *a) {
    const int dt = uniform_dt(a->base, a->x, a->k);
    MELD_DT_DISPATCH(dt, GRAM_K)
    GRAM_K(-1)
    gram_body(n, a, a->k, -1);
}
#undef GRAM_K

/* L1 norms of the deltas and of the kept deltas, per expert: f64 lane accumulators in registers
 * (element i in lane i % 16, as gram_body), |d| as d * sign so that a NaN stays NaN. */
/* Elements [s, e) of experts k0 .. k0 + KK - 1 into their accumulators (l1_body). */
MELD_VEC_INLINE void l1_run(size_t s, size_t e, size_t i0, const meld_uk_l1_args *a, size_t k0, const size_t KK,
                            const int dt, vd all[][GRAM_ACC], vd kept[][GRAM_ACC]) {
    const void *bp = a->base.p;
    for (size_t i = s; i < e; i += 16) {
        for (int h = 0; h < 16 / MELD_W; h++) {
            const size_t at = i + (size_t)h * MELD_W;
            const vf b = bp ? load_dt(bp, dt >= 0 ? dt : a->base.dt, at) : vf_zero();
            for (size_t k = 0; k < KK; k++) {
                vf x = load_dt(a->x[k0 + k].p, dt >= 0 ? dt : a->x[k0 + k].dt, at);
                if (bp) x = vf_sub(x, b);
                const vm keep = rule_mask(&a->rule[k0 + k], x, i0 + at, at);
                const vf ax = vf_mul(x, vf_select(vf_lt(x, vf_zero()), vf_set1(-1.0f), vf_set1(1.0f)));
                vd d[GRAM_VPV], m[GRAM_VPV];
                vd_widen(ax, d);
                vd_widen(vf_select(keep, ax, vf_zero()), m);
                for (int u = 0; u < GRAM_VPV; u++) {
                    all[k][h * GRAM_VPV + u] = vd_add(all[k][h * GRAM_VPV + u], d[u]);
                    kept[k][h * GRAM_VPV + u] = vd_add(kept[k][h * GRAM_VPV + u], m[u]);
                }
            }
        }
    }
}

MELD_BODY_INLINE void l1_body(size_t n, size_t i0, const meld_uk_l1_args *a, const size_t K, const int dt) {
    vd all[MELD_MAX_MODELS][GRAM_ACC], kept[MELD_MAX_MODELS][GRAM_ACC];
    for (size_t k = 0; k < K; k++)
        for (int j = 0; j < GRAM_ACC; j++) all[k][j] = kept[k][j] = vd_zero();
#ifdef MELD_SIMD_FEW_REGS
    /* Few vector registers (AVX2's 16): 8 accumulators an expert (24 for K = 3) spilled, and each
     * update paid a store-to-load round trip. One expert at a time over blocks that stay in L1
     * (the base is read again from there); every lane still takes its elements in index order,
     * so the sums are the same bits. */
    if (K > 1) {
        enum { BLK = 1024 }; /* a multiple of 16 */
        for (size_t s = 0; s < n; s += BLK) {
            const size_t e = n - s < BLK ? n : s + BLK;
            for (size_t k = 0; k < K; k++) {
                vd al[1][GRAM_ACC], kp[1][GRAM_ACC]; /* locals: registers, not the arrays' memory */
                for (int j = 0; j < GRAM_ACC; j++) { al[0][j] = all[k][j]; kp[0][j] = kept[k][j]; }
                l1_run(s, e, i0, a, k, 1, dt, al, kp);
                for (int j = 0; j < GRAM_ACC; j++) { all[k][j] = al[0][j]; kept[k][j] = kp[0][j]; }
            }
        }
    } else
#endif
    l1_run(0, n, i0, a, 0, K, dt, all, kept);
    for (size_t k = 0; k < K; k++) {
        double la[16], lk[16];
        for (int j = 0; j < GRAM_ACC; j++) { vd_store(la + j * MELD_DW, all[k][j]); vd_store(lk + j * MELD_DW, kept[k][j]); }
        a->out[2 * k] += lanes_sum(la);
        a->out[2 * k + 1] += lanes_sum(lk);
    }
}

/* constant K for the common sizes, so the accumulators stay in registers, and a constant dtype
 * when all inputs share one (as meld_f64_gram) */
#define L1_K(DT) switch (a->k) { case 1: l1_body(n, i0, a, 1, DT); return; case 2: l1_body(n, i0, a, 2, DT); return; \
    case 3: l1_body(n, i0, a, 3, DT); return; case 4: l1_body(n, i0, a, 4, DT); return; default: break; }
void UK(meld_f64_l1)(size_t n, size_t i0, const meld_uk_l1_args *a) {
    const int dt = uniform_dt(a->base, a->x, a->k);
    MELD_DT_DISPATCH(dt, L1_K)
    L1_K(-1)
    l1_body(n, i0, a, a->k, -1);
}
#undef L1_K

/* One vector of elements [i, i + W): base plus the scaled expansions. cur[k]: expert k's next
 * packed value (one advancing pointer an expert, not base + index: with K = 4 the indices
 * spilled to the stack). pf: prefetch the slowly advancing bitmaps and packed values (once per
 * 64 elements). */
MELD_VEC_INLINE vf apply_vec(const void *bp, int bdt, const uint8_t *const *bits, const char **cur, const vf *sc,
                             size_t i, const size_t K, const int vdt, const int *vdts, int pf) {
    vf acc = bp ? load_dt(bp, bdt, i) : vf_zero(); /* bp, bdt: compile time in the specialized bodies */
    for (size_t k = 0; k < K; k++) {
        const int dt = vdt >= 0 ? vdt : vdts[k];
        const size_t es = dt_bytes(dt);
        if (pf) {
            __builtin_prefetch(bits[k] + i / 8 + 128, 0, 3);
            __builtin_prefetch(cur[k] + 128 * es, 0, 3);
        }
        /* no skip when empty: unpredictable at 10% density. Lanes without a value stay
         * untouched (identical on every vector width). */
        const uint32_t mb = load_bits_w_raw(bits[k], i);
        acc = expand_fma_dt(mb, cur[k], dt, sc[k], acc);
        uint32_t pc = (uint32_t)__builtin_popcount(mb);
        __asm__("" : "+r"(pc)); /* opaque: else the count of a byte was narrowed and zero-extended again */
        cur[k] += (size_t)pc * es;
    }
    return acc;
}

/* vdt: the values' dtype, bd: the base's (MELD_APPLY_NO_BASE: none), -1: per input at run time */
#define MELD_APPLY_NO_BASE (-2)
MELD_BODY_INLINE void apply_body(size_t n, const meld_uk_apply_args *a, const size_t K, const int vdt, const int bd) {
    const char *cur[MELD_MAX_MODELS];
    vf sc[MELD_MAX_MODELS];
    int vdts[MELD_MAX_MODELS];
    const uint8_t *bits[MELD_MAX_MODELS];
    for (size_t k = 0; k < K; k++) {
        cur[k] = a->values[k].p; sc[k] = vf_set1(a->scale[k]); vdts[k] = a->values[k].dt; bits[k] = a->bits[k];
    }
    /* in locals: stores through the untyped output may alias the argument struct */
    const void *const bp = bd == MELD_APPLY_NO_BASE ? NULL : a->base.p;
    const int bdt = bd >= 0 ? bd : a->base.dt;
    void *const out = a->out;
    const int out_dt = a->out_dt;
    /* 2 + 2K streams, more than the hardware prefetcher follows well: software prefetch ahead,
     * of the bitmaps and packed values (apply_vec), and of a bf16 base (f32 ran slower with it;
     * bf16 -17%, f32 -13% in interleaved runs) */
    const int pf_base = bp && bdt == MELD_BF16;
    size_t i = 0;
    if (out_dt == MELD_BF16) /* bf16 out: two vectors at a time, one packing store */
        for (; i + 2 * MELD_W <= n; i += 2 * MELD_W) {
            if (pf_base) prefetch_dt(bp, MELD_BF16, i);
            const int pf = ((i / MELD_W) & (64 / MELD_W - 1)) == 0;
            vf lo = apply_vec(bp, bdt, bits, cur, sc, i, K, vdt, vdts, pf);
            vf hi = apply_vec(bp, bdt, bits, cur, sc, i + MELD_W, K, vdt, vdts, 0);
            vf2_stream_bf16_seq((uint16_t *)out + i, lo, hi);
        }
    for (; i < n; i += MELD_W) {
        if (pf_base) prefetch_dt(bp, MELD_BF16, i);
        const int pf = ((i / MELD_W) & (64 / MELD_W - 1)) == 0;
        stream_dt(out, out_dt, i, apply_vec(bp, bdt, bits, cur, sc, i, K, vdt, vdts, pf));
    }
    stream_fence();
}

/* Specialized on K, the values' dtype and the base (none, or the values' dtype): a base tested
 * and its dtype switched at run time were branches at every vector. */
void UK(meld_xf32_sparse_apply)(size_t n, const meld_uk_apply_args *a) {
    const int dt = uniform_dt((meld_uk_in){0}, a->values, a->k); /* the values' (no base here) */
#define APPLY_KS(DT, BD) switch (a->k) { case 1: apply_body(n, a, 1, DT, BD); return; case 2: apply_body(n, a, 2, DT, BD); return; \
    case 3: apply_body(n, a, 3, DT, BD); return; case 4: apply_body(n, a, 4, DT, BD); return; default: break; }
#define APPLY_BD(DT) if (!a->base.p) APPLY_KS(DT, MELD_APPLY_NO_BASE) else if (a->base.dt == DT) APPLY_KS(DT, DT)
    if (dt == MELD_F32) { APPLY_BD(MELD_F32) }
    else if (dt == MELD_BF16) { APPLY_BD(MELD_BF16) }
#undef APPLY_BD
#undef APPLY_KS
    apply_body(n, a, a->k, -1, -1);
}
