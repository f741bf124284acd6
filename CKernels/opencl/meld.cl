/* Meld OpenCL kernels. Every merge/sparse kernel performs, per element, the same IEEE f32
 * operations in the same order as the CPU templates (CKernels/ukernels), with no contraction:
 * results are bit-identical to the CPU path. The GEMM kernels accumulate in f32 in their own
 * order (matched against an f64 reference within a tolerance, as on the CPU). */
#pragma OPENCL FP_CONTRACT OFF

#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2

/* ---- dtype conversions (integer, identical to CKernels/core/fp.h) ------------------------ */
inline float bf16_to_f32(ushort h) { return as_float((uint)h << 16); }
inline ushort f32_to_bf16(float f) {
    uint b = as_uint(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (ushort)((b >> 16) | 0x40u);
    return (ushort)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
inline float f16_to_f32(ushort h) {
    uint sign = (uint)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return as_float(as_uint((float)m * 0x1p-24f) | sign);
    if (e == 31) return as_float(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u));
    return as_float(sign | ((e + 112u) << 23) | (m << 13));
}
inline ushort f32_to_f16(float f) {
    uint x = as_uint(f), sign = (x >> 16) & 0x8000u, o;
    x &= 0x7fffffffu;
    if (x >= 0x47800000u) o = x > 0x7f800000u ? (0x7e00u | ((x >> 13) & 0x3ffu)) : 0x7c00u;
    else if (x < 0x38800000u) o = as_uint(as_float(x) + 0.5f) - 0x3f000000u;
    else { uint odd = (x >> 13) & 1u; x += 0xc8000fffu + odd; o = x >> 13; }
    return (ushort)(o | sign);
}
inline float load_dt(__global const uchar *p, int dt, ulong i) {
    if (dt == DT_F32) return ((__global const float *)p)[i];
    ushort h = ((__global const ushort *)p)[i];
    return dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}
inline void store_dt(__global uchar *p, int dt, ulong i, float v) {
    if (dt == DT_F32) ((__global float *)p)[i] = v;
    else ((__global ushort *)p)[i] = dt == DT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
}

/* ---- the task-vector pass (contract: CKernels/ukernels/ukernel.h, meld_uk_tv_args) ------- */
#define R_ALL 0
#define R_NONE 1
#define R_TOP 2
#define R_WINDOW 3
#define R_MASK 10
#define R_BERNOULLI 11
#define MAXK 8

typedef struct {
    uint kind, thr, thr2, key0;
    ulong cut, cut2;
    uint key1, thi, mask_word, dtype; /* mask_word: offset of this expert's bitmap in the mask buffer */
    float scale, w;
    uint tlo, pad0;                   /* thi, tlo: the keep threshold p32 = thi 2^16 + tlo */
} cl_rule;

#define TV_PARAMS ulong n, __global const uchar *base, int bdt, int has_base, \
    __global const uchar *x0, __global const uchar *x1, __global const uchar *x2, __global const uchar *x3, \
    __global const uchar *x4, __global const uchar *x5, __global const uchar *x6, __global const uchar *x7, \
    __constant cl_rule *rule, __global const uint *masks, int deltas, int consensus, int unweighted, \
    __global const char *sign_in, int has_sign_in, int divisor, float fixed_div, float lambda, \
    __global uchar *out, int odt, int has_out, __global char *sign_out, int has_sign_out
#define TV_ARGS n, base, bdt, has_base, x0, x1, x2, x3, x4, x5, x6, x7, rule, masks, deltas, consensus, unweighted, \
    sign_in, has_sign_in, divisor, fixed_div, lambda, out, odt, has_out, sign_out, has_sign_out

/* Vector forms of the conversions above (the same integer steps lane by lane), for kernels
 * where each work-item owns VW consecutive elements: explicit vectors are what PoCL turns into
 * full-width SIMD, and per-work-item work amortizes the uniform branches on dtype and rule. */
#define VW 16
#define INL inline __attribute__((always_inline)) /* PoCL otherwise calls these with vectors spilled */
typedef float16 vf;
typedef uint16 vu;
typedef int16 vi;
typedef ushort16 vh;
#define LANES ((vi)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))

INL vf bf16v_to_f32(vh h) { return as_float16(convert_uint16(h) << 16); }
INL vh f32v_to_bf16(vf f) {
    vu b = as_uint16(f), r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    return convert_ushort16(select(r, (b >> 16) | 0x40u, (b & 0x7fffffffu) > 0x7f800000u));
}
INL vf f16v_to_f32(vh h) {
    vu x = convert_uint16(h), sign = (x & 0x8000u) << 16, e = (x >> 10) & 0x1fu, m = x & 0x3ffu;
    vu sub = as_uint16(convert_float16(m) * 0x1p-24f) | sign;
    vu inf = sign | 0x7f800000u | (m << 13) | select((vu)0u, (vu)0x400000u, m != 0u);
    vu r = select(sign | ((e + 112u) << 23) | (m << 13), sub, e == 0u);
    return as_float16(select(r, inf, e == 31u));
}
INL vh f32v_to_f16(vf f) {
    vu x = as_uint16(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    vu big = select((vu)0x7c00u, 0x7e00u | ((x >> 13) & 0x3ffu), x > 0x7f800000u);
    vu small = as_uint16(as_float16(x) + 0.5f) - 0x3f000000u;
    vu mid = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
    vu o = select(select(mid, small, x < 0x38800000u), big, x >= 0x47800000u);
    return convert_ushort16(o | sign);
}
/* elements i0 .. i0+VW-1; lanes past n read 0 and are never stored */
INL vf load_v(__global const uchar *p, int dt, ulong i0, ulong n) {
    if (i0 + VW <= n) {
        if (dt == DT_F32) return vload16(0, (__global const float *)p + i0);
        vh h = vload16(0, (__global const ushort *)p + i0);
        return dt == DT_F16 ? f16v_to_f32(h) : bf16v_to_f32(h);
    }
    float t[VW];
    for (int j = 0; j < VW; j++) t[j] = i0 + j < n ? load_dt(p, dt, i0 + j) : 0.0f;
    return vload16(0, t);
}
INL void store_v(__global uchar *p, int dt, ulong i0, ulong n, vf v) {
    if (i0 + VW <= n) {
        if (dt == DT_F32) vstore16(v, 0, (__global float *)p + i0);
        else vstore16(dt == DT_F16 ? f32v_to_f16(v) : f32v_to_bf16(v), 0, (__global ushort *)p + i0);
        return;
    }
    float t[VW];
    vstore16(v, 0, t);
    for (int j = 0; j < VW; j++)
        if (i0 + j < n) store_dt(p, dt, i0 + j, t[j]);
}
/* Philox4x32-10 (CPU: ukernels/philox.tpl.h, layout: include/meld/meld_sparse.h). Element i
 * has u = the 16-bit half i % 2 (0 = low) of word (i / 2) % 4 of block i / 8, and v the same of
 * the block with counter word 2 = 1; it is kept iff u < thi, or u == thi and v < tlo. This
 * returns the keep bits of elements i00 .. i00+63 (i00 a multiple of 64: eight blocks, counters
 * i00/8 + 0..7 with no carry into the high word), one block in each of eight 64-bit lanes holding
 * its 32-bit words in the low halves: one widening multiply gives both product halves (as the
 * CPU's AVX-512 rounds), and the junk left in the high halves never reaches a low half. */
#define PHILOX_HALF(x0, x1, x2, x3) { \
        ulong8 p0 = (x0 & 0xffffffffUL) * 0xD2511F53UL, p1 = (x2 & 0xffffffffUL) * 0xCD9E8D57UL; \
        ulong8 n0 = (p1 >> 32) ^ x1 ^ (ulong)k0, n2 = (p0 >> 32) ^ x3 ^ (ulong)k1; \
        x0 = n0; x1 = p1; x2 = n2; x3 = p0; }
#define HALF_IF(cmp, u, at) select((ulong8)0, (ulong8)1 << (at), ((u) & 0xffffUL) cmp (ulong8)thi)
#define HALVES_IF(cmp, x, at) (HALF_IF(cmp, x, at) | HALF_IF(cmp, (x) >> 16, (at) + 1))
INL ulong or8(ulong8 m) {
    ulong4 m4 = m.lo | m.hi;
    ulong2 m2 = m4.lo | m4.hi;
    return m2.x | m2.y;
}
/* v of the tied elements (bits of tie): scalar, as ties are 2^-16 of elements */
INL ulong philox_ties(uint k0, uint k1, ulong blk0, ulong tie, uint tlo) {
    ulong keep = 0;
    for (; tie; tie &= tie - 1) {
        const uint b = 63 - clz(tie & (~tie + 1));
        const ulong blk = blk0 + b / 8;
        uint c0 = (uint)blk, c1 = (uint)(blk >> 32), c2 = 1, c3 = 0, r0 = k0, r1 = k1;
        for (int r = 0; r < 10; r++) {
            ulong p0 = (ulong)c0 * 0xD2511F53UL, p1 = (ulong)c2 * 0xCD9E8D57UL;
            uint n0 = (uint)(p1 >> 32) ^ c1 ^ r0, n2 = (uint)(p0 >> 32) ^ c3 ^ r1;
            c1 = (uint)p1; c3 = (uint)p0; c0 = n0; c2 = n2;
            r0 += 0x9E3779B9u; r1 += 0xBB67AE85u;
        }
        const uint w = (b % 8) / 2, word = w == 0 ? c0 : w == 1 ? c1 : w == 2 ? c2 : c3;
        keep |= (ulong)(((word >> (16 * (b & 1))) & 0xffffu) < tlo) << b;
    }
    return keep;
}
INL ulong philox_keep64(uint k0, uint k1, ulong i00, uint thi, uint tlo) {
    const uint key0 = k0, key1 = k1;
    const ulong8 j = (ulong8)(0, 1, 2, 3, 4, 5, 6, 7);
    ulong8 x0 = (ulong8)((uint)(i00 >> 3)) + j, x1 = (ulong8)((uint)(i00 >> 35)), x2 = 0, x3 = 0;
    for (int r = 0; r < 10; r++) {
        PHILOX_HALF(x0, x1, x2, x3)
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    /* block j's word w holds elements 8j + 2w (low half) and 8j + 2w + 1 */
    const ulong8 at = 8 * j;
    const ulong keep = or8(HALVES_IF(<, x0, at) | HALVES_IF(<, x1, at + 2) | HALVES_IF(<, x2, at + 4) | HALVES_IF(<, x3, at + 6));
    const ulong tie = or8(HALVES_IF(==, x0, at) | HALVES_IF(==, x1, at + 2) | HALVES_IF(==, x2, at + 4) | HALVES_IF(==, x3, at + 6));
    return tie ? keep | philox_ties(key0, key1, i00 >> 3, tie, tlo) : keep;
}
#undef PHILOX_HALF
#undef HALF_IF
#undef HALVES_IF
INL vi lane_bits(uint bits) { return as_int16(((vu)bits >> as_uint16(LANES)) & 1u) != 0; }
/* lanes whose element index is below cut */
INL vi below(ulong cut, ulong i0) {
    long r = cut > i0 ? (long)min(cut - i0, (ulong)VW) : 0;
    return LANES < (int)r;
}
INL vi top_v(vu b, uint thr, ulong cut, ulong i0) { return (b > thr) | ((b == thr) & below(cut, i0)); }
INL vf sign_v(vf u) { return select(select(u * 0.0f, (vf)-1.0f, u < 0.0f), (vf)1.0f, u > 0.0f); }

/* VW elements per work-item */
__kernel void meld_convert(__global const uchar *src, int sdt, __global uchar *dst, int ddt, ulong n) {
    ulong i0 = get_global_id(0) * VW;
    if (i0 < n) store_v(dst, ddt, i0, n, load_v(src, sdt, i0, n));
}

/* Expert k's contribution: its sparsified, scaled delta t; v = w t; u is what votes. */
INL void tv_expert(__global const uchar *x, __constant cl_rule *r, __global const uint *masks, uint rnd, vf b, ulong i0,
                      ulong n, int deltas, int unweighted, int consensus, vf *v, vf *u, vf *s) {
    vf d = load_v(x, (int)r->dtype, i0, n);
    if (!deltas) d = d - b;
    vf t = d;
    uint kind = r->kind;
    if (kind != R_ALL) {
        vu bits = as_uint16(d) & 0x7fffffffu;
        vi keep = 0;
        if (kind == R_TOP) keep = top_v(bits, r->thr, r->cut, i0);
        else if (kind == R_WINDOW) keep = top_v(bits, r->thr, r->cut, i0) & ~top_v(bits, r->thr2, r->cut2, i0);
        else if (kind == R_MASK) keep = lane_bits(masks[r->mask_word + (uint)(i0 >> 5)] >> (uint)(i0 & 31));
        else if (kind == R_BERNOULLI) keep = lane_bits(rnd);
        t = d * select((vf)0.0f, (vf)1.0f, keep);
    }
    if (r->scale != 1.0f) t = t * r->scale;
    *v = t * r->w;
    *u = unweighted ? t : *v;
    if (consensus == 1) *s = *s + *u;
    else if (consensus == 2) *s = *s + sign_v(*u);
}

/* VW elements i0 .. i0+VW-1. K is a compile-time constant in each entry point below and the
 * experts are spelled out (EACH), not looped over: PoCL keeps a private array that is indexed in
 * a loop in per-work-item memory, which made the pass three times slower. rnd[k]: expert k's
 * Bernoulli keep bits for these elements. */
#define EACH(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
INL void tv_chunk(TV_PARAMS, const uint K, ulong i0, const uint *rnd) {
    vf b = has_base ? load_v(base, bdt, i0, n) : 0.0f;
    vf s = 0.0f, v0, v1, v2, v3, v4, v5, v6, v7, u0, u1, u2, u3, u4, u5, u6, u7;
#define EXPERT(k) if (k < K) tv_expert(x##k, rule + k, masks, rnd[k], b, i0, n, deltas, unweighted, consensus, &v##k, &u##k, &s);
    EACH(EXPERT)
    vi pos = -1;
    if (consensus != 0) {
        if (!has_sign_in) pos = s >= 0.0f;
        else if (i0 + VW <= n) pos = convert_int16(vload16(0, sign_in + i0)) > 0;
        else { int t[VW]; for (int j = 0; j < VW; j++) t[j] = i0 + j < n && sign_in[i0 + j] > 0 ? -1 : 0; pos = vload16(0, t); }
    }
    if (has_sign_out) {
        char16 so = select((char16)-1, (char16)1, convert_char16(pos));
        if (i0 + VW <= n) vstore16(so, 0, sign_out + i0);
        else { char t[VW]; vstore16(so, 0, t); for (int j = 0; j < VW; j++) if (i0 + j < n) sign_out[i0 + j] = t[j]; }
    }
    if (!has_out) return;
    vf mixed = 0.0f, div = 0.0f;
    if (consensus == 0) {
#define SUM(k) if (k < K) mixed = mixed + v##k;
        EACH(SUM)
        div = divisor == 2 ? (float)K : fixed_div;
    } else {
        /* as the CPU kernels (merge.tpl.h): under the weighted sum vote the NaN of the v·0 terms
         * comes from the vote s, so agreeing terms are added alone and NaN lanes take s */
        const int nan_from_vote = consensus == 1 && !unweighted && !has_sign_in;
#define AGREE(k) if (k < K) { \
            vi agm = (pos & (u##k > 0.0f)) | (~pos & (u##k < 0.0f)); \
            vf ag = select((vf)0.0f, (vf)1.0f, agm); \
            mixed = nan_from_vote ? select(mixed, mixed + v##k, agm) : mixed + v##k * ag; \
            if (divisor == 1) div = div + rule[k].w * ag; \
            else if (divisor == 2) div = div + ag; }
        EACH(AGREE)
        if (nan_from_vote) mixed = select(mixed, s, isnan(s));
    }
    if (divisor != 0) mixed = mixed / select(div, (vf)1.0f, div == 0.0f);
    mixed = mixed * lambda;
    if (has_base) mixed = b + mixed;
    store_v(out, odt, i0, n, mixed);
}

/* TV_SPAN = 4 VW elements per work-item: the 64 keep bits of one Philox call (eight blocks).
 * The four chunks are spelled out too: a loop here also sends kb to per-work-item memory. */
#define TV_SPAN (4 * VW)
INL void tv_body(TV_PARAMS, const uint K) {
    ulong i00 = get_global_id(0) * TV_SPAN;
    if (i00 >= n) return;
#define KEEPBITS(k) ulong kb##k = k < K && rule[k].kind == R_BERNOULLI ? philox_keep64(rule[k].key0, rule[k].key1, i00, rule[k].thi, rule[k].tlo) : 0;
    EACH(KEEPBITS)
#define CHUNK(q) if (i00 + q * VW < n) { \
        uint rnd[MAXK] = {kb0 >> q * VW, kb1 >> q * VW, kb2 >> q * VW, kb3 >> q * VW, kb4 >> q * VW, kb5 >> q * VW, kb6 >> q * VW, kb7 >> q * VW}; \
        tv_chunk(TV_ARGS, K, i00 + q * VW, rnd); }
    CHUNK(0) CHUNK(1) CHUNK(2) CHUNK(3)
}
#undef KEEPBITS
#undef CHUNK
#undef EXPERT
#undef SUM
#undef AGREE

__kernel void meld_tv_merge1(TV_PARAMS) { tv_body(TV_ARGS, 1); }
__kernel void meld_tv_merge2(TV_PARAMS) { tv_body(TV_ARGS, 2); }
__kernel void meld_tv_merge3(TV_PARAMS) { tv_body(TV_ARGS, 3); }
__kernel void meld_tv_merge4(TV_PARAMS) { tv_body(TV_ARGS, 4); }
__kernel void meld_tv_merge5(TV_PARAMS) { tv_body(TV_ARGS, 5); }
__kernel void meld_tv_merge6(TV_PARAMS) { tv_body(TV_ARGS, 6); }
__kernel void meld_tv_merge7(TV_PARAMS) { tv_body(TV_ARGS, 7); }
__kernel void meld_tv_merge8(TV_PARAMS) { tv_body(TV_ARGS, 8); }

/* ---- selection (host side: device/opencl.c select_one) ------------------------------------ */
/* f32 magnitude bits of (x - base) for elements i0 .. i0+VW-1 */
INL vu mag_v(__global const uchar *x, int xdt, __global const uchar *base, int bdt, int has_base, ulong i0, ulong n) {
    vf d = load_v(x, xdt, i0, n);
    if (has_base) d = d - load_v(base, bdt, i0, n);
    return as_uint16(d) & 0x7fffffffu;
}
INL uint lane_sum(vu v) {
    uint8 a = v.lo + v.hi;
    uint4 b = a.lo + a.hi;
    uint2 c = b.lo + b.hi;
    return c.x + c.y;
}

/* the sample that brackets the k-th largest: runs of `run` elements starting every `step` */
__kernel void meld_sample_bits(ulong n, __global const uchar *base, int bdt, int has_base, __global const uchar *x, int xdt,
                               ulong step, uint run, uint count, __global uint *out) {
    uint j = get_global_id(0);
    if (j >= count) return;
    ulong i = (ulong)(j / run) * step + j % run;
    float d = load_dt(x, xdt, i);
    if (has_base) d = d - load_dt(base, bdt, i);
    out[j] = as_uint(d) & 0x7fffffffu;
}

/* One pass over the bracket [lo, hi]: gt[g] = #{|d| > hi} per work-group (no per-element
 * atomics), and the magnitudes inside the bracket appended to cand (in no particular order;
 * *count keeps counting past cap, so the host sees an overflow). */
__kernel void meld_bracket_collect(ulong n, __global const uchar *base, int bdt, int has_base, __global const uchar *x,
                                   int xdt, uint lo, uint hi, __global uint *gt_out, __global uint *count, __global uint *cand,
                                   uint cap, __local uint *lc) {
    if (get_local_id(0) == 0) lc[0] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    vu gt = 0u;
    for (ulong i0 = get_global_id(0) * VW; i0 < n; i0 += get_global_size(0) * VW) {
        vu b = mag_v(x, xdt, base, bdt, has_base, i0, n);
        vi valid = LANES < (int)min(n - i0, (ulong)VW);
        gt -= as_uint16((b > hi) & valid);
        vi hit = (b >= lo) & (b <= hi) & valid;
        if (any(hit)) {
            uint t[VW];
            vstore16(select((vu)0xffffffffu, b, hit), 0, t); /* 0xffffffff: not a magnitude */
            uint at = atomic_add(count, lane_sum(as_uint16(-hit)));
            for (int j = 0; j < VW; j++)
                if (t[j] != 0xffffffffu) { if (at < cap) cand[at] = t[j]; at++; }
        }
    }
    atomic_add(&lc[0], lane_sum(gt));
    barrier(CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0) gt_out[get_group_id(0)] = lc[0];
}

/* histogram of (|d| - lo) >> shift over |d| in [lo, hi], atomics only for entries in range: the
 * fallback when the sampled bracket missed or held too many candidates (or MELD_SELECT=radix) */
__kernel void meld_hist_range(ulong n, __global const uchar *base, int bdt, int has_base, __global const uchar *x, int xdt,
                              uint lo, uint hi, uint shift, __global uint *hist, __local uint *lh) {
    for (uint j = get_local_id(0); j < 2048; j += get_local_size(0)) lh[j] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (ulong i0 = get_global_id(0) * VW; i0 < n; i0 += get_global_size(0) * VW) {
        vu b = mag_v(x, xdt, base, bdt, has_base, i0, n);
        vi hit = (b >= lo) & (b <= hi) & (LANES < (int)min(n - i0, (ulong)VW));
        if (any(hit)) {
            uint t[VW];
            vstore16(select((vu)0xffffffffu, (b - lo) >> shift, hit), 0, t);
            for (int j = 0; j < VW; j++)
                if (t[j] != 0xffffffffu) atomic_inc(&lh[t[j]]);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint j = get_local_id(0); j < 2048; j += get_local_size(0))
        if (lh[j]) atomic_add(&hist[j], lh[j]);
}

/* one work-group per tile of `tile` elements (a multiple of VW): counts[t] = #{i in tile t : |d_i| == T} */
__kernel void meld_count_eq(ulong n, __global const uchar *base, int bdt, int has_base, __global const uchar *x, int xdt,
                            uint T, uint tile, __global uint *counts, __local uint *lc) {
    if (get_local_id(0) == 0) lc[0] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    ulong a = (ulong)get_group_id(0) * tile, e = min(a + tile, n);
    vu c = 0u;
    for (ulong i0 = a + get_local_id(0) * VW; i0 < e; i0 += get_local_size(0) * VW) {
        vu b = mag_v(x, xdt, base, bdt, has_base, i0, n);
        c -= as_uint16((b == T) & (LANES < (int)min(e - i0, (ulong)VW)));
    }
    atomic_add(&lc[0], lane_sum(c));
    barrier(CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0) counts[get_group_id(0)] = lc[0];
}

/* ---- sparse apply: out = base + sum_k s_k unpack_k (CPU: reduce.tpl.h) -------------------- */
typedef struct { uint mask_word, block_off, dtype, pad; ulong value_byte; float scale, pad2; } cl_packed;

__kernel void meld_sparse_apply(ulong n, uint K, __global const uchar *base, int bdt, int has_base, __constant cl_packed *d,
                                __global const uint *masks, __global const uint *block_start, __global const uchar *values,
                                __global uchar *out, int odt) {
    ulong i = get_global_id(0);
    if (i < n) {
        float acc = has_base ? load_dt(base, bdt, i) : 0.0f;
        for (uint k = 0; k < K; k++) {
            __global const uint *m = masks + d[k].mask_word;
            uint word = m[i >> 5];
            if (!((word >> (i & 31)) & 1u)) continue;
            ulong blk = i >> 8; /* blocks of 256 entries = 8 words */
            uint pos = block_start[d[k].block_off + blk];
            for (ulong w = blk << 3; w < (i >> 5); w++) pos += popcount(m[w]);
            pos += popcount(word & ((1u << (i & 31)) - 1u));
            float v = load_dt(values + d[k].value_byte, (int)d[k].dtype, pos);
            acc = fma(d[k].scale, v, acc); /* one rounding, as the CPU kernels */
        }
        store_dt(out, odt, i, acc);
    }
}

/* ---- grouped GEMM: tiles of 64 rows x 64 columns, 16 x 16 work-items, 4 x 4 each ----------
 * tiles[t] = (expert, first row position, rows, 0); row positions index arow/crow. */
#define TM 64
#define TN 64
#define TK 16
__kernel __attribute__((reqd_work_group_size(16, 16, 1)))
void meld_gemm_grouped(__global const float *x, uint ldx, __global const int *arow, __global const uchar *w, int wdt,
                       uint N, uint K, __global float *y, uint ldy, __global const int *crow, __global const int4 *tiles) {
    __local float As[TK][TM + 1], Bs[TK][TN + 1];
    const int4 t = tiles[get_group_id(0)];
    const uint n0 = get_group_id(1) * TN, lx = get_local_id(0), ly = get_local_id(1), lid = ly * 16 + lx;
    float acc[4][4] = {{0}};
    for (uint k0 = 0; k0 < K; k0 += TK) {
        for (uint q = lid; q < TM * TK; q += 256) { /* A: TM rows x TK, stored k-major */
            uint r = q / TK, kk = q % TK;
            As[kk][r] = (r < (uint)t.z && k0 + kk < K) ? x[(ulong)arow[t.y + r] * ldx + k0 + kk] : 0.0f;
        }
        for (uint q = lid; q < TN * TK; q += 256) { /* B: TN columns x TK from W[e][n][k] */
            uint c = q / TK, kk = q % TK;
            Bs[kk][c] = (n0 + c < N && k0 + kk < K) ? load_dt(w, wdt, ((ulong)t.x * N + n0 + c) * K + k0 + kk) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint kk = 0; kk < TK; kk++) {
            float a[4], bb[4];
            for (int i = 0; i < 4; i++) { a[i] = As[kk][ly * 4 + i]; bb[i] = Bs[kk][lx * 4 + i]; }
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = fma(a[i], bb[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < 4; i++) {
        uint r = ly * 4 + i;
        if (r >= (uint)t.z) continue;
        for (int j = 0; j < 4; j++) {
            uint c = n0 + lx * 4 + j;
            if (c < N) y[(ulong)crow[t.y + r] * ldy + c] = acc[i][j];
        }
    }
}

/* ---- MoE FFN: activation and the ordered combine (CPU: moe/grouped.c) --------------------- */
__kernel void meld_moe_act(ulong M, uint I, __global const float *h1, __global float *a, int act, float alpha, float limit,
                           int interleaved) {
    ulong q = get_global_id(0);
    if (q < M * I) {
        ulong s = q / I;
        uint i = (uint)(q % I);
        __global const float *r = h1 + s * 2 * I;
        float g = interleaved ? r[2 * i] : r[i], u = interleaved ? r[2 * i + 1] : r[I + i], o;
        if (act == 0) o = g / (1.0f + exp(-g)) * u;
        else if (act == 1) { float c = 0.7978845608028654f * (g + 0.044715f * g * g * g); o = 0.5f * g * (1.0f + tanh(c)) * u; }
        else { float gg = g < limit ? g : limit, uu = u < -limit ? -limit : (u > limit ? limit : u); o = (uu + 1.0f) * (gg / (1.0f + exp(-alpha * gg))); }
        a[q] = o;
    }
}

__kernel void meld_moe_combine(ulong T, uint H, uint k, __global const float *y, __global const int *inverse,
                               __global const float *weights, __global const float *ys, int has_shared, __global float *out,
                               uint ldo, int accumulate) {
    ulong q = get_global_id(0);
    if (q < T * H) {
        ulong t = q / H;
        uint h = (uint)(q % H);
        float acc = accumulate ? out[t * ldo + h] : 0.0f;
        for (uint j = 0; j < k; j++) acc = acc + weights[t * k + j] * y[(ulong)inverse[t * k + j] * H + h];
        if (has_shared) acc = acc + ys[t * H + h];
        out[t * ldo + h] = acc;
    }
}
