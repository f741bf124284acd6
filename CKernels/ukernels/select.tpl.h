/* Candidate collection for exact magnitude selection (template). Contract: ukernel.h. */

void UK(meld_xf32_collect)(size_t n, size_t i0, const meld_uk_collect_args *a) {
    (void)i0;
    for (size_t i = 0; i < n; i += MELD_W) {
        vf b = a->base.p ? load_dt(a->base.p, a->base.dt, i) : vf_zero();
        for (size_t k = 0; k < a->k; k++) {
            vf d = load_dt(a->x[k].p, a->x[k].dt, i);
            if (a->base.p) d = vf_sub(d, b);
            vi bits = vf_absbits(d);
            vm above = vi_gt(bits, vi_set1(a->hi[k]));
            vm in = vm_andnot(vm_or(above, vi_lt(bits, vi_set1(a->lo[k]))), vm_all());
            a->gt[k] += (uint64_t)__builtin_popcount(vm_to_bits(above));
            if (!vm_any(in)) continue;
            size_t c = a->count[k];
            if (c + MELD_UK_ALIGN <= a->cap) a->count[k] = c + vi_compress_store(a->cand[k] + c, in, bits);
            else a->count[k] = c + (size_t)__builtin_popcount(vm_to_bits(in));
        }
    }
}
