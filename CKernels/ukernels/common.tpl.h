/* Helpers shared by the kernel templates; included once per ISA file after its simd header. */
#define MELD_CAT_(a, b) a##__##b
#define MELD_CAT(a, b) MELD_CAT_(a, b)
/* Exported ukernel name: meld_<op>__<isa>, e.g. meld_xf32_tv_merge__avx512. */
#define UK(name) MELD_CAT(name, MELD_ISA_SUFFIX)

/* Per-vector helpers of the kernel bodies: forced inline when optimizing (so their arrays stay
 * in registers); left as calls at -O0, where inlining them into every specialized body gave
 * stack frames larger than an OpenMP worker's stack. */
#ifndef MELD_VEC_INLINE
#ifdef __OPTIMIZE__
#define MELD_VEC_INLINE static inline __attribute__((always_inline))
#else
#define MELD_VEC_INLINE static inline
#endif
#endif

/* Specialized bodies (compile-time K, dtype, rule): forced inline when optimizing, so each
 * specialization folds; plain calls at -O0, where every inlined copy kept its own stack slots
 * (tv_merge's frame reached 8 MiB, a whole thread stack). */
#ifdef __OPTIMIZE__
#define MELD_BODY_INLINE static inline __attribute__((always_inline))
#else
#define MELD_BODY_INLINE static inline
#endif

/* always_inline: these run once per vector, and clang had left stream_dt an out-of-line call */
static inline __attribute__((always_inline)) vf load_dt(const void *p, int dt, size_t i) {
    switch (dt) {
    case MELD_F32: return vf_load((const float *)p + i);
    case MELD_F16: return vf_load_f16((const uint16_t *)p + i);
    default: return vf_load_bf16((const uint16_t *)p + i);
    }
}

/* acc + s * (the packed values at p, in dt, expanded to the lanes of bits) in those lanes, acc
 * elsewhere; an ISA may expand bf16 straight from memory (MELD_SIMD_EXPAND_BF16). */
static inline __attribute__((always_inline)) vf expand_fma_dt(uint32_t bits, const void *p, int dt, vf s, vf acc) {
#ifdef MELD_SIMD_EXPAND_BF16
    if (dt == MELD_BF16) return vf_expand_fma_bf16(bits, (const uint16_t *)p, s, acc);
#endif
    return vf_expand_fma(bits, load_dt(p, dt, 0), s, acc);
}

/* Output stores of the streaming kernels: non-temporal (no read-for-ownership of lines that
 * are about to be overwritten whole); the kernel calls stream_fence() before returning. */
static inline __attribute__((always_inline)) void stream_dt(void *p, int dt, size_t i, vf v) {
    switch (dt) {
    case MELD_F32: vf_stream((float *)p + i, v); break;
    case MELD_F16: vf_stream_u16((uint16_t *)p + i, v, 1); break;
    default: vf_stream_u16((uint16_t *)p + i, v, 0); break;
    }
}

/* The dtype that the base (when present) and x[0 .. k) all share, else -1: the kernels'
 * dispatchers specialize their bodies on it (MELD_DT_DISPATCH). */
static inline int uniform_dt(meld_uk_in base, const meld_uk_in *x, size_t k) {
    int dt = k ? x[0].dt : -1;
    for (size_t j = 1; j < k; j++) if (x[j].dt != dt) dt = -1;
    if (base.p && base.dt != dt) dt = -1;
    return dt;
}
/* X(DT) with DT the compile-time form of dt, for each of the three dtypes; nothing for -1 */
#define MELD_DT_DISPATCH(dt, X) switch (dt) { case MELD_F32: X(MELD_F32) break; case MELD_BF16: X(MELD_BF16) break; \
    case MELD_F16: X(MELD_F16) break; default: break; }

/* bytes of one element: f32, or one of the 16-bit types */
static inline size_t dt_bytes(int dt) { return dt == MELD_F32 ? 4 : 2; }

/* Software prefetch of the element MELD_PF_AHEAD ahead in a streamed input: the compute-bound
 * bf16 loops keep few iterations in flight, and the hardware prefetcher alone left them waiting
 * on memory. */
#define MELD_PF_AHEAD 1024
static inline __attribute__((always_inline)) void prefetch_dt(const void *p, int dt, size_t i) {
    __builtin_prefetch((const char *)p + (i + MELD_PF_AHEAD) * dt_bytes(dt), 0, 3);
}

/* W keep bits for the lanes starting at local index j (a multiple of MELD_W). */
static inline vm load_bits(const uint8_t *p, size_t j) {
    uint32_t w = p[j >> 3];
    if (MELD_W > 8) w |= (uint32_t)p[(j >> 3) + 1] << 8;
    return vm_from_bits(w >> (j & 7));
}

/* W keep bits at local index j, a multiple of W, as bits: one load where W fills whole bytes */
static inline uint32_t load_bits_w_raw(const uint8_t *p, size_t j) {
    if (MELD_W >= 8) {
        uint32_t w = 0;
        memcpy(&w, p + (j >> 3), MELD_W >= 8 ? MELD_W / 8 : 1);
        return w;
    }
    return (uint32_t)(p[j >> 3] >> (j & 7)) & ((1u << MELD_W) - 1u);
}

/* 2W keep bits for the lanes of a pair starting at local index j (a multiple of 2W) */
static inline uint32_t load_bits2(const uint8_t *p, size_t j) {
    if (2 * MELD_W >= 8) {
        uint32_t w = 0;
        memcpy(&w, p + (j >> 3), 2 * MELD_W / 8);
        return w;
    }
    return (uint32_t)(p[j >> 3] >> (j & 7)) & ((1u << (2 * MELD_W)) - 1u);
}

/* Lanes l with global index gi + l < cut. */
static inline vm index_below(size_t gi, uint64_t cut) {
    if (gi + MELD_W <= cut) return vm_all();
    if (gi >= cut) return vm_none();
    return vi_lt(vi_iota(), vi_set1((uint32_t)(cut - gi)));
}

static inline vm top_mask(vi b, uint32_t thr, uint64_t cut, size_t gi) {
    vi t = vi_set1(thr);
    return vm_or(vi_gt(b, t), vm_and(vi_eq(b, t), index_below(gi, cut)));
}

static inline vm rule_mask(const meld_uk_rule *r, vf d, size_t gi, size_t j) {
    switch (r->kind) {
    case MELD_RULE_ALL: return vm_all();
    case MELD_RULE_TOP: return top_mask(vf_absbits(d), r->thr, r->cut, gi);
    case MELD_RULE_WINDOW: {
        vi b = vf_absbits(d);
        return vm_andnot(top_mask(b, r->thr2, r->cut2, gi), top_mask(b, r->thr, r->cut, gi));
    }
    case MELD_RULE_BITS: return load_bits(r->bits, j);
    default: return vm_none();
    }
}

/* sign(v) as torch: +1, -1, 0 for zeros, NaN for NaN (v * 0). */
static inline vf vf_sign(vf v) {
    return vf_select(vf_gt(v, vf_zero()), vf_set1(1.0f),
                     vf_select(vf_lt(v, vf_zero()), vf_set1(-1.0f), vf_mul(v, vf_zero())));
}
