/* Candidate collection for exact magnitude selection (template). Contract: ukernel.h. */

void UK(meld_xf32_collect)(size_t n, size_t i0, const meld_uk_collect_args *a) {
    uint32_t lanes[MELD_W];
    for (size_t i = 0; i < n; i += MELD_W) {
        vf b = a->base.p ? load_dt(a->base.p, a->base.dt, i) : vf_zero();
        for (size_t k = 0; k < a->k; k++) {
            vf d = load_dt(a->x[k].p, a->x[k].dt, i);
            if (a->base.p) d = vf_sub(d, b);
            vi bits = vf_absbits(d);
            vm above = vi_gt(bits, vi_set1(a->hi[k]));
            vm in = vm_andnot(vm_or(above, vi_lt(bits, vi_set1(a->lo[k]))), vm_all());
            a->gt[k] += (uint64_t)__builtin_popcount(vm_to_bits(above));
            uint32_t m = vm_to_bits(in);
            if (!m) continue;
            vi_store(lanes, bits);
            while (m) {
                int l = __builtin_ctz(m);
                m &= m - 1;
                size_t c = a->count[k]++;
                if (c < a->cap) {
                    a->cand_bits[k][c] = lanes[l];
                    a->cand_idx[k][c] = i0 + i + (size_t)l;
                }
            }
        }
    }
}
