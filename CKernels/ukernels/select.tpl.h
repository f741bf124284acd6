/* Candidate collection for exact magnitude selection (template). Contract: ukernel.h. */

/* One vector of magnitude bits b of one expert: per-lane counts of b > hi, b >= hi and b >= lo,
 * by arithmetic rather than compares: for t, b in [0, 2^31), t - b is negative (bit 31 set)
 * exactly when b > t, so b > t adds (t - b) >> 31 and b >= t adds (t - 1 - b) >> 31. Compares
 * into masks have a fraction of the throughput of integer adds and shifts; only the candidate
 * test needs a mask (for the compress). A call covers at most one stream tile, far below 2^32
 * per lane. */
typedef struct collect_lane {
    vi hi, him1, lom1, lo1, width; /* width: lo < b < hi is b - (lo + 1) < width, unsigned
                                    * (lo1 and width biased by 2^31 under MELD_SIMD_SIGNED_CMP) */
    vi gt, geh, gel;
#ifdef MELD_SIMD_W16
    vi hi16, him16, lom16; /* the same tests on 16-bit words (collect_run) */
    vi gt16, geh16, gel16;
#endif
} collect_lane;

/* The candidate test and store of one vector (lo < b < hi). */
MELD_VEC_INLINE void collect_cand(const collect_lane *c, vi bits, uint32_t *cand, size_t *count, size_t cap,
                                  const int checked) {
#ifdef MELD_SIMD_SIGNED_CMP
    /* unsigned (b - lo1) < width as a signed compare, both sides biased by 2^31: the bias is
     * folded into lo1 and width at setup (collect_body) */
    vm in = vi_gt(c->width, vi_sub(bits, c->lo1));
#else
    vm in = vi_ltu(vi_sub(bits, c->lo1), c->width);
#endif
    /* no "any candidate?" branch: it is taken 30-60% of the time, unpredictably */
    size_t n = *count;
    if (!checked || n + MELD_UK_ALIGN <= cap) *count = n + vi_compress_store(cand + n, in, bits);
    else *count = n + (size_t)__builtin_popcount(vm_to_bits(in));
}

MELD_VEC_INLINE void collect_vec(collect_lane *c, vi bits, uint32_t *cand, size_t *count,
                                 size_t cap, const int checked, const int incl) {
#ifdef MELD_SIMD_CMP_COUNT
    /* b > t as a compare (all ones) subtracted: t may be -1 (hi or lo 0), and b > -1 holds for
     * every b, as (t - b) >> 31 counts it */
    c->gt = vi_sub(c->gt, vi_cmpgt_bits(bits, c->hi));
    if (!incl) {
        c->geh = vi_sub(c->geh, vi_cmpgt_bits(bits, c->him1));
        c->gel = vi_sub(c->gel, vi_cmpgt_bits(bits, c->lom1));
    }
#else
    c->gt = vi_add(c->gt, vi_srl(vi_sub(c->hi, bits), 31));
    if (!incl) {
        c->geh = vi_add(c->geh, vi_srl(vi_sub(c->him1, bits), 31));
        c->gel = vi_add(c->gel, vi_srl(vi_sub(c->lom1, bits), 31));
    }
#endif
    collect_cand(c, bits, cand, count, cap, checked);
}

/* Elements [i, n) of the call. checked: the lists may fill, so each store is tested against
 * cap; unchecked when the caller knows every candidate of the call fits. hb: a base. */
MELD_VEC_INLINE void collect_run(size_t i, size_t n, collect_lane *c, const void *const *xp, const int *xdt,
                                 const void *bp, const int bdt, uint32_t *const *cand, size_t *count, size_t cap,
                                 const size_t K, const int dt, const int hb, const int checked, const int incl) {
#ifdef MELD_SIMD_W16
    /* bf16 without a base: a magnitude's bits are its word's, shifted, so the three counts run
     * on 16-bit words, two elements a 32-bit lane: 9 instructions a pair of vectors for the
     * counts, not 18 (with the candidates' 14 or so). A word lane counts one element in 2W of
     * the call (a tile, MELD_TILE), so it cannot wrap; longer calls take the f32 lanes. */
    if (dt == MELD_BF16 && !hb && n <= (size_t)0xffff * 2 * MELD_W)
        for (; i + 2 * MELD_W <= n; i += 2 * MELD_W)
            for (size_t k = 0; k < K; k++) {
                prefetch_dt(xp[k], MELD_BF16, i);
                const vi m = vi_and(vi_load((const uint32_t *)((const uint16_t *)xp[k] + i)), vi_set1(0x7fff7fffu));
                collect_lane *ck = &c[k];
                ck->gt16 = vi_add16(ck->gt16, vi_srl16(vi_sub16(ck->hi16, m), 15));
                if (!incl) {
                    ck->geh16 = vi_add16(ck->geh16, vi_srl16(vi_sub16(ck->him16, m), 15));
                    ck->gel16 = vi_add16(ck->gel16, vi_srl16(vi_sub16(ck->lom16, m), 15));
                }
                /* the even and odd elements' f32 bits (lane order does not matter here) */
                collect_cand(ck, vi_sll(m, 16), cand[k], &count[k], cap, checked);
                collect_cand(ck, vi_and(m, vi_set1(0xffff0000u)), cand[k], &count[k], cap, checked);
            }
#endif
    if (dt == MELD_BF16) /* all inputs bf16: pairs of vectors (lane order does not matter here) */
        for (; i + 2 * MELD_W <= n; i += 2 * MELD_W) {
            vf be = vf_zero(), bo = vf_zero();
            if (hb) { prefetch_dt(bp, MELD_BF16, i); vf2_load_bf16((const uint16_t *)bp + i, &be, &bo); }
            for (size_t k = 0; k < K; k++) {
                vf de, dd;
                prefetch_dt(xp[k], MELD_BF16, i);
                vf2_load_bf16((const uint16_t *)xp[k] + i, &de, &dd);
                if (hb) { de = vf_sub(de, be); dd = vf_sub(dd, bo); }
                collect_vec(&c[k], vf_absbits(de), cand[k], &count[k], cap, checked, incl);
                collect_vec(&c[k], vf_absbits(dd), cand[k], &count[k], cap, checked, incl);
            }
        }
    for (; i < n; i += MELD_W) {
        if (hb) prefetch_dt(bp, bdt, i);
        vf b = hb ? load_dt(bp, bdt, i) : vf_zero();
        for (size_t k = 0; k < K; k++) {
            prefetch_dt(xp[k], xdt[k], i);
            vf d = load_dt(xp[k], xdt[k], i);
            if (hb) d = vf_sub(d, b);
            collect_vec(&c[k], vf_absbits(d), cand[k], &count[k], cap, checked, incl);
        }
    }
}

/* The body, inlined with compile-time K and dtype in the common cases: the counters then stay in
 * registers (with a runtime K they lived on the stack, and the candidate count's store-to-load
 * round trip each vector was the loop's critical path). */
MELD_BODY_INLINE void collect_body(size_t n, const meld_uk_collect_args *a, const size_t K, const int dt, const int hb,
                                   const int incl) {
    /* counters live in registers/stack for the call: the callers' arrays may share cache
     * lines between threads */
    size_t count[MELD_MAX_MODELS], before[MELD_MAX_MODELS];
    collect_lane c[MELD_MAX_MODELS];
    const void *xp[MELD_MAX_MODELS];
    int xdt[MELD_MAX_MODELS];
    uint32_t *cand[MELD_MAX_MODELS];
    const size_t cap = a->cap;
#ifdef MELD_SIMD_SIGNED_CMP
    const uint32_t ubias = 0x80000000u; /* the candidate test's operands (collect_cand) */
#else
    const uint32_t ubias = 0;
#endif
    for (size_t k = 0; k < K; k++) {
        before[k] = count[k] = a->count[k];
        const uint32_t l = a->lo[k], h = a->hi[k];
        /* the candidate test lo1 <= b < lo1 + width (unsigned): (lo, hi), or [lo, hi] */
        const uint32_t lo1 = incl ? l : l + 1u, width = incl ? h - l + 1u : h > l ? h - l - 1u : 0u;
        c[k] = (collect_lane){.hi = vi_set1(h), .him1 = vi_set1(h - 1u), .lom1 = vi_set1(l - 1u), .lo1 = vi_set1(lo1 ^ ubias),
                              .width = vi_set1(width ^ ubias), .gt = vi_set1(0), .geh = vi_set1(0), .gel = vi_set1(0)};
#ifdef MELD_SIMD_W16
        /* b = w << 16 (low half zero): b > h is w > h >> 16; b >= t is w >= ceil(t / 2^16) =: tc,
         * counted as (tc - 1 - w) < 0 in 16 bits (tc <= 2^15, so no wrap but at tc = 0, where
         * every w counts, as it should) */
        const uint32_t hc = (uint32_t)(((uint64_t)h + 0xffffu) >> 16), lc = (uint32_t)(((uint64_t)l + 0xffffu) >> 16);
        c[k].hi16 = vi_set1((h >> 16) * 0x10001u);
        c[k].him16 = vi_set1(((hc - 1u) & 0xffffu) * 0x10001u);
        c[k].lom16 = vi_set1(((lc - 1u) & 0xffffu) * 0x10001u);
        c[k].gt16 = c[k].geh16 = c[k].gel16 = vi_set1(0);
#endif
        xp[k] = a->x[k].p;
        xdt[k] = dt >= 0 ? dt : a->x[k].dt;
        cand[k] = a->cand[k];
    }
    const void *bp = a->base.p;
    const int bdt = dt >= 0 ? dt : a->base.dt;
    /* at most n candidates an expert in this call: when they fit, no test per store */
    int fits = 1;
    for (size_t k = 0; k < K; k++) fits &= count[k] + n + MELD_UK_ALIGN <= cap;
#ifdef MELD_SIMD_FEW_REGS
    /* Few vector registers (AVX2's 16): K experts' counters and bounds (8 vectors each) do not
     * fit, and counters spilled to the stack put a store-to-load round trip in every update.
     * One expert at a time over blocks that stay in L1 (the base is read again from there);
     * each expert's candidates still arrive in index order, so nothing else changes. */
    if (K > 1) {
        enum { BLK = 1024 }; /* a multiple of 2W: only the last block has a tail */
        for (size_t s = 0; s < n; s += BLK) {
            const size_t e = n - s < BLK ? n : s + BLK;
            for (size_t k = 0; k < K; k++) {
                /* copies in locals, so they live in registers (c[k] with a runtime k is memory,
                 * and every candidate store may alias it) */
                collect_lane ck = c[k];
                size_t nk = count[k];
                if (fits) collect_run(s, e, &ck, &xp[k], &xdt[k], bp, bdt, &cand[k], &nk, cap, 1, dt, hb, 0, incl);
                else collect_run(s, e, &ck, &xp[k], &xdt[k], bp, bdt, &cand[k], &nk, cap, 1, dt, hb, 1, incl);
                c[k] = ck;
                count[k] = nk;
            }
        }
    } else
#endif
    if (fits) collect_run(0, n, c, xp, xdt, bp, bdt, cand, count, cap, K, dt, hb, 0, incl);
    else collect_run(0, n, c, xp, xdt, bp, bdt, cand, count, cap, K, dt, hb, 1, incl);
    /* the equal counts: b == hi is (b >= hi) - (b > hi); b == lo is (b >= lo) - (b >= hi) -
     * (lo < b < hi) */
    for (size_t k = 0; k < K; k++) {
        uint64_t gt = vi_total(c[k].gt), geh = vi_total(c[k].geh), gel = vi_total(c[k].gel);
#ifdef MELD_SIMD_W16
        gt += vi_total16(c[k].gt16);
        geh += vi_total16(c[k].geh16);
        gel += vi_total16(c[k].gel16);
#endif
        a->gt[k] += gt;
        if (!incl) {
            a->eq_hi[k] += geh - gt;
            a->eq_lo[k] += a->lo[k] < a->hi[k] ? gel - geh - (count[k] - before[k]) : 0;
        }
        a->count[k] = count[k];
    }
}

#define COLLECT_HB(KK, DT, IN) if (hb) collect_body(n, a, KK, DT, 1, IN); else collect_body(n, a, KK, DT, 0, IN)
#define COLLECT_K(KK, DT) case KK: if (a->inclusive) COLLECT_HB(KK, DT, 1); else COLLECT_HB(KK, DT, 0); return
#define COLLECT_KS(DT) switch (a->k) { COLLECT_K(1, DT); COLLECT_K(2, DT); COLLECT_K(3, DT); COLLECT_K(4, DT); default: break; }

void UK(meld_xf32_collect)(size_t n, size_t i0, const meld_uk_collect_args *a) {
    (void)i0;
    const int hb = a->base.p != NULL;
    const int dt = uniform_dt(a->base, a->x, a->k);
    MELD_DT_DISPATCH(dt, COLLECT_KS)
    collect_body(n, a, a->k, -1, hb, a->inclusive);
}

void UK(meld_xf32_hist)(size_t n, const meld_uk_hist_args *a) {
    uint32_t lanes[MELD_W];
    const vi lo = vi_set1(a->lo), hi = vi_set1(a->hi);
    for (size_t i = 0; i < n; i += MELD_W) {
        vf d = load_dt(a->x.p, a->x.dt, i);
        if (a->base.p) d = vf_sub(d, load_dt(a->base.p, a->base.dt, i));
        vi bits = vf_absbits(d);
        uint32_t m = vm_to_bits(vm_andnot(vm_or(vi_gt(bits, hi), vi_lt(bits, lo)), vm_all()));
        if (!m) continue;
        vi_store(lanes, vi_srl(vi_sub(bits, lo), a->shift));
        for (; m; m &= m - 1) a->hist[lanes[__builtin_ctz(m)]]++;
    }
}
