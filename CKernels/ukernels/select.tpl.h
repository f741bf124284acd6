/* Candidate collection for exact magnitude selection (template). Contract: ukernel.h. */

void UK(meld_xf32_collect)(size_t n, size_t i0, const meld_uk_collect_args *a) {
    (void)i0;
    /* counters live in registers/stack for the call: the callers' arrays may share cache
     * lines between threads */
    uint64_t gt[MELD_MAX_MODELS], eh[MELD_MAX_MODELS], el[MELD_MAX_MODELS];
    size_t count[MELD_MAX_MODELS];
    for (size_t k = 0; k < a->k; k++) { gt[k] = eh[k] = el[k] = 0; count[k] = a->count[k]; }
    for (size_t i = 0; i < n; i += MELD_W) {
        vf b = a->base.p ? load_dt(a->base.p, a->base.dt, i) : vf_zero();
        for (size_t k = 0; k < a->k; k++) {
            vf d = load_dt(a->x[k].p, a->x[k].dt, i);
            if (a->base.p) d = vf_sub(d, b);
            vi bits = vf_absbits(d);
            vm above = vi_gt(bits, vi_set1(a->hi[k]));
            vm ehi = vi_eq(bits, vi_set1(a->hi[k])), elo = vi_eq(bits, vi_set1(a->lo[k]));
            vm in = vm_andnot(vm_or(vm_or(above, vi_lt(bits, vi_set1(a->lo[k]))), vm_or(ehi, elo)), vm_all());
            gt[k] += (uint64_t)__builtin_popcount(vm_to_bits(above));
            eh[k] += (uint64_t)__builtin_popcount(vm_to_bits(ehi));
            el[k] += (uint64_t)__builtin_popcount(vm_to_bits(elo));
            /* no "any candidate?" branch: it is taken 30-60% of the time, unpredictably */
            size_t c = count[k];
            if (c + MELD_UK_ALIGN <= a->cap) count[k] = c + vi_compress_store(a->cand[k] + c, in, bits);
            else count[k] = c + (size_t)__builtin_popcount(vm_to_bits(in));
        }
    }
    for (size_t k = 0; k < a->k; k++) {
        a->gt[k] += gt[k];
        a->eq_hi[k] += eh[k];
        a->eq_lo[k] += el[k];
        a->count[k] = count[k];
    }
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
