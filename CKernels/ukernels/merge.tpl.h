/* Merge microkernels (templates): dtype conversion, linear, the task-vector pass.
 * Contract: ukernel.h. */

void UK(meld_xf32_convert)(size_t n, meld_uk_in src, void *dst, int dst_dt) {
    for (size_t i = 0; i < n; i += MELD_W) store_dt(dst, dst_dt, i, load_dt(src.p, src.dt, i));
}

/* out = (sum_k w_k * x_k) [/ div]; div == 0 means no division. */
void UK(meld_xf32_linear)(size_t n, size_t k, const meld_uk_in *x, const float *w, float div,
                          void *out, int out_dt) {
    for (size_t i = 0; i < n; i += MELD_W) {
        vf acc = vf_zero();
        for (size_t j = 0; j < k; j++) acc = vf_add(acc, vf_mul(load_dt(x[j].p, x[j].dt, i), vf_set1(w[j])));
        if (div != 0.0f) acc = vf_div(acc, vf_set1(div));
        store_dt(out, out_dt, i, acc);
    }
}

void UK(meld_xf32_tv_merge)(size_t n, size_t i0, const meld_uk_tv_args *a) {
    const size_t K = a->k;
    const vf one = vf_set1(1.0f), zero = vf_zero();
    vf v[MELD_MAX_MODELS], u[MELD_MAX_MODELS];
    for (size_t i = 0; i < n; i += MELD_W) {
        vf b = a->base.p ? load_dt(a->base.p, a->base.dt, i) : zero;
        vf s = zero;
        for (size_t k = 0; k < K; k++) {
            const meld_uk_rule *r = &a->rule[k];
            vf d = load_dt(a->x[k].p, a->x[k].dt, i);
            if (!a->x_are_deltas) d = vf_sub(d, b);
            vf t = d;
            if (r->kind != MELD_RULE_ALL) t = vf_mul(d, vf_select(rule_mask(r, d, i0 + i, i), one, zero));
            if (r->scale != 1.0f) t = vf_mul(t, vf_set1(r->scale));
            v[k] = vf_mul(t, vf_set1(a->w[k]));
            u[k] = a->vote_unweighted ? t : v[k];
            if (a->consensus == MELD_CONSENSUS_SUM) s = vf_add(s, u[k]);
            else if (a->consensus == MELD_CONSENSUS_COUNT) s = vf_add(s, vf_sign(u[k]));
        }
        vm pos = vm_all();
        if (a->consensus != MELD_CONSENSUS_NONE)
            pos = a->sign_in ? vm_from_i8_pos(a->sign_in + i) : vf_ge(s, zero);
        if (a->sign_out) vm_store_sign_i8(a->sign_out + i, pos);
        if (!a->out) continue;
        vf mixed = zero, div = zero;
        for (size_t k = 0; k < K; k++) {
            vf ag = one;
            if (a->consensus != MELD_CONSENSUS_NONE) {
                vm agree = vm_or(vm_and(pos, vf_gt(u[k], zero)), vm_andnot(pos, vf_lt(u[k], zero)));
                ag = vf_select(agree, one, zero);
            }
            mixed = vf_add(mixed, vf_mul(v[k], ag));
            if (a->divisor == MELD_DIVISOR_WEIGHT_SUM) div = vf_add(div, vf_mul(vf_set1(a->w[k]), ag));
            else if (a->divisor == MELD_DIVISOR_COUNT) div = vf_add(div, ag);
        }
        if (a->divisor != MELD_DIVISOR_NONE) {
            if (a->consensus == MELD_CONSENSUS_NONE && a->divisor == MELD_DIVISOR_WEIGHT_SUM)
                div = vf_set1(a->fixed_div);
            div = vf_select(vf_eq(div, zero), one, div);
            mixed = vf_div(mixed, div);
        }
        mixed = vf_mul(mixed, vf_set1(a->lambda));
        if (a->base.p) mixed = vf_add(b, mixed);
        store_dt(a->out, a->out_dt, i, mixed);
    }
}
