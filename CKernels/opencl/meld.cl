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

__kernel void meld_convert(__global const uchar *src, int sdt, __global uchar *dst, int ddt, ulong n) {
    ulong i = get_global_id(0);
    if (i < n) store_dt(dst, ddt, i, load_dt(src, sdt, i));
}

/* ---- Philox4x32-10: word (i % 4) of block (i / 4) ---------------------------------------- */
inline uint philox_word(uint k0, uint k1, ulong i) {
    uint c0 = (uint)(i >> 2), c1 = (uint)(i >> 34), c2 = 0, c3 = 0;
    for (int r = 0; r < 10; r++) {
        uint hi0 = mul_hi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint hi1 = mul_hi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        uint n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    uint w = i & 3;
    return w == 0 ? c0 : w == 1 ? c1 : w == 2 ? c2 : c3;
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
    uint key1, p24, mask_word, dtype; /* mask_word: offset of this expert's bitmap in the mask buffer */
    float scale, w, pad0, pad1;
} cl_rule;

inline int top(uint b, uint thr, ulong cut, ulong i) { return b > thr || (b == thr && i < cut); }

inline float sign_of(float u) { return u > 0.0f ? 1.0f : (u < 0.0f ? -1.0f : u * 0.0f); }

#define TV_PARAMS ulong n, __global const uchar *base, int bdt, int has_base, \
    __global const uchar *x0, __global const uchar *x1, __global const uchar *x2, __global const uchar *x3, \
    __global const uchar *x4, __global const uchar *x5, __global const uchar *x6, __global const uchar *x7, \
    __constant cl_rule *rule, __global const uint *masks, int deltas, int consensus, int unweighted, \
    __global const char *sign_in, int has_sign_in, int divisor, float fixed_div, float lambda, \
    __global uchar *out, int odt, int has_out, __global char *sign_out, int has_sign_out
#define TV_ARGS n, base, bdt, has_base, x0, x1, x2, x3, x4, x5, x6, x7, rule, masks, deltas, consensus, unweighted, \
    sign_in, has_sign_in, divisor, fixed_div, lambda, out, odt, has_out, sign_out, has_sign_out

inline __global const uchar *xk(uint k, __global const uchar *x0, __global const uchar *x1, __global const uchar *x2,
                                __global const uchar *x3, __global const uchar *x4, __global const uchar *x5,
                                __global const uchar *x6, __global const uchar *x7) {
    return k == 0 ? x0 : k == 1 ? x1 : k == 2 ? x2 : k == 3 ? x3 : k == 4 ? x4 : k == 5 ? x5 : k == 6 ? x6 : x7;
}

/* One element per work-item; K is a compile-time constant in each entry point below, so the
 * per-expert loops unroll (PoCL then vectorizes across work-items). */
inline void tv_body(TV_PARAMS, const uint K) {
    ulong i = get_global_id(0);
    if (i >= n) return;
    float b = has_base ? load_dt(base, bdt, i) : 0.0f;
    float s = 0.0f, v[MAXK], u[MAXK];
    for (uint k = 0; k < K; k++) {
        float d = load_dt(xk(k, x0, x1, x2, x3, x4, x5, x6, x7), (int)rule[k].dtype, i);
        if (!deltas) d = d - b;
        float t = d;
        uint kind = rule[k].kind;
        if (kind != R_ALL) {
            uint bits = as_uint(d) & 0x7fffffffu;
            int keep;
            if (kind == R_TOP) keep = top(bits, rule[k].thr, rule[k].cut, i);
            else if (kind == R_WINDOW) keep = top(bits, rule[k].thr, rule[k].cut, i) && !top(bits, rule[k].thr2, rule[k].cut2, i);
            else if (kind == R_MASK) keep = (masks[rule[k].mask_word + (uint)(i >> 5)] >> (i & 31)) & 1u;
            else if (kind == R_BERNOULLI) keep = (philox_word(rule[k].key0, rule[k].key1, i) >> 8) < rule[k].p24;
            else keep = 0;
            t = d * (keep ? 1.0f : 0.0f);
        }
        if (rule[k].scale != 1.0f) t = t * rule[k].scale;
        v[k] = t * rule[k].w;
        u[k] = unweighted ? t : v[k];
        if (consensus == 1) s = s + u[k];
        else if (consensus == 2) s = s + sign_of(u[k]);
    }
    int pos = 1;
    if (consensus != 0) pos = has_sign_in ? sign_in[i] > 0 : s >= 0.0f;
    if (has_sign_out) sign_out[i] = pos ? 1 : -1;
    if (!has_out) return;
    float mixed = 0.0f, div = 0.0f;
    if (consensus == 0) {
        for (uint k = 0; k < K; k++) mixed = mixed + v[k];
        div = divisor == 2 ? (float)K : fixed_div;
    } else {
        for (uint k = 0; k < K; k++) {
            int agree = (pos && u[k] > 0.0f) || (!pos && u[k] < 0.0f);
            float ag = agree ? 1.0f : 0.0f;
            mixed = mixed + v[k] * ag;
            if (divisor == 1) div = div + rule[k].w * ag;
            else if (divisor == 2) div = div + ag;
        }
    }
    if (divisor != 0) mixed = mixed / (div == 0.0f ? 1.0f : div);
    mixed = mixed * lambda;
    if (has_base) mixed = b + mixed;
    store_dt(out, odt, i, mixed);
}

__kernel void meld_tv_merge1(TV_PARAMS) { tv_body(TV_ARGS, 1); }
__kernel void meld_tv_merge2(TV_PARAMS) { tv_body(TV_ARGS, 2); }
__kernel void meld_tv_merge3(TV_PARAMS) { tv_body(TV_ARGS, 3); }
__kernel void meld_tv_merge4(TV_PARAMS) { tv_body(TV_ARGS, 4); }
__kernel void meld_tv_merge5(TV_PARAMS) { tv_body(TV_ARGS, 5); }
__kernel void meld_tv_merge6(TV_PARAMS) { tv_body(TV_ARGS, 6); }
__kernel void meld_tv_merge7(TV_PARAMS) { tv_body(TV_ARGS, 7); }
__kernel void meld_tv_merge8(TV_PARAMS) { tv_body(TV_ARGS, 8); }

/* ---- selection: range histograms and per-tile counts of one value ------------------------- */
__kernel void meld_hist_range(ulong n, __global const uchar *base, int bdt, int has_base, __global const uchar *x, int xdt,
                              uint lo, uint hi, uint shift, __global uint *hist, __local uint *lh) {
    for (uint j = get_local_id(0); j < 2048; j += get_local_size(0)) lh[j] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0)) {
        float d = load_dt(x, xdt, i);
        if (has_base) d = d - load_dt(base, bdt, i);
        uint b = as_uint(d) & 0x7fffffffu;
        if (b >= lo && b <= hi) atomic_inc(&lh[(b - lo) >> shift]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint j = get_local_id(0); j < 2048; j += get_local_size(0))
        if (lh[j]) atomic_add(&hist[j], lh[j]);
}

/* one work-group per tile of `tile` elements: counts[t] = #{i in tile t : absbits(d_i) == T} */
__kernel void meld_count_eq(ulong n, __global const uchar *base, int bdt, int has_base, __global const uchar *x, int xdt,
                            uint T, uint tile, __global uint *counts, __local uint *lc) {
    if (get_local_id(0) == 0) lc[0] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    ulong a = (ulong)get_group_id(0) * tile, e = min(a + tile, n);
    uint c = 0;
    for (ulong i = a + get_local_id(0); i < e; i += get_local_size(0)) {
        float d = load_dt(x, xdt, i);
        if (has_base) d = d - load_dt(base, bdt, i);
        c += (as_uint(d) & 0x7fffffffu) == T;
    }
    atomic_add(&lc[0], c);
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
            acc = acc + d[k].scale * v;
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
