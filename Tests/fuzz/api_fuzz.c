/* Randomized calls of the public C API with arguments drawn from valid, edge and invalid values:
 * sizes that disagree, NULL pointers, unknown enum values, NaN/Inf/huge parameters, ids and
 * offsets out of range, inconsistent selections and packed deltas, every ISA path the machine
 * has, 1 and 3 threads. Every buffer is allocated to exactly the bytes its declared size needs,
 * so under AddressSanitizer a read or write past what the caller handed in is a report.
 *
 * The contract checked: every call returns, and returns one of the meld_status values (never a
 * crash, a hang or an out-of-bounds access); a call whose arguments are all valid by
 * construction returns MELD_OK (so the fuzz also reaches the kernels, not only the checks), and
 * the name functions return strings for any value.
 *
 *   build/api-fuzz [ITERATIONS] [SEED]      (make fuzz builds it with ASan + UBSan) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <meld.h>

static uint64_t rng_state;
static uint64_t next(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static size_t below(size_t m) { return m ? (size_t)(next() % m) : 0; }
static int chance(int percent) { return (int)below(100) < percent; }
static double unit(void) { return (double)(next() >> 11) * 0x1p-53; }

/* ---- values ---------------------------------------------------------------------------- */
static float any_float(void) {
    static const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, NAN, INFINITY, -INFINITY, 1e-40f, 3e38f, -3e38f, 1e-7f, 0.5f};
    if (chance(25)) return special[below(sizeof special / sizeof *special)];
    return (float)(unit() * 4 - 2);
}
static double any_density(void) {
    static const double special[] = {0.0, 1.0, -0.1, 1.5, NAN, INFINITY, 1e-9, 0.999999};
    return chance(25) ? special[below(sizeof special / sizeof *special)] : unit();
}
static float any_weight(void) { return chance(85) ? (float)(unit() * 2 - 0.5) : any_float(); }

/* Element values: mostly from a grid of 64 small numbers (so |deltas| tie, trim and conflict as
 * in real bf16 checkpoints), some special values and random bit patterns (NaN, Inf, subnormals). */
static void fill(void *p, size_t n, meld_dtype dt) {
    for (size_t i = 0; i < n; i++) {
        float v = chance(95) ? (float)((int)below(64) - 32) * 0.01f : any_float();
        uint32_t b;
        memcpy(&b, &v, 4);
        if (chance(2)) b = (uint32_t)next();
        if (dt == MELD_F32) memcpy((char *)p + 4 * i, &b, 4);
        else if (dt == MELD_BF16) { uint16_t h = (uint16_t)(b >> 16); memcpy((char *)p + 2 * i, &h, 2); }
        else if (dt == MELD_F16) { _Float16 h = (_Float16)v; if (chance(2)) memcpy(&h, &b, 2); memcpy((char *)p + 2 * i, &h, 2); }
    }
}

/* ---- buffers: every allocation is remembered and freed at the end of the iteration ---------- */
static void *allocs[4096];
static size_t nallocs;
static void *alloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    if (nallocs < sizeof allocs / sizeof *allocs) allocs[nallocs++] = p;
    else { fprintf(stderr, "too many buffers\n"); exit(2); }
    return p;
}
static void free_all(void) { while (nallocs) free(allocs[--nallocs]); }

static size_t any_n(void) {
    static const size_t sizes[] = {0, 1, 2, 7, 8, 15, 16, 17, 33, 64, 255, 1000, 4096, 4113};
    if (chance(6)) return 65536 + below(20000); /* past the sampled-selection threshold */
    return sizes[below(sizeof sizes / sizeof *sizes)];
}
static meld_dtype any_dtype(int *valid) {
    if (chance(94)) return (meld_dtype)below(3);
    *valid = 0;
    static const int bad[] = {3, 7, -1, 255};
    return (meld_dtype)bad[below(4)];
}
static size_t bytes_of(size_t n, meld_dtype dt) { size_t s = meld_dtype_size(dt); return n * (s ? s : 4); }

/* A view of about n elements (sometimes another count), maybe NULL data, maybe a bad dtype. */
static meld_view any_view(size_t n, int *valid) {
    meld_dtype dt = any_dtype(valid);
    size_t m = n;
    if (chance(4)) { m = n + 1 + below(3); *valid = 0; }
    void *p = alloc(bytes_of(m, dt));
    if (meld_dtype_size(dt)) fill(p, m, dt);
    if (m && chance(3)) { *valid = 0; return (meld_view){NULL, m, dt}; }
    return (meld_view){p, m, dt};
}
static meld_span any_span(size_t n, int *valid) {
    meld_view v = any_view(n, valid);
    return (meld_span){(void *)v.data, v.numel, v.dtype};
}
/* k views, and always at least two (calls that take one or two read x[0], x[1]); the extra
 * ones do not count toward validity */
static meld_view *views(size_t k, size_t n, int *valid) {
    meld_view *v = alloc((k > 2 ? k : 2) * sizeof *v);
    int spare = 1;
    for (size_t i = 0; i < (k > 2 ? k : 2); i++) v[i] = any_view(n, i < k ? valid : &spare);
    return v;
}
static size_t any_k(int *valid) {
    if (chance(5)) { *valid = 0; return chance(50) ? 0 : 65; }
    return 1 + below(5);
}
/* linear and task arithmetic with normalize refuse a weight sum of zero */
static int zero_sum(const float *w, size_t k) {
    float sum = 0;
    for (size_t i = 0; i < k; i++) sum += w[i];
    return sum == 0;
}
static float *any_weights(size_t k, int *valid) {
    float *w = alloc((k ? k : 1) * sizeof *w);
    for (size_t i = 0; i < k; i++) { w[i] = any_weight(); if (!isfinite(w[i]) || fabsf(w[i]) > 1e30f) *valid = 0; }
    return w;
}
static double *any_densities(size_t k, int *valid) {
    double *d = alloc((k ? k : 1) * sizeof *d);
    for (size_t i = 0; i < k; i++) { d[i] = any_density(); if (!(d[i] >= 0 && d[i] <= 1)) *valid = 0; }
    return d;
}
static meld_selection any_selection(size_t n) {
    return (meld_selection){.threshold = chance(50) ? (uint32_t)below(0x7f800001u) : (uint32_t)next(),
                            .tie_cutoff = chance(70) ? below(n + 1) : next(), .kept = chance(70) ? below(n + 1) : next()};
}
static meld_sparsifier any_sparsifier(size_t n, int *valid) {
    meld_sparsifier s = {0};
    s.method = (meld_sparsify_method)below(7); /* 6: unknown */
    if (s.method == 6) *valid = 0;
    s.density = any_density();
    if (!(s.density >= 0 && s.density <= 1)) *valid = 0;
    s.gamma = chance(80) ? unit() * 0.3 : any_density();
    s.epsilon = chance(80) ? unit() * 0.1 : any_density();
    s.rescale = (meld_rescale)below(4); /* 3: unknown */
    if (s.rescale == 3) *valid = 0;
    s.seed = next();
    s.stream = next();
    s.row_length = chance(50) ? 0 : below(n + 2);
    if (s.method == MELD_SPARSIFY_MASK) {
        /* bytes for the largest count a view of about n may declare (any_view) */
        uint8_t *m = alloc((n + 3 + 7) / 8);
        for (size_t i = 0; i < (n + 3 + 7) / 8; i++) m[i] = (uint8_t)next();
        s.mask = chance(95) ? m : NULL;
        if (!s.mask) *valid = 0;
    }
    /* the rules these methods put on their parameters are not modelled here: any status goes */
    if (s.method == MELD_SPARSIFY_DELLA || s.method == MELD_SPARSIFY_MAGNITUDE_OUTLIERS || s.row_length) *valid = 0;
    return s;
}

/* Every element finite (the geometric merges refuse NaN and Inf, see meld_sparse.h) */
static int finite_view(meld_view v) {
    if (!v.data || !meld_dtype_size(v.dtype)) return 0;
    for (size_t i = 0; i < v.numel; i++) {
        uint32_t b = 0;
        if (v.dtype == MELD_F32) { memcpy(&b, (const char *)v.data + 4 * i, 4); if ((b & 0x7f800000u) == 0x7f800000u) return 0; }
        else { uint16_t h; memcpy(&h, (const char *)v.data + 2 * i, 2);
               if (v.dtype == MELD_BF16 ? (h & 0x7f80u) == 0x7f80u : (h & 0x7c00u) == 0x7c00u) return 0; }
    }
    return 1;
}

/* An optional base: absent ({NULL, 0}), the given one, or NULL data with a count (refused). */
static meld_view maybe_base(meld_view base, size_t n, int *valid) {
    if (chance(30)) return (meld_view){NULL, 0, MELD_F32};
    if (chance(5)) { *valid = 0; return (meld_view){NULL, n ? n : 1, MELD_F32}; }
    return base;
}

/* ---- the calls --------------------------------------------------------------------------- */
static size_t calls, ok_calls;
static int failed;

static meld_context *current; /* the context of the iteration: its message on a refusal */
static void check(meld_status s, int valid, const char *what, size_t iter) {
    calls++;
    if ((int)s < 0 || (int)s > MELD_ERR_BUILD_FAILED || !meld_status_string(s) || !*meld_status_string(s)) {
        fprintf(stderr, "iteration %zu: %s returned %d, not a meld_status\n", iter, what, (int)s);
        failed = 1;
    }
    /* a request valid by construction must succeed (out of memory aside) */
    if (valid && s != MELD_OK && s != MELD_ERR_OUT_OF_MEMORY) {
        fprintf(stderr, "iteration %zu: %s refused valid arguments: %s (%s)\n", iter, what, meld_status_string(s),
                meld_context_last_error(current));
        failed = 1;
    }
    ok_calls += s == MELD_OK;
}

static void noop_window(void *user, size_t first, size_t count) { (void)user; (void)first; (void)count; }

static void fuzz_merge(meld_context *ctx, size_t it) {
    int valid = 1;
    const size_t n = any_n(), k = any_k(&valid);
    meld_view base = any_view(n, &valid);
    meld_view *x = views(k, n, &valid);
    float *w = any_weights(k, &valid);
    meld_span out = any_span(n, &valid);
    meld_ties_options opt = meld_ties_options_default();
    if (chance(20)) { opt.consensus = (meld_consensus)below(4); opt.divisor = (meld_divisor)below(4); opt.vote_unweighted = (int)below(2); }
    if (chance(10)) opt.lambda = any_float();
    const int opt_valid = opt.consensus < 3 && opt.divisor < 3 && isfinite(opt.lambda) && fabsf(opt.lambda) <= 1e30f;
    switch (below(17)) {
    case 0: check(meld_convert(ctx, base, out), valid, "meld_convert", it); break;
    case 1: {
        const int norm = (int)below(2);
        check(meld_linear(ctx, k, x, w, norm, out), valid && !(norm && zero_sum(w, k)), "meld_linear", it);
        break;
    }
    case 2: {
        const float lambda = chance(80) ? 1.0f : any_float();
        const int norm = (int)below(2);
        check(meld_task_arithmetic(ctx, base, k, x, w, lambda, norm, out),
              valid && isfinite(lambda) && fabsf(lambda) <= 1e30f && !(norm && zero_sum(w, k)), "meld_task_arithmetic", it);
        break;
    }
    case 3: {
        uint64_t kk;
        check(meld_density_count(any_density(), chance(5) ? SIZE_MAX : n, &kk), 0, "meld_density_count", it);
        check(meld_select_topk(ctx, base, chance(70) ? below(n + 1) : next(), chance(97) ? &(meld_selection){0} : NULL), 0, "meld_select_topk", it);
        break;
    }
    case 4: {
        meld_selection sel;
        const double d = any_density();
        check(meld_magnitude_select(ctx, base, d, &sel), valid && d >= 0 && d <= 1 && meld_dtype_size(base.dtype), "meld_magnitude_select", it);
        break;
    }
    case 5: {
        double *d = any_densities(k, &valid);
        meld_selection *sel = alloc((k ? k : 1) * sizeof *sel);
        check(meld_task_select(ctx, base, k, x, d, sel), valid, "meld_task_select", it);
        break;
    }
    case 6: {
        meld_selection sel = any_selection(n);
        check(meld_apply_selection(ctx, base, &sel, out), 0, "meld_apply_selection", it);
        break;
    }
    case 7: {
        const size_t m = chance(90) ? n : n + 1;
        int8_t *sign = alloc(m ? m : 1);
        check(meld_sign_elect(ctx, k, x, chance(80) ? w : NULL, (meld_consensus)below(4), sign, m), 0, "meld_sign_elect", it);
        break;
    }
    case 8: {
        int8_t *sign = alloc(n + 3); /* the largest count a view of about n may declare */
        for (size_t i = 0; i < n + 3; i++) sign[i] = chance(95) ? (chance(50) ? 1 : -1) : (int8_t)next();
        meld_view b = maybe_base(base, n, &valid);
        check(meld_disjoint_merge(ctx, b, k, x, w, chance(95) ? sign : NULL, (int)below(2), (meld_divisor)below(4), chance(80) ? 1.0f : any_float(), out),
              0, "meld_disjoint_merge", it);
        break;
    }
    case 9: {
        double *d = any_densities(k, &valid);
        check(meld_ties(ctx, base, k, x, w, d, &opt, out), valid && opt_valid, "meld_ties", it);
        break;
    }
    case 10: {
        meld_selection *sel = alloc((k ? k : 1) * sizeof *sel);
        for (size_t i = 0; i < k; i++) sel[i] = any_selection(n);
        check(meld_ties_fused(ctx, base, k, x, w, sel, &opt, out), 0, "meld_ties_fused", it);
        break;
    }
    case 11:
    case 12: {
        meld_sparsifier *sp = alloc((k ? k : 1) * sizeof *sp);
        for (size_t i = 0; i < k; i++) sp[i] = any_sparsifier(n, &valid);
        meld_merge_options mo = {.consensus = (meld_consensus)below(3), .divisor = (meld_divisor)below(3),
                                 .vote_unweighted = (int)below(2), .lambda = chance(90) ? 1.0f : any_float()};
        if (!isfinite(mo.lambda) || fabsf(mo.lambda) > 1e30f) valid = 0;
        if (chance(50)) {
            check(meld_merge_task_vectors(ctx, base, k, x, w, sp, &mo, out), 0, "meld_merge_task_vectors", it);
        } else {
            meld_merge_plan *plan = NULL;
            meld_status s = meld_merge_plan_create(ctx, base, k, x, w, sp, &mo, &plan);
            check(s, 0, "meld_merge_plan_create", it);
            if (s == MELD_OK) {
                /* a range of the output: first + out.numel within n, or past it */
                const size_t first = chance(80) ? below(n + 1) : n + below(5);
                const size_t len = first <= n && chance(80) ? below(n - first + 1) : below(n + 3);
                int v2 = 1;
                meld_span part = any_span(len, &v2);
                check(meld_merge_plan_run(ctx, plan, first, part), 0, "meld_merge_plan_run", it);
                check(meld_merge_plan_destroy(plan), 1, "meld_merge_plan_destroy", it);
            }
        }
        break;
    }
    case 13: {
        const size_t nx = x[0].numel; /* the mask covers the input's declared count */
        meld_sparsifier sp = any_sparsifier(nx, &valid);
        uint8_t *mask = alloc((nx + 3 + 7) / 8);
        float scale;
        meld_view b = maybe_base(base, n, &valid);
        check(meld_sparsify_mask(ctx, b, x[0], &sp, mask, &scale), 0, "meld_sparsify_mask", it);
        size_t nnz;
        check(meld_mask_count(mask, nx, &nnz), 1, "meld_mask_count", it);
        break;
    }
    case 14:
    case 15: {
        /* packed deltas: masks with their popcounts, values of that many entries (or a count
         * that disagrees with the mask, which must be refused, not read past) */
        meld_packed_view *pv = alloc((k ? k : 1) * sizeof *pv);
        float *scales = any_weights(k, &valid);
        for (size_t i = 0; i < k; i++) {
            /* bytes for the largest count a view of about n may declare (meld_pack reads x's) */
            uint8_t *mask = alloc((n + 3 + 7) / 8);
            memset(mask, 0, (n + 3 + 7) / 8);
            for (size_t j = 0; j < (n + 7) / 8; j++) mask[j] = (uint8_t)(next() & next() & next());
            if (n % 8) mask[n / 8] &= (uint8_t)((1u << (n % 8)) - 1); /* no bits past n */
            size_t nnz = 0;
            check(meld_mask_count(mask, n, &nnz), 1, "meld_mask_count", it);
            size_t claimed = nnz;
            if (chance(5)) { claimed = nnz + 1; valid = 0; }
            if (chance(5) && nnz) { claimed = nnz - 1; valid = 0; }
            meld_dtype dt = any_dtype(&valid);
            void *vals = alloc(bytes_of(claimed, dt));
            if (meld_dtype_size(dt)) fill(vals, claimed, dt);
            pv[i] = (meld_packed_view){.mask = mask, .values = vals, .numel = chance(96) ? n : n + 8, .nnz = claimed, .dtype = dt};
            if (pv[i].numel != n) valid = 0;
            if (i == 0 && chance(40)) { /* meld_pack into these values */
                int v2 = 1;
                meld_span sv = {vals, claimed, dt};
                check(meld_pack(ctx, maybe_base(base, n, &v2), x[0], mask, any_weight(), sv), 0, "meld_pack", it);
            }
        }
        meld_view b = maybe_base(base, n, &valid);
        check(meld_sparse_apply(ctx, b, k, pv, scales, out), valid && (!b.data || b.numel == n) && out.numel == n, "meld_sparse_apply", it);
        break;
    }
    default: {
        const float t = chance(85) ? (float)unit() : any_float();
        float wts[3], sw[66];
        double gram[25];
        float tout;
        switch (below(7)) {
        case 0: check(meld_slerp(ctx, t, base, x[0], out), valid && t >= 0 && t <= 1 && finite_view(base) && finite_view(x[0]), "meld_slerp", it); break;
        case 1: check(meld_nuslerp(ctx, maybe_base(base, n, &valid), x[0], k > 1 ? x[1] : x[0], any_weight(), any_weight(), out), 0, "meld_nuslerp", it); break;
        case 2: check(meld_model_stock(ctx, base, k, x, out, chance(50) ? &tout : NULL), 0, "meld_model_stock", it); break;
        case 3: check(meld_slerp_weights(ctx, t, base, x[0], wts), 0, "meld_slerp_weights", it); break;
        case 4: check(meld_nuslerp_weights(ctx, base, x[0], k > 1 ? x[1] : x[0], any_weight(), any_weight(), wts), 0, "meld_nuslerp_weights", it); break;
        case 5: check(meld_model_stock_weights(ctx, base, k, x, sw, &tout), 0, "meld_model_stock_weights", it); break;
        default: check(meld_gram(ctx, maybe_base(base, n, &valid), k <= 5 ? k : 5, x, gram), 0, "meld_gram", it); break;
        }
    }
    }
}

static void fuzz_moe(meld_context *ctx, size_t it) {
    const size_t E = chance(95) ? 1 + below(9) : 0, T = below(4) ? below(12) : 0;
    const size_t k = chance(90) && E ? 1 + below(E) : below(12);
    const size_t H = 1 + below(40), I = 1 + below(24);
    switch (below(5)) {
    case 0: { /* routing */
        const size_t ld = chance(90) ? E + below(3) : (E ? E - 1 : 0);
        float *logits = alloc((T * (ld > E ? ld : E) + 1) * sizeof(float));
        for (size_t i = 0; i < T * (ld > E ? ld : E); i++) logits[i] = chance(97) ? (float)(unit() * 8 - 4) : any_float();
        meld_route_options o = {.top_k = k, .score = (meld_route_score)below(4), .softmax_after_topk = (int)below(2),
                                .normalize = (int)below(2), .routed_scaling = chance(90) ? 1.0f + (float)unit() : any_float()};
        if (chance(30) && E) {
            float *bias = alloc(E * sizeof *bias);
            for (size_t i = 0; i < E; i++) bias[i] = chance(95) ? (float)unit() : any_float();
            o.selection_bias = bias;
        }
        if (chance(30)) { o.n_group = below(E + 2); o.topk_group = below(o.n_group + 2); }
        int32_t *ids = alloc((T * k + 1) * sizeof *ids);
        float *wt = alloc((T * k + 1) * sizeof *wt);
        check(meld_moe_route(ctx, logits, T, E, ld, &o, ids, wt), 0, "meld_moe_route", it);
        break;
    }
    case 1: { /* dispatch plan */
        int32_t *ids = alloc((T * k + 1) * sizeof *ids);
        for (size_t i = 0; i < T * k; i++) ids[i] = chance(97) ? (int32_t)below(E ? E : 1) : (int32_t)next();
        meld_moe_plan *p = NULL;
        meld_status s = meld_moe_plan_create(ctx, chance(97) ? ids : NULL, T, k, E, &p);
        check(s, 0, "meld_moe_plan_create", it);
        if (s == MELD_OK) {
            volatile int32_t sink = 0;
            const int32_t *c = meld_moe_plan_counts(p), *o = meld_moe_plan_offsets(p), *ord = meld_moe_plan_order(p),
                          *inv = meld_moe_plan_inverse(p);
            for (size_t e = 0; e < E; e++) sink += c[e] + o[e + 1];
            for (size_t i = 0; i < T * k; i++) sink += ord[i] + inv[i];
            check(meld_moe_plan_destroy(p), 1, "meld_moe_plan_destroy", it);
        }
        break;
    }
    default: { /* packed weights, both matmul forms, the FFN */
        int wv = 1;
        meld_dtype dt = any_dtype(&wv);
        const size_t N = 2 * I, ld = chance(90) ? H + below(3) : (H ? H - 1 : 0);
        void *w = alloc(bytes_of(E * N * (ld > H ? ld : H) + 1, dt));
        if (meld_dtype_size(dt)) fill(w, E * N * (ld > H ? ld : H), dt);
        meld_moe_weights *pw = NULL;
        meld_status s = meld_moe_weights_pack(ctx, w, dt, E, N, H, ld, &pw);
        check(s, wv && E && ld >= H, "meld_moe_weights_pack", it);
        if (s != MELD_OK) break;
        const size_t M = T * k, ldx = H + (chance(80) ? 0 : below(3)), ldy = N + (chance(80) ? 0 : below(3));
        float *x = alloc((M * ldx + 1) * sizeof *x), *y = alloc((M * ldy + 1) * sizeof *y);
        for (size_t i = 0; i < M * ldx; i++) x[i] = chance(98) ? (float)(unit() - 0.5) : any_float();
        int32_t *ids = alloc((M + 1) * sizeof *ids);
        int ids_valid = 1;
        for (size_t i = 0; i < M; i++) {
            ids[i] = chance(97) ? (int32_t)below(E) : (int32_t)next();
            ids_valid &= ids[i] >= 0 && (size_t)ids[i] < E;
        }
        if (chance(50)) {
            const int lds_valid = chance(95);
            check(meld_grouped_matmul_gather(ctx, x, M, lds_valid ? ldx : H - 1, ids, pw, y, lds_valid ? ldy : N - 1),
                  ids_valid && lds_valid, "meld_grouped_matmul_gather", it);
        } else if (chance(50)) {
            /* offsets: a valid partition of M rows, or a broken one (the row count is offsets[E]) */
            int32_t *off = alloc((E + 1) * sizeof *off);
            off[0] = 0;
            for (size_t e = 1; e <= E; e++) off[e] = e == E ? (int32_t)M : (int32_t)(off[e - 1] + below(M - (size_t)off[e - 1] + 1));
            /* a broken entry before the last (the last is the row count the caller provides) */
            if (chance(10)) off[below(E)] = (int32_t)next();
            const size_t rows = off[E] > 0 ? (size_t)off[E] : 0;
            float *xo = alloc((rows * ldx + 1) * sizeof *xo), *yo = alloc((rows * ldy + 1) * sizeof *yo);
            for (size_t i = 0; i < rows * ldx; i++) xo[i] = (float)(unit() - 0.5);
            check(meld_grouped_matmul(ctx, xo, ldx, off, pw, yo, ldy), 0, "meld_grouped_matmul", it);
        } else {
            /* the FFN: down is E x H x I; x has T rows */
            meld_moe_weights *pd = NULL;
            void *d = alloc(bytes_of(E * H * I, dt));
            fill(d, E * H * I, dt);
            /* gate_up's dtype packed, and these sizes are valid: it must pack (a failure here
             * must not skip gate_up's destroy below) */
            const meld_status sd_st = meld_moe_weights_pack(ctx, d, dt, E, H, I, I, &pd);
            check(sd_st, 1, "meld_moe_weights_pack", it);
            if (sd_st == MELD_OK) {
                float *xt = alloc((T * ldx + 1) * sizeof *xt), *out = alloc((T * H + 1) * sizeof *out);
                for (size_t i = 0; i < T * ldx; i++) xt[i] = (float)(unit() - 0.5);
                for (size_t i = 0; i < T * H; i++) out[i] = 0;
                float *rw = alloc((T * k + 1) * sizeof *rw);
                for (size_t i = 0; i < T * k; i++) rw[i] = chance(97) ? (float)unit() : any_float();
                meld_moe_ffn_options fo = {.activation = (meld_activation)below(4), .alpha = 1.702f, .limit = chance(90) ? 7.0f : any_float(),
                                           .interleaved_gate_up = (int)below(2), .accumulate = (int)below(2)};
                /* the shared expert: the same weights, one expert of them, or mismatched ones */
                const meld_moe_weights *sg = chance(30) ? pw : NULL, *sd = sg ? pd : NULL;
                check(meld_moe_ffn(ctx, xt, T, ldx, ids, rw, k, pw, pd, sg, sd, chance(97) ? &fo : NULL, out, H), 0, "meld_moe_ffn", it);
                check(meld_moe_weights_destroy(pd), 1, "meld_moe_weights_destroy", it);
            }
        }
        check(meld_moe_weights_destroy(pw), 1, "meld_moe_weights_destroy", it);
    }
    }
}

static void count_item(void *user, size_t i) { (void)i; __atomic_fetch_add((size_t *)user, 1, __ATOMIC_RELAXED); }

/* The small entry points: names and sizes of any enum value, contexts from any options, the
 * caller's parallel loop, the RNG. (No OpenCL here: the device calls load a platform.) */
static void fuzz_misc(meld_context *ctx, size_t it) {
    const int e = chance(50) ? (int)below(12) : (int)next();
    switch (below(6)) {
    case 0:
        if (!meld_status_string((meld_status)e) || !meld_dtype_name((meld_dtype)e) || !meld_isa_name((meld_isa)e)) {
            fprintf(stderr, "iteration %zu: a name function returned NULL for %d\n", it, e);
            failed = 1;
        }
        (void)meld_dtype_size((meld_dtype)e);
        (void)meld_isa_supported((meld_isa)e);
        break;
    case 1: {
        meld_context_options o = {.threads = chance(80) ? (int)below(5) : (int)next(), .isa = (meld_isa)(chance(80) ? below(5) : next())};
        meld_context *c = NULL;
        meld_status s = meld_context_create_ex(chance(97) ? &o : NULL, &c);
        check(s, 0, "meld_context_create_ex", it);
        if (s == MELD_OK) {
            int t;
            meld_isa isa;
            check(meld_context_threads(c, &t), 1, "meld_context_threads", it);
            check(meld_context_isa(c, &isa), 1, "meld_context_isa", it);
            check(meld_context_threads(c, NULL), 0, "meld_context_threads", it);
            check(meld_context_destroy(c), 1, "meld_context_destroy", it);
        }
        break;
    }
    case 2: {
        size_t count = below(3) ? below(100) : below(5000), done = 0;
        const int with_fn = chance(95);
        check(meld_context_parallel_for(ctx, count, with_fn ? count_item : NULL, &done), with_fn, "meld_context_parallel_for", it);
        if (with_fn && done != count) {
            fprintf(stderr, "iteration %zu: meld_context_parallel_for ran %zu items of %zu\n", it, done, count);
            failed = 1;
        }
        break;
    }
    case 3: {
        uint32_t c[4] = {(uint32_t)next(), (uint32_t)next(), (uint32_t)next(), (uint32_t)next()}, k[2] = {(uint32_t)next(), (uint32_t)next()}, o[4];
        check(meld_philox4x32_10(chance(90) ? c : NULL, chance(90) ? k : NULL, chance(90) ? o : NULL), 0, "meld_philox4x32_10", it);
        break;
    }
    case 4: {
        const size_t len = below(40);
        char *name = alloc(len ? len : 1);
        for (size_t i = 0; i < len; i++) name[i] = (char)next();
        (void)meld_rng_stream(len || chance(50) ? name : NULL, len, (uint32_t)next());
        break;
    }
    default: {
        uint64_t k;
        check(meld_density_count(any_density(), chance(95) ? any_n() : SIZE_MAX, chance(97) ? &k : NULL), 0, "meld_density_count", it);
        size_t nnz;
        const size_t n = any_n();
        uint8_t *mask = alloc((n + 7) / 8);
        for (size_t i = 0; i < (n + 7) / 8; i++) mask[i] = (uint8_t)next();
        check(meld_mask_count(n && chance(5) ? NULL : mask, n, &nnz), 0, "meld_mask_count", it);
        meld_context_clear_error(NULL);
        (void)meld_context_last_error(NULL);
    }
    }
}

int main(int argc, char **argv) {
    const size_t iters = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    meld_context *ctx[16];
    size_t nctx = 0;
    for (int isa = MELD_ISA_SCALAR; isa <= MELD_ISA_AVX512BF16; isa++) {
        if (!meld_isa_supported((meld_isa)isa)) continue;
        for (int threads = 1; threads <= 3; threads += 2) {
            meld_context_options o = {.threads = threads, .isa = (meld_isa)isa};
            if (meld_context_create_ex(&o, &ctx[nctx]) != MELD_OK) { fprintf(stderr, "context\n"); return 2; }
            nctx++;
        }
    }
    for (size_t it = 0; it < iters; it++) {
        meld_context *c = current = ctx[below(nctx)];
        /* windows (the tool's paging of inputs): any size, including ones smaller than a tile */
        if (chance(10)) meld_context_set_window(c, below(100000), noop_window, NULL);
        const size_t pick = below(20);
        if (pick < 12) fuzz_merge(c, it);
        else if (pick < 18) fuzz_moe(c, it);
        else fuzz_misc(c, it);
        meld_context_set_window(c, 0, NULL, NULL);
        meld_context_clear_error(c);
        free_all();
    }
    for (size_t i = 0; i < nctx; i++) meld_context_destroy(ctx[i]);
    printf("api-fuzz: %zu iterations, %zu calls (%zu returned MELD_OK) on %zu contexts: %s\n", iters, calls, ok_calls, nctx,
           failed ? "FAILED" : "ok");
    return failed;
}
