/* Merge microkernels (templates): dtype conversion, linear, the task-vector pass.
 * Contract: ukernel.h. */

void UK(meld_xf32_convert)(size_t n, meld_uk_in src, void *dst, int dst_dt) {
    for (size_t i = 0; i < n; i += MELD_W) stream_dt(dst, dst_dt, i, load_dt(src.p, src.dt, i));
    stream_fence();
}

/* The body, inlined with compile-time K, input dtype (-1: per input), consensus and divisor in
 * the common cases so loops unroll and branches fold; the generic call passes runtime values.
 * Every variant performs the same operations in the same order (bit-identical results). */
static inline __attribute__((always_inline)) void tv_body(size_t n, size_t i0, const meld_uk_tv_args *a,
                                                          const size_t K, const int dt, const int cons,
                                                          const int divm) {
    const vf one = vf_set1(1.0f), zero = vf_zero();
    vf v[MELD_MAX_MODELS], u[MELD_MAX_MODELS], wv[MELD_MAX_MODELS], sv[MELD_MAX_MODELS];
    uint32_t kind[MELD_MAX_MODELS], thr[MELD_MAX_MODELS], thr2[MELD_MAX_MODELS];
    uint64_t cut[MELD_MAX_MODELS], cut2[MELD_MAX_MODELS];
    const uint8_t *bitsp[MELD_MAX_MODELS];
    int scaled[MELD_MAX_MODELS];
    const void *xp[MELD_MAX_MODELS];
    int xdt[MELD_MAX_MODELS];
    for (size_t k = 0; k < K; k++) {
        wv[k] = vf_set1(a->w[k]);
        sv[k] = vf_set1(a->rule[k].scale);
        scaled[k] = a->rule[k].scale != 1.0f;
        /* rule fields in locals: stores through the untyped output may alias the argument struct */
        kind[k] = a->rule[k].kind;
        thr[k] = a->rule[k].thr; thr2[k] = a->rule[k].thr2;
        cut[k] = a->rule[k].cut; cut2[k] = a->rule[k].cut2;
        bitsp[k] = a->rule[k].bits;
        xp[k] = a->x[k].p;
        xdt[k] = dt >= 0 ? dt : a->x[k].dt;
    }
    const void *bp = a->base.p;
    const int bdt = dt >= 0 ? dt : a->base.dt, deltas = a->x_are_deltas, unweighted = a->vote_unweighted;
    const vf lambda = vf_set1(a->lambda);
    const vf fixed = vf_set1(cons == MELD_CONSENSUS_NONE && divm == MELD_DIVISOR_COUNT ? (float)K : a->fixed_div);
    for (size_t i = 0; i < n; i += MELD_W) {
        vf b = bp ? load_dt(bp, bdt, i) : zero;
        vf s = zero;
        for (size_t k = 0; k < K; k++) {
            vf d = load_dt(xp[k], xdt[k], i);
            if (!deltas) d = vf_sub(d, b);
            vf t = d;
            if (kind[k] != MELD_RULE_ALL) {
                vm m;
                if (kind[k] == MELD_RULE_TOP) m = top_mask(vf_absbits(d), thr[k], cut[k], i0 + i);
                else if (kind[k] == MELD_RULE_BITS) m = load_bits(bitsp[k], i);
                else if (kind[k] == MELD_RULE_WINDOW) {
                    vi bb = vf_absbits(d);
                    m = vm_andnot(top_mask(bb, thr2[k], cut2[k], i0 + i), top_mask(bb, thr[k], cut[k], i0 + i));
                } else m = vm_none();
                t = vf_mul(d, vf_select(m, one, zero));
            }
            if (scaled[k]) t = vf_mul(t, sv[k]);
            v[k] = vf_mul(t, wv[k]);
            u[k] = unweighted ? t : v[k];
            if (cons == MELD_CONSENSUS_SUM) s = vf_add(s, u[k]);
            else if (cons == MELD_CONSENSUS_COUNT) s = vf_add(s, vf_sign(u[k]));
        }
        vm pos = vm_all();
        if (cons != MELD_CONSENSUS_NONE) pos = a->sign_in ? vm_from_i8_pos(a->sign_in + i) : vf_ge(s, zero);
        if (a->sign_out) vm_store_sign_i8(a->sign_out + i, pos);
        if (!a->out) continue;
        vf mixed = zero, div = zero;
        if (cons == MELD_CONSENSUS_NONE) {
            for (size_t k = 0; k < K; k++) mixed = vf_add(mixed, v[k]); /* v * 1 == v */
            div = fixed;
        } else {
            for (size_t k = 0; k < K; k++) {
                vm agree = vm_or(vm_and(pos, vf_gt(u[k], zero)), vm_andnot(pos, vf_lt(u[k], zero)));
                vf ag = vf_select(agree, one, zero);
                mixed = vf_add(mixed, vf_mul(v[k], ag));
                if (divm == MELD_DIVISOR_WEIGHT_SUM) div = vf_add(div, vf_mul(wv[k], ag));
                else if (divm == MELD_DIVISOR_COUNT) div = vf_add(div, ag);
            }
        }
        if (divm != MELD_DIVISOR_NONE) mixed = vf_div(mixed, vf_select(vf_eq(div, zero), one, div));
        mixed = vf_mul(mixed, lambda);
        if (bp) mixed = vf_add(b, mixed);
        stream_dt(a->out, a->out_dt, i, mixed);
    }
    stream_fence();
}

#define TV_K(KK, DT, C, D) case KK: tv_body(n, i0, a, KK, DT, C, D); return
#define TV_KS(DT, C, D) switch (a->k) { TV_K(1, DT, C, D); TV_K(2, DT, C, D); TV_K(3, DT, C, D); TV_K(4, DT, C, D); default: break; }
#define TV_DT(C, D) switch (dt) { case MELD_F32: TV_KS(MELD_F32, C, D) break; \
    case MELD_BF16: TV_KS(MELD_BF16, C, D) break; case MELD_F16: TV_KS(MELD_F16, C, D) break; default: break; }

void UK(meld_xf32_tv_merge)(size_t n, size_t i0, const meld_uk_tv_args *a) {
    int dt = a->k ? a->x[0].dt : -1;
    for (size_t k = 1; k < a->k; k++) if (a->x[k].dt != dt) dt = -1;
    if (a->base.p && a->base.dt != dt) dt = -1;
    if (dt >= 0 && a->k <= 4 && !a->sign_in) {
        if (a->consensus == MELD_CONSENSUS_NONE && a->divisor == MELD_DIVISOR_NONE) TV_DT(MELD_CONSENSUS_NONE, MELD_DIVISOR_NONE)
        if (a->consensus == MELD_CONSENSUS_NONE && a->divisor == MELD_DIVISOR_WEIGHT_SUM) TV_DT(MELD_CONSENSUS_NONE, MELD_DIVISOR_WEIGHT_SUM)
        if (a->consensus == MELD_CONSENSUS_SUM && a->divisor == MELD_DIVISOR_WEIGHT_SUM) TV_DT(MELD_CONSENSUS_SUM, MELD_DIVISOR_WEIGHT_SUM)
        if (a->consensus == MELD_CONSENSUS_SUM && a->divisor == MELD_DIVISOR_NONE) TV_DT(MELD_CONSENSUS_SUM, MELD_DIVISOR_NONE)
    }
    tv_body(n, i0, a, a->k, -1, a->consensus, a->divisor);
}
