/* Merge microkernels (templates): dtype conversion, linear, the task-vector pass.
 * Contract: ukernel.h. */

void UK(meld_xf32_convert)(size_t n, meld_uk_in src, void *dst, int dst_dt) {
    for (size_t i = 0; i < n; i += MELD_W) stream_dt(dst, dst_dt, i, load_dt(src.p, src.dt, i));
    stream_fence();
}

/* Per-call constants of the task-vector body (see tv_body). */
typedef struct tv_consts {
    vf wv[MELD_MAX_MODELS], sv[MELD_MAX_MODELS];
    vi gt_thr[MELD_MAX_MODELS]; /* broadcast once: a scalar here was re-broadcast every vector */
    uint32_t kind[MELD_MAX_MODELS], thr[MELD_MAX_MODELS], thr2[MELD_MAX_MODELS];
    uint64_t cut[MELD_MAX_MODELS], cut2[MELD_MAX_MODELS];
    const uint8_t *bitsp[MELD_MAX_MODELS];
    int scaled[MELD_MAX_MODELS];
    int deltas, unweighted, has_base;
    const int8_t *sign_in;
    int8_t *sign_out;
    vf lambda, fixed;
    /* lambda == 1 skips the multiply: mixed * 1 == mixed, as mixed is never a signalling NaN
     * (every v is a product). A branch the predictor always gets right, off the dependency
     * chain, where the multiply was on it (AVX2, bf16 TIES K = 3 in cache: ~3% faster) */
    int unit_lambda;
#ifdef MELD_SIMD_TABLE16
    vtab16 divtab; /* the divisor of each agreement pattern (tv_vec) */
#endif
} tv_consts;

#ifdef MELD_SIMD_TABLE16
/* Whether a body's specialized sum vote divides by a table of the agreement pattern (tv_vec) */
#define tv_table_divisor(K, cons, divm, rk) ((rk) >= 0 && (cons) == MELD_CONSENSUS_SUM && (divm) != MELD_DIVISOR_NONE && (K) <= 4)
/* The end of the specialized sum vote (tv_vec): the divisor of the agreement pattern idx,
 * lambda, the base. */
MELD_VEC_INLINE vf tv_finish16(const tv_consts *c, vf mixed, vi idx, vf b, const size_t K, const int divm, const int hb) {
    if (divm != MELD_DIVISOR_NONE) mixed = vf_div(mixed, K <= 3 ? vf_lookup8(c->divtab, idx) : vf_lookup16(c->divtab, idx));
    if (!c->unit_lambda) mixed = vf_mul(mixed, c->lambda);
    return hb ? vf_add(b, mixed) : mixed;
}
#endif

/* One vector: base b and inputs x[k] (loaded) give the merged value; with a specialized BITS
 * rule bm[k] are the keep masks; i is the call-local index of lane 0 (index-dependent rules,
 * signs). Sets *skip when there is no output to write. With split (the specialized sum vote
 * only, see tv_pairs_split) it stops before tv_finish16, leaving its mixed and idx there. */
MELD_VEC_INLINE vf tv_vec(const tv_consts *c, vf b, const vf *x, const vm *bm, size_t i0,
                                                       size_t i, const size_t K, const int cons, const int divm,
                                                       const int rk, const int hb, int has_out, int *skip,
                                                       vf *split_mixed, vi *split_idx) {
    const vf one = vf_set1(1.0f), zero = vf_zero();
    vf v[MELD_MAX_MODELS], u[MELD_MAX_MODELS];
    vf s = zero;
    /* specialized (rk >= 0): hb, a compile-time constant, says both */
    const int sub_base = rk >= 0 ? hb : !c->deltas, add_base = rk >= 0 ? hb : c->has_base;
    for (size_t k = 0; k < K; k++) {
        vf d = x[k];
        if (sub_base) d = vf_sub(d, b);
        vf t = d;
        const uint32_t kk = rk >= 0 ? (uint32_t)rk : c->kind[k];
        if (rk == MELD_RULE_TOP) {
            /* v = kept ? d·w : +0 in one masked multiply. The general form (d·0)·w differs only
             * in the sign of a zero (no dropped d is NaN or infinite: the specialized TOP body
             * needs a finite threshold, see tv_uniform_rule), and no result depends on that sign:
             * zeros never agree and sums start at +0. */
            v[k] = vf_mask_mul(vi_gt(vf_absbits(d), c->gt_thr[k]), zero, d, c->wv[k]);
            u[k] = v[k];
            if (cons == MELD_CONSENSUS_SUM) s = k ? vf_add(s, u[k]) : u[k];
            continue;
        }
        if (rk == MELD_RULE_BITS) {
            /* t = d * (kept ? 1 : 0) in one masked multiply: d = x - b is never a signalling NaN */
            t = vf_mask_mul(vm_not(bm[k]), d, d, zero);
        } else if (kk != MELD_RULE_ALL) {
            vm m;
            if (kk == MELD_RULE_TOP) m = top_mask(vf_absbits(d), c->thr[k], c->cut[k], i0 + i);
            else if (kk == MELD_RULE_BITS) m = load_bits(c->bitsp[k], i);
            else if (kk == MELD_RULE_WINDOW) {
                vi bb = vf_absbits(d);
                m = vm_andnot(top_mask(bb, c->thr2[k], c->cut2[k], i0 + i), top_mask(bb, c->thr[k], c->cut[k], i0 + i));
            } else m = vm_none();
            t = vf_mul(d, vf_select(m, one, zero));
        }
        if (rk == MELD_RULE_BITS || (rk < 0 && c->scaled[k])) t = vf_mul(t, c->sv[k]);
        v[k] = vf_mul(t, c->wv[k]);
        u[k] = c->unweighted ? t : v[k];
        /* the vote starts at u_0, not 0 + u_0: they differ only in the sign of a zero sum, and
         * -0 >= 0 elects +1 as +0 does */
        if (cons == MELD_CONSENSUS_SUM) s = k ? vf_add(s, u[k]) : u[k];
        else if (cons == MELD_CONSENSUS_COUNT) s = k ? vf_add(s, vf_sign(u[k])) : vf_sign(u[k]);
    }
#ifdef MELD_SIMD_TABLE16
    if (rk >= 0 && cons == MELD_CONSENSUS_SUM && K <= 4) {
        /* The specialized weighted sum vote with fewer float adds and compares (on the Zen 5
         * core measured, adds and compares, float or integer, issue ~2.5 a cycle together,
         * integer logic 4; bf16 TIES K = 3 in cache: 0.337 -> 0.296 ns an element):
         * - the elected sign is s's sign bit. That differs from s >= 0 only for s = -0, which
         *   needs every u_k = -0 or +0 (x + -x rounds to +0), and zeros agree with no sign; and
         *   for a NaN s, where the lane takes s whatever agrees (s / div is s).
         * - agreement (u xor sign) > 0 as integers: no u_k is NaN where s is not.
         * - the divisor (if any) from a table indexed by the agreement pattern, built with the same adds
         *   in the same order, a zero replaced by 1 (mixed / 1 == mixed).
         * The same bits as the general form below. */
        const vi sgn = vi_and(vf_bits(s), vi_set1(0x80000000u)), z = vi_set1(0);
        vi idx = z;
        vf mixed = zero;
        for (size_t k = 0; k < K; k++) {
            const vm agree = vi_gt(vi_xor(vf_bits(u[k]), sgn), z);
            /* the first: agree ? v : +0, as 0 + v would give (v = -0 never agrees) */
#ifdef MELD_SIMD_BLEND_MASKS
            /* agree ? v : +0 (an and), then added: mixed + +0 == mixed, as mixed is never -0
             * (+0, or a sum of nonzero terms of one sign); the adds chain without the blends
             * (AVX2, bf16 TIES K = 3 in cache: ~2% faster) */
            const vf m = vf_select(agree, v[k], zero);
            mixed = k ? vf_add(mixed, m) : m;
#else
            mixed = k ? vf_mask_add(agree, mixed, mixed, v[k]) : vf_select(agree, v[k], zero);
#endif
            idx = vi_mask_or(agree, idx, vi_set1(1u << k));
        }
        *skip = 0;
        mixed = vf_select(vf_isnan(s), s, mixed);
        if (split_mixed) {
            *split_mixed = mixed;
            *split_idx = idx;
            return zero;
        }
        return tv_finish16(c, mixed, idx, b, K, divm, hb);
    }
#endif
    vm pos = vm_all();
    if (cons != MELD_CONSENSUS_NONE) pos = c->sign_in ? vm_from_i8_pos(c->sign_in + i) : vf_ge(s, zero);
    if (c->sign_out) vm_store_sign_i8(c->sign_out + i, pos);
    *skip = !has_out;
    if (!has_out) return zero;
    vf mixed = zero, div = zero;
    if (cons == MELD_CONSENSUS_NONE) {
        for (size_t k = 0; k < K; k++) mixed = vf_add(mixed, v[k]); /* v * 1 == v */
        div = c->fixed;
    } else {
        /* agree: u_k has the elected sign (u > 0 where +1 won, u < 0 where -1; zeros never
         * agree), tested as (u xor sign) > 0. The divisor sums w_k over agreeing k by masked
         * adds. */
        const vf sgn = vf_select(pos, zero, vf_set1(-0.0f));
        /* The torch form Σ v_k·agree_k also adds v_k·0, which is NaN where v_k is NaN or an
         * infinite v_k disagrees. Under the weighted sum vote (u = v) with an elected sign,
         * that happens exactly where the vote s is NaN, so those lanes take s afterwards;
         * otherwise (count vote, unweighted vote, given signs) the products are added. */
        const int nan_from_vote = cons == MELD_CONSENSUS_SUM && !c->unweighted && !c->sign_in;
        for (size_t k = 0; k < K; k++) {
            vm agree = vf_gt(vf_xor(u[k], sgn), zero);
            if (nan_from_vote) mixed = vf_mask_add(agree, mixed, mixed, v[k]);
            else mixed = vf_add(mixed, vf_mask_mul(vm_not(agree), v[k], v[k], zero)); /* v·1 == v */
            if (divm == MELD_DIVISOR_WEIGHT_SUM) div = vf_mask_add(agree, div, div, c->wv[k]);
            else if (divm == MELD_DIVISOR_COUNT) div = vf_mask_add(agree, div, div, one);
        }
        if (nan_from_vote) mixed = vf_select(vf_isnan(s), s, mixed);
    }
    /* a zero divisor counts as 1: those lanes keep mixed (mixed / 1 == mixed) */
    if (divm != MELD_DIVISOR_NONE) mixed = vf_mask_div(vf_neq(div, zero), mixed, mixed, div);
    if (!c->unit_lambda) mixed = vf_mul(mixed, c->lambda);
    if (add_base) mixed = vf_add(b, mixed);
    return mixed;
}

/* The inputs of elements [i, i + 2W) of an all-bf16 call as pairs of vectors in even/odd lane
 * order (plain loads, no widening shuffles): base (+0 without one), experts, BITS keep masks. */
MELD_VEC_INLINE void tv_pair_load_bf16(const tv_consts *c, const void *const *xp, const void *bp, size_t i,
                                       const size_t K, const int rk, const int load_base, vf *be, vf *bo, vf *xe,
                                       vf *xo, vm *bme, vm *bmo) {
    *be = *bo = vf_zero();
    if (load_base) {
        prefetch_dt(bp, MELD_BF16, i);
        vf2_load_bf16((const uint16_t *)bp + i, be, bo);
    }
    for (size_t k = 0; k < K; k++) {
        prefetch_dt(xp[k], MELD_BF16, i);
        vf2_load_bf16((const uint16_t *)xp[k] + i, &xe[k], &xo[k]);
        if (rk == MELD_RULE_BITS) vm2_from_bits(load_bits2(c->bitsp[k], i), &bme[k], &bmo[k]);
    }
}

/* Elements [i, i + 2W) of an all-bf16 call as a pair of vectors (plain stores, no narrowing
 * shuffles). */
MELD_VEC_INLINE void tv_pair_bf16(const tv_consts *c, const void *const *xp, const void *bp, void *out, size_t i0,
                                  size_t i, const size_t K, const int cons, const int divm, const int rk,
                                  const int hb, const int load_base) {
    vf be, bo, xe[MELD_MAX_MODELS], xo[MELD_MAX_MODELS];
    vm bme[MELD_MAX_MODELS], bmo[MELD_MAX_MODELS];
    int skip;
    tv_pair_load_bf16(c, xp, bp, i, K, rk, load_base, &be, &bo, xe, xo, bme, bmo);
    vf me = tv_vec(c, be, xe, bme, i0, i, K, cons, divm, rk, hb, 1, &skip, NULL, NULL);
    vf mo = tv_vec(c, bo, xo, bmo, i0, i, K, cons, divm, rk, hb, 1, &skip, NULL, NULL);
    vf2_stream_bf16((uint16_t *)out + i, me, mo);
}

#ifdef MELD_SIMD_SPLIT_VOTE
enum { TV_SPLIT_PAIRS = 8 };
/* TV_SPLIT_PAIRS pairs of tv_pair_bf16 from i (where tv_table_divisor), in two loops: the
 * votes, then the divisions and the rest. One vector's whole chain (loads to store, the
 * divide's latency in it) ran longer than the out-of-order window reaches; split in two loops
 * through L1, each loop's chain is short and the window overlaps several iterations. The same
 * operations on the same values. */
MELD_VEC_INLINE void tv_pairs_split(const tv_consts *c, const void *const *xp, const void *bp, void *out, size_t i0,
                                    size_t i, const size_t K, const int cons, const int divm, const int rk, const int hb) {
    vf mb[2 * TV_SPLIT_PAIRS], bb[2 * TV_SPLIT_PAIRS];
    vi ib[2 * TV_SPLIT_PAIRS];
    int skip;
    for (size_t p = 0; p < TV_SPLIT_PAIRS; p++) {
        const size_t ii = i + p * 2 * MELD_W;
        vf be, bo, xe[MELD_MAX_MODELS], xo[MELD_MAX_MODELS];
        vm bme[MELD_MAX_MODELS], bmo[MELD_MAX_MODELS];
        /* hb as load_base: tv_table_divisor holds only for a specialized rule (rk >= 0), where
         * tv_body loads the base exactly when there is one */
        tv_pair_load_bf16(c, xp, bp, ii, K, rk, hb, &be, &bo, xe, xo, bme, bmo);
        tv_vec(c, be, xe, bme, i0, ii, K, cons, divm, rk, hb, 1, &skip, &mb[2 * p], &ib[2 * p]);
        tv_vec(c, bo, xo, bmo, i0, ii, K, cons, divm, rk, hb, 1, &skip, &mb[2 * p + 1], &ib[2 * p + 1]);
        bb[2 * p] = be;
        bb[2 * p + 1] = bo;
    }
    for (size_t p = 0; p < TV_SPLIT_PAIRS; p++) {
        vf me = tv_finish16(c, mb[2 * p], ib[2 * p], bb[2 * p], K, divm, hb);
        vf mo = tv_finish16(c, mb[2 * p + 1], ib[2 * p + 1], bb[2 * p + 1], K, divm, hb);
        vf2_stream_bf16((uint16_t *)out + i + p * 2 * MELD_W, me, mo);
    }
}
#endif

/* The body, inlined with compile-time K, input dtype (-1: per input), consensus, divisor and
 * rule kind (rk, -1: per expert, with the optional inputs and outputs checked at run time) in
 * the common cases so loops unroll and branches fold; the generic call passes runtime values.
 * A specialized rk means a weighted vote, no sign input or output and an output, and either a
 * base with inputs that are not deltas (hb 1: task arithmetic, TIES, DARE) or deltas with no
 * base (hb 0: linear), so those tests fold away (left to the compiler, they were branches in the
 * loop, a dozen taken jumps a vector in the bf16 TIES body); for TOP and
 * ALL also scale 1 (scale is applied as t * s, and t * 1 == t).
 * Every variant performs the same operations in the same order (bit-identical results). */
MELD_BODY_INLINE void tv_body(size_t n, size_t i0, const meld_uk_tv_args *a, const size_t K, const int dt,
                              const int cons, const int divm, const int rk, const int hb) {
    tv_consts c;
    const void *xp[MELD_MAX_MODELS];
    int xdt[MELD_MAX_MODELS];
    for (size_t k = 0; k < K; k++) {
        /* TOP in a specialized body: the call lies wholly before or after each tie cutoff (see
         * tv_uniform_rule), so the rule is one compare: |d| > thr, or |d| >= thr as |d| > thr - 1
         * (signed: thr = 0 keeps all) */
        c.gt_thr[k] = vi_set1(a->rule[k].cut >= i0 + n ? a->rule[k].thr - 1u : a->rule[k].thr);
        c.wv[k] = vf_set1(a->w[k]);
        c.sv[k] = vf_set1(a->rule[k].scale);
        c.scaled[k] = a->rule[k].scale != 1.0f;
        /* rule fields in locals: stores through the untyped output may alias the argument struct */
        c.kind[k] = a->rule[k].kind;
        c.thr[k] = a->rule[k].thr; c.thr2[k] = a->rule[k].thr2;
        c.cut[k] = a->rule[k].cut; c.cut2[k] = a->rule[k].cut2;
        c.bitsp[k] = a->rule[k].bits;
        xp[k] = a->x[k].p;
        xdt[k] = dt >= 0 ? dt : a->x[k].dt;
    }
    const void *bp = a->base.p;
    const int bdt = dt >= 0 ? dt : a->base.dt;
    c.deltas = a->x_are_deltas;
    c.unweighted = rk < 0 && a->vote_unweighted;
    c.has_base = bp != NULL;
    /* in locals: stores through the untyped output may alias the argument struct */
    void *const out = a->out;
    const int out_dt = a->out_dt;
    c.sign_out = rk < 0 ? a->sign_out : NULL;
    c.sign_in = rk < 0 ? a->sign_in : NULL;
    c.lambda = vf_set1(a->lambda);
    c.unit_lambda = a->lambda == 1.0f;
#ifdef MELD_SIMD_TABLE16
    if (tv_table_divisor(K, cons, divm, rk)) {
        float tab[16];
        for (unsigned p = 0; p < 16; p++) {
            float d = 0.0f; /* the masked adds of tv_vec's general form, in its order */
            for (size_t k = 0; k < K; k++)
                if (p >> k & 1u) d = d + (divm == MELD_DIVISOR_WEIGHT_SUM ? a->w[k] : 1.0f);
            tab[p] = d != 0.0f ? d : 1.0f;
        }
        c.divtab = vtab16_load(tab);
    }
#endif
    c.fixed = vf_set1(cons == MELD_CONSENSUS_NONE && divm == MELD_DIVISOR_COUNT ? (float)K : a->fixed_div);
    const int has_out = rk >= 0 || out != NULL, load_base = rk >= 0 ? hb : bp != NULL;
    size_t i = 0;
    int skip;
    vm bme[MELD_MAX_MODELS];
    /* all bf16 and no index-dependent rule: pairs of vectors (tv_pair_bf16) */
    if (dt == MELD_BF16 && (rk == MELD_RULE_ALL || rk == MELD_RULE_TOP || rk == MELD_RULE_BITS) && out_dt == MELD_BF16) {
        /* (two pairs an iteration with one prefetch a cache line measured slower on AVX2: spills) */
#ifdef MELD_SIMD_SPLIT_VOTE
        if (tv_table_divisor(K, cons, divm, rk))
            for (; i + 2 * MELD_W * TV_SPLIT_PAIRS <= n; i += 2 * MELD_W * TV_SPLIT_PAIRS)
                tv_pairs_split(&c, xp, bp, out, i0, i, K, cons, divm, rk, hb);
#endif
        for (; i + 2 * MELD_W <= n; i += 2 * MELD_W)
            tv_pair_bf16(&c, xp, bp, out, i0, i, K, cons, divm, rk, hb, load_base);
    }
    for (; i < n; i += MELD_W) {
        if (load_base) prefetch_dt(bp, bdt, i);
        vf b = load_base ? load_dt(bp, bdt, i) : vf_zero(), x[MELD_MAX_MODELS];
        for (size_t k = 0; k < K; k++) {
            prefetch_dt(xp[k], xdt[k], i);
            x[k] = load_dt(xp[k], xdt[k], i);
            if (rk == MELD_RULE_BITS) bme[k] = load_bits(c.bitsp[k], i);
        }
        vf mixed = tv_vec(&c, b, x, bme, i0, i, K, cons, divm, rk, hb, has_out, &skip, NULL, NULL);
        if (!skip) stream_dt(out, out_dt, i, mixed);
    }
    stream_fence();
}

#define TV_K(KK, DT, C, D, R, H) case KK: tv_body(n, i0, a, KK, DT, C, D, R, H); return
#define TV_KS(DT, C, D, R, H) switch (a->k) { TV_K(1, DT, C, D, R, H); TV_K(2, DT, C, D, R, H); TV_K(3, DT, C, D, R, H); TV_K(4, DT, C, D, R, H); default: break; }
#define TV_DT(C, D, R, H) switch (dt) { case MELD_F32: TV_KS(MELD_F32, C, D, R, H) break; \
    case MELD_BF16: TV_KS(MELD_BF16, C, D, R, H) break; case MELD_F16: TV_KS(MELD_F16, C, D, R, H) break; default: break; }
#define TV_RK(C, D, H) switch (rk) { case MELD_RULE_ALL: TV_DT(C, D, MELD_RULE_ALL, H) break; \
    case MELD_RULE_TOP: TV_DT(C, D, MELD_RULE_TOP, H) break; case MELD_RULE_BITS: TV_DT(C, D, MELD_RULE_BITS, H) break; \
    default: TV_DT(C, D, -1, -1) break; }

/* The rule kind every expert shares when a specialized body applies (see tv_body), else -1.
 * any_cut: accept TOP cutoffs inside the call (the caller splits around them). */
static int tv_uniform_rule(size_t n, size_t i0, const meld_uk_tv_args *a, int any_cut) {
    if (!a->k || a->vote_unweighted || a->sign_in || a->sign_out || !a->out) return -1;
    if (!a->base.p != !!a->x_are_deltas) return -1; /* a base and not deltas, or deltas and no base (hb) */
    int rk = (int)a->rule[0].kind;
    for (size_t k = 0; k < a->k; k++) {
        const meld_uk_rule *r = &a->rule[k];
        if ((int)r->kind != rk) return -1;
        if (rk != MELD_RULE_BITS && r->scale != 1.0f) return -1;
        if (rk == MELD_RULE_TOP && !any_cut && r->cut > i0 && r->cut < i0 + n) return -1; /* the cutoff falls inside */
        if (rk == MELD_RULE_TOP && r->thr >= 0x7f800000u) return -1; /* Inf/NaN may be dropped (see tv_vec) */
    }
    return rk == MELD_RULE_ALL || rk == MELD_RULE_TOP || rk == MELD_RULE_BITS ? rk : -1;
}

static void tv_merge_call(size_t n, size_t i0, const meld_uk_tv_args *a) {
    const int dt = uniform_dt(a->base, a->x, a->k);
    const int rk = tv_uniform_rule(n, i0, a, 0);
    if (dt >= 0 && a->k <= 4 && !a->sign_in) {
        if (!a->base.p) { /* deltas and no base (linear, an applied selection): no vote */
            if (a->consensus == MELD_CONSENSUS_NONE && a->divisor == MELD_DIVISOR_NONE) TV_RK(MELD_CONSENSUS_NONE, MELD_DIVISOR_NONE, 0)
            if (a->consensus == MELD_CONSENSUS_NONE && a->divisor == MELD_DIVISOR_WEIGHT_SUM) TV_RK(MELD_CONSENSUS_NONE, MELD_DIVISOR_WEIGHT_SUM, 0)
        } else {
            if (a->consensus == MELD_CONSENSUS_NONE && a->divisor == MELD_DIVISOR_NONE) TV_RK(MELD_CONSENSUS_NONE, MELD_DIVISOR_NONE, 1)
            if (a->consensus == MELD_CONSENSUS_NONE && a->divisor == MELD_DIVISOR_WEIGHT_SUM) TV_RK(MELD_CONSENSUS_NONE, MELD_DIVISOR_WEIGHT_SUM, 1)
            if (a->consensus == MELD_CONSENSUS_SUM && a->divisor == MELD_DIVISOR_WEIGHT_SUM) TV_RK(MELD_CONSENSUS_SUM, MELD_DIVISOR_WEIGHT_SUM, 1)
            if (a->consensus == MELD_CONSENSUS_SUM && a->divisor == MELD_DIVISOR_NONE) TV_RK(MELD_CONSENSUS_SUM, MELD_DIVISOR_NONE, 1)
        }
    }
    tv_body(n, i0, a, a->k, -1, a->consensus, a->divisor, -1, -1);
}

/* The arguments of the part of a call from local index off on (off: a multiple of 8, so bitmaps
 * stay byte-aligned). */
static void tv_args_from(const meld_uk_tv_args *a, size_t off, meld_uk_tv_args *b, meld_uk_in *x, meld_uk_rule *r) {
    *b = *a;
    for (size_t k = 0; k < a->k; k++) {
        x[k] = a->x[k];
        x[k].p = (const char *)x[k].p + off * dt_bytes(x[k].dt);
        r[k] = a->rule[k];
        if (r[k].bits) r[k].bits += off / 8;
    }
    b->x = x;
    b->rule = r;
    if (b->base.p) b->base.p = (const char *)b->base.p + off * dt_bytes(b->base.dt);
    if (b->out) b->out = (char *)b->out + off * dt_bytes(b->out_dt);
    if (b->sign_in) b->sign_in += off;
    if (b->sign_out) b->sign_out += off;
}

/* A TOP rule's tie cutoff inside the call makes that rule index-dependent there. Only the
 * vector pair holding the cutoff needs the generic body: the call is split around it, so a
 * tile holding a cutoff (one per expert and tensor) does not run wholly generic, 2-3x slower. */
void UK(meld_xf32_tv_merge)(size_t n, size_t i0, const meld_uk_tv_args *a) {
    enum { G = 2 * MELD_W > MELD_UK_ALIGN ? 2 * MELD_W : MELD_UK_ALIGN };
    size_t cut = SIZE_MAX;
    if (tv_uniform_rule(n, i0, a, 1) == MELD_RULE_TOP)
        for (size_t k = 0; k < a->k; k++)
            if (a->rule[k].cut > i0 && a->rule[k].cut < i0 + n && a->rule[k].cut < cut) cut = a->rule[k].cut;
    if (cut == SIZE_MAX) { tv_merge_call(n, i0, a); return; }
    const size_t c = (cut - i0) / G * G, e = c + G < n ? c + G : n;
    meld_uk_tv_args b;
    meld_uk_in x[MELD_MAX_MODELS];
    meld_uk_rule r[MELD_MAX_MODELS];
    if (c) tv_merge_call(c, i0, a); /* no cutoff inside: cut is the first */
    tv_args_from(a, c, &b, x, r);
    tv_body(e - c, i0 + c, &b, b.k, -1, b.consensus, b.divisor, -1, -1);
    if (e < n) {
        tv_args_from(a, e, &b, x, r);
        UK(meld_xf32_tv_merge)(n - e, i0 + e, &b); /* later cutoffs */
    }
}
