/* AVX2 + FMA + F16C, 8 lanes. Masks are vectors (a lane all ones or all zeros), as compares
 * make them: a compare feeds a blend, an and or another compare directly. (They were bitmasks,
 * like AVX-512's: every compare paid a movemask and every masked operation a table load, and
 * the bf16 TIES pass ran at ~6 cycles an element on Zen 3.) Bits are made only where a
 * template asks for them (vm_to_bits: compress, counts), and read back through a table. */
#ifndef MELD_SIMD_AVX2_H
#define MELD_SIMD_AVX2_H
#include <immintrin.h>
#include "../core/fp.h"

#define MELD_W 8
typedef __m256 vf;
typedef __m256i vi;
typedef __m256 vm;

static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_load_bf16(const uint16_t *p) {
    __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
}
static inline vf vf_load_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
/* f32 bits whose top half is the bf16 (RNE; NaN quieted, as meld_f32_to_bf16) */
static inline __attribute__((always_inline)) __m256i meld_bf16_round_hi(vf v) {
    __m256i b = _mm256_castps_si256(v);
    __m256i r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)),
                                 _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1)));
    /* NaN by a float compare: one instruction where the integer test (abs, compare) took three */
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_or_si256(b, _mm256_set1_epi32(0x400000))), nan));
}
static inline void vf_store_bf16(uint16_t *p, vf v) {
    __m256i r = _mm256_srli_epi32(meld_bf16_round_hi(v), 16);
    /* pack 8 x u32 (values < 2^16) into 8 x u16 */
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}
static inline void vf_store_f16(uint16_t *p, vf v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
/* Tables over the 256 8-bit masks, generated here from their definitions: MELD_T256(ROW) is
 * ROW(0), ..., ROW(255). */
#define MELD_T8(F, m) F(m), F((m) + 1), F((m) + 2), F((m) + 3), F((m) + 4), F((m) + 5), F((m) + 6), F((m) + 7)
#define MELD_T64(F, m) MELD_T8(F, m), MELD_T8(F, (m) + 8), MELD_T8(F, (m) + 16), MELD_T8(F, (m) + 24), \
    MELD_T8(F, (m) + 32), MELD_T8(F, (m) + 40), MELD_T8(F, (m) + 48), MELD_T8(F, (m) + 56)
#define MELD_T256(F) MELD_T64(F, 0), MELD_T64(F, 64), MELD_T64(F, 128), MELD_T64(F, 192)
#define MELD_BIT(m, l) (((m) >> (l)) & 1u)
#define MELD_BELOW(m, l) ((uint32_t)__builtin_popcount((m) & ((1u << (l)) - 1u))) /* set bits below bit l */

/* Lane masks (8 KB), row m lane l: -(bit l of m); one load turns 8 bits into a vector mask
 * (bitmaps of kept entries, the keep bits of DARE). */
#define MELD_LANES_ROW(m) {-(int32_t)MELD_BIT(m, 0), -(int32_t)MELD_BIT(m, 1), -(int32_t)MELD_BIT(m, 2), -(int32_t)MELD_BIT(m, 3), \
    -(int32_t)MELD_BIT(m, 4), -(int32_t)MELD_BIT(m, 5), -(int32_t)MELD_BIT(m, 6), -(int32_t)MELD_BIT(m, 7)}
static const int32_t meld_avx2_lane_masks[256][8] __attribute__((aligned(32))) = {MELD_T256(MELD_LANES_ROW)};
static inline __m256 meld_avx2_lanes(uint32_t bits) { return _mm256_load_ps((const float *)meld_avx2_lane_masks[bits & 0xffu]); }
static inline vf vf_select(vm m, vf t, vf f) { return _mm256_blendv_ps(f, t, m); }
/* masked arithmetic: lanes in m get the result, the others src */
static inline vf vf_mask_mul(vm m, vf src, vf a, vf b) { return vf_select(m, _mm256_mul_ps(a, b), src); }
static inline vf vf_mask_add(vm m, vf src, vf a, vf b) { return vf_select(m, _mm256_add_ps(a, b), src); }
static inline vf vf_mask_div(vm m, vf src, vf a, vf b) { return vf_select(m, _mm256_div_ps(a, b), src); }
static inline vf vf_xor(vf a, vf b) { return _mm256_xor_ps(a, b); }
static inline vm vf_gt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline vm vf_lt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline vm vf_ge(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
static inline vm vf_neq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
static inline vm vf_isnan(vf a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
static inline vi vf_absbits(vf a) { return _mm256_and_si256(_mm256_castps_si256(a), _mm256_set1_epi32(0x7fffffff)); }
static inline vi vi_set1(uint32_t x) { return _mm256_set1_epi32((int)x); }
static inline vi vi_iota(void) { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
static inline vm meld_avx2_imask(__m256i x) { return _mm256_castsi256_ps(x); }
static inline vm vi_gt(vi a, vi b) { return meld_avx2_imask(_mm256_cmpgt_epi32(a, b)); }
static inline vm vi_eq(vi a, vi b) { return meld_avx2_imask(_mm256_cmpeq_epi32(a, b)); }
static inline vm vi_lt(vi a, vi b) { return meld_avx2_imask(_mm256_cmpgt_epi32(b, a)); }
static inline vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
/* 16 vector registers: kernels that keep per-expert state for K experts block by expert */
#define MELD_SIMD_FEW_REGS 1
/* no unsigned compare (no vi_ltu): templates bias operands by 2^31 and compare signed */
#define MELD_SIMD_SIGNED_CMP 1
/* masks are vectors: a masked operation is the operation and a blend */
#define MELD_SIMD_BLEND_MASKS 1
/* counts by compare: all ones where a > b (signed), subtracted from a counter (select.tpl.h) */
#define MELD_SIMD_CMP_COUNT 1
static inline vi vi_cmpgt_bits(vi a, vi b) { return _mm256_cmpgt_epi32(a, b); }
static inline vi vi_xor(vi a, vi b) { return _mm256_xor_si256(a, b); }
static inline vi vi_srl(vi a, int s) { return _mm256_srli_epi32(a, s); }
static inline vm vm_and(vm a, vm b) { return _mm256_and_ps(a, b); }
static inline vm vm_or(vm a, vm b) { return _mm256_or_ps(a, b); }
static inline vm vm_andnot(vm a, vm b) { return _mm256_andnot_ps(a, b); } /* !a & b */
static inline vm vm_all(void) { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
static inline vm vm_none(void) { return _mm256_setzero_ps(); }
static inline vm vm_from_bits(uint32_t bits) { return meld_avx2_lanes(bits); }
static inline uint32_t vm_to_bits(vm m) { return (uint32_t)_mm256_movemask_ps(m); }
static inline vm vm_not(vm m) { return _mm256_xor_ps(m, vm_all()); }
static inline vi vi_load(const uint32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline void vi_store(uint32_t *p, vi v) { _mm256_storeu_si256((__m256i *)p, v); }
static inline vm vm_from_i8_pos(const int8_t *p) {
    __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return meld_avx2_imask(_mm256_cmpgt_epi32(x, _mm256_setzero_si256()));
}
static inline void vm_store_sign_i8(int8_t *p, vm pos) {
    const uint32_t b = vm_to_bits(pos);
    for (int j = 0; j < 8; j++) p[j] = ((b >> j) & 1u) ? 1 : -1;
}
/* Compress rows (2 KB): byte j of row m is the lane of the j-th set bit of m (0 past the
 * last); one zero-extending load makes the permute index. */
#define MELD_CLANE(m, p, j) (MELD_BIT(m, p) && MELD_BELOW(m, p) == (j) ? (p) : 0)
#define MELD_CSLOT(m, j) (MELD_CLANE(m, 1, j) | MELD_CLANE(m, 2, j) | MELD_CLANE(m, 3, j) | MELD_CLANE(m, 4, j) | \
    MELD_CLANE(m, 5, j) | MELD_CLANE(m, 6, j) | MELD_CLANE(m, 7, j))
#define MELD_COMPRESS_ROW(m) {MELD_CSLOT(m, 0), MELD_CSLOT(m, 1), MELD_CSLOT(m, 2), MELD_CSLOT(m, 3), \
    MELD_CSLOT(m, 4), MELD_CSLOT(m, 5), MELD_CSLOT(m, 6), MELD_CSLOT(m, 7)}
static const uint8_t meld_avx2_compress_lanes[256][8] __attribute__((aligned(8))) = {MELD_T256(MELD_COMPRESS_ROW)};
/* Compress by a permute from the table (no BMI2: PDEP/PEXT are microcoded on Zen 1 and 2), then
 * one 32-byte store (a lane at a time, the set-bit loop mispredicted its exit). p must have 8
 * writable entries. */
static inline size_t vi_compress_store(uint32_t *p, vm m, vi v) {
    const uint32_t b = vm_to_bits(m);
    const __m256i sel = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)meld_avx2_compress_lanes[b]));
    _mm256_storeu_si256((__m256i *)p, _mm256_permutevar8x32_epi32(v, sel));
    return (size_t)__builtin_popcount(b);
}
static inline vi vi_and(vi a, vi b) { return _mm256_and_si256(a, b); }
static inline vi vi_sub(vi a, vi b) { return _mm256_sub_epi32(a, b); }
/* the sum of the lanes (per-lane counters) */
static inline uint64_t vi_total(vi acc) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return (uint32_t)_mm_cvtsi128_si32(s);
}
/* 16-bit lanes of a vi (MELD_SIMD_W16): the bf16 collect counts two elements a 32-bit lane */
#define MELD_SIMD_W16 1
static inline vi vi_sub16(vi a, vi b) { return _mm256_sub_epi16(a, b); }
static inline vi vi_add16(vi a, vi b) { return _mm256_add_epi16(a, b); }
static inline vi vi_srl16(vi a, int s) { return _mm256_srli_epi16(a, s); }
static inline vi vi_sll(vi a, int s) { return _mm256_slli_epi32(a, s); }
/* the sum of the 16-bit lanes */
static inline uint64_t vi_total16(vi acc) {
    const __m256i lo = _mm256_and_si256(acc, _mm256_set1_epi32(0xffff));
    return vi_total(_mm256_add_epi32(lo, _mm256_srli_epi32(acc, 16)));
}
/* Expand-and-accumulate rows: lane l of row m is 0x80000000 | (set bits of m below l) where bit
 * l is set, else 0. One load gives both the permute index (its low 3 bits) and the blend mask
 * (its sign bit): the expand took a table load, a broadcast, a variable shift and a mask load
 * (bf16 sparse apply with K = 4: 14 instructions a vector and expert, now 9). */
#define MELD_ESEL(m, l) (MELD_BIT(m, l) ? (int32_t)(0x80000000u | MELD_BELOW(m, l)) : 0)
#define MELD_ESEL_ROW(m) {MELD_ESEL(m, 0), MELD_ESEL(m, 1), MELD_ESEL(m, 2), MELD_ESEL(m, 3), \
    MELD_ESEL(m, 4), MELD_ESEL(m, 5), MELD_ESEL(m, 6), MELD_ESEL(m, 7)}
static const int32_t meld_avx2_expand_sel[256][8] __attribute__((aligned(32))) = {MELD_T256(MELD_ESEL_ROW)};
/* acc + s * (the next packed values, expanded to the lanes of bits) in those lanes (one
 * rounding), acc elsewhere */
static inline vf vf_expand_fma(uint32_t bits, vf packed, vf s, vf acc) {
    const __m256i sel = _mm256_load_si256((const __m256i *)meld_avx2_expand_sel[bits & 0xffu]);
    const vf v = _mm256_permutevar8x32_ps(packed, sel);
    return _mm256_blendv_ps(acc, _mm256_fmadd_ps(s, v, acc), _mm256_castsi256_ps(sel));
}
/* bf16 packed values: one byte shuffle both expands and widens them. Lane l's control puts
 * packed value BELOW(m, l) in the top half of the f32 (the bf16 -> f32 conversion) and zeros
 * the bottom half; an empty lane's bytes are all 0x80 (zero), whose sign bit also marks the
 * lane for the blend (bf16 sparse apply with K = 4: 9 instructions a vector and expert, now 8). */
#define MELD_EB16(m, l) (MELD_BIT(m, l) ? (0x8080u | (2u * MELD_BELOW(m, l)) << 16 | (2u * MELD_BELOW(m, l) + 1u) << 24) : 0x80808080u)
#define MELD_EB16_ROW(m) {MELD_EB16(m, 0), MELD_EB16(m, 1), MELD_EB16(m, 2), MELD_EB16(m, 3), \
    MELD_EB16(m, 4), MELD_EB16(m, 5), MELD_EB16(m, 6), MELD_EB16(m, 7)}
static const uint32_t meld_avx2_expand_bf16[256][8] __attribute__((aligned(32))) = {MELD_T256(MELD_EB16_ROW)};
#define MELD_SIMD_EXPAND_BF16 1
/* as vf_expand_fma, from 8 bf16 at p (all 16 bytes readable) */
static inline vf vf_expand_fma_bf16(uint32_t bits, const uint16_t *p, vf s, vf acc) {
    const __m256i ctl = _mm256_load_si256((const __m256i *)meld_avx2_expand_bf16[bits & 0xffu]);
    const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    const vf v = _mm256_castsi256_ps(_mm256_shuffle_epi8(both, ctl));
    return _mm256_blendv_ps(_mm256_fmadd_ps(s, v, acc), acc, _mm256_castsi256_ps(ctl));
}
/* Philox in 64-bit lanes (philox.tpl.h); no fast PDEP (microcoded on Zen 2) */
#define MELD_SIMD_PHILOX 1
static inline vi vi_mul_lo32(vi a, vi b) { return _mm256_mul_epu32(a, b); }
static inline vi vi_hi32_down(vi a) { return _mm256_srli_epi64(a, 32); }
static inline vi vi_lo32_up(vi a) { return _mm256_slli_epi64(a, 32); }
static inline vi vi_xor3(vi a, vi b, vi c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
static inline vi vi_blend_odd(vi even, vi odd) { return _mm256_blend_epi32(even, odd, 0xAA); }
/* movemask of 16-bit results has each one twice: keep the even bits, packed */
static inline uint32_t meld_avx2_pack_pairs(uint32_t m) {
    m &= 0x55555555u;
    m = (m | m >> 1) & 0x33333333u;
    m = (m | m >> 2) & 0x0f0f0f0fu;
    m = (m | m >> 4) & 0x00ff00ffu;
    return (m | m >> 8) & 0xffffu;
}
/* bit 2l + h: 16-bit half h of lane l of a < that of t, unsigned (not max(a, t) == a); *eq the
 * same for == */
static inline uint32_t vi_ltu16_bits(vi a, vi t, uint32_t *eq) {
    *eq = meld_avx2_pack_pairs((uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(a, t)));
    return meld_avx2_pack_pairs(~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_max_epu16(a, t), a)));
}
/* The TIES vote with fewer float adds and compares (merge.tpl.h, tv_vec): a table of divisors
 * by agreement pattern and integer logic in their place. 16 entries are two vectors. */
#define MELD_SIMD_TABLE16 1
/* the bf16 sum vote in two loops per block (tv_pairs_split, merge.tpl.h) */
#define MELD_SIMD_SPLIT_VOTE 1
typedef struct vtab16 { __m256 lo, hi; } vtab16;
static inline vtab16 vtab16_load(const float *p) { return (vtab16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline vi vf_bits(vf a) { return _mm256_castps_si256(a); }
static inline vi vi_mask_or(vm m, vi src, vi b) { return _mm256_or_si256(src, _mm256_and_si256(_mm256_castps_si256(m), b)); }
/* entry idx < 8: one permute (it reads the low 3 bits) */
static inline vf vf_lookup8(vtab16 t, vi idx) { return _mm256_permutevar8x32_ps(t.lo, idx); }
/* entry idx < 16: both halves, chosen by bit 3 (moved to the sign bit) */
static inline vf vf_lookup16(vtab16 t, vi idx) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, idx), _mm256_permutevar8x32_ps(t.hi, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
/* The keep bytes of one Philox group in vector registers (philox.tpl.h, philox_keep): bit
 * 2w + h of byte l is (half h of word w of lane l) < t. Each word's 16-bit compare is and-ed
 * into its bit positions (2w in the low half, 2w + 1 in the high half), the halves folded and
 * the lanes packed to bytes: ~25 vector instructions a group where movemasks and scalar bit
 * spreading took ~120. Returns 0, writing nothing, when some half equals t (a tie: the caller's
 * general path draws the second word). */
#define MELD_SIMD_KEEP_BYTES 1
static inline int vi_keep_bytes(const vi c[4], vi t, uint8_t *out) {
    __m256i acc = _mm256_setzero_si256(), eq = _mm256_setzero_si256();
    for (int w = 0; w < 4; w++) {
        const __m256i ge = _mm256_cmpeq_epi16(_mm256_max_epu16(c[w], t), c[w]);
        acc = _mm256_or_si256(acc, _mm256_andnot_si256(ge, _mm256_set1_epi32(0x00020001 << (2 * w))));
        eq = _mm256_or_si256(eq, _mm256_cmpeq_epi16(c[w], t));
    }
    if (!_mm256_testz_si256(eq, eq)) return 0;
    acc = _mm256_and_si256(_mm256_or_si256(acc, _mm256_srli_epi32(acc, 16)), _mm256_set1_epi32(0xff));
    acc = _mm256_packus_epi32(acc, acc); /* per 128-bit half: lanes 0-3 (4-7) as 16-bit */
    acc = _mm256_packus_epi16(acc, acc); /* and as bytes, in the low 4 of each half */
    const uint64_t b = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(acc)) |
                       (uint64_t)(uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(acc, 1)) << 32;
    memcpy(out, &b, 8);
    return 1;
}
/* GEMM register block: MELD_MR rows x 2 vectors of columns */
#define MELD_MR 6
/* The grouped matmul's heavy tasks spread L2 prefetches of their next k block over the block,
 * in bursts between the kernel's calls (moe/grouped.c): measured faster on the Zen 3 machine;
 * this kernel's own prefetches go to L1. */
#define MELD_GEMM_SPREAD_PREFETCH MELD_SPREAD_BURSTS
static inline void vf_stream(float *p, vf v) {
    if (((uintptr_t)p & 31) == 0) _mm256_stream_ps(p, v); else _mm256_storeu_ps(p, v);
}
static inline void vf_stream_u16(uint16_t *p, vf v, int f16) { if (f16) vf_store_f16(p, v); else vf_store_bf16(p, v); }
/* Pairs: 2 * MELD_W bf16 as two vectors, lane j of `e` holding element 2j and of `o` element
 * 2j + 1 (see simd_avx512.h). */
static inline __attribute__((always_inline)) void vf2_load_bf16(const uint16_t *p, vf *e, vf *o) {
    __m256i x = _mm256_loadu_si256((const __m256i *)p);
    *e = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    *o = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
}
/* keep masks of a pair: w holds 2 * MELD_W bits in element order; lane j of e tests bit 2j, of o
 * bit 2j + 1, in vector registers (broadcast, and, compare: the scalar bit compaction and two
 * table loads took ~19 instructions) */
static inline void vm2_from_bits(uint32_t w, vm *e, vm *o) {
    const __m256i b = _mm256_set1_epi32((int)w);
    const __m256i be = _mm256_setr_epi32(1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 8, 1 << 10, 1 << 12, 1 << 14);
    const __m256i bo = _mm256_slli_epi32(be, 1);
    *e = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b, be), be));
    *o = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b, bo), bo));
}
/* two vectors of consecutive elements (a: the first W) rounded to bf16: one pack, one lane permute */
static inline __attribute__((always_inline)) void vf2_stream_bf16_seq(uint16_t *p, vf a, vf b) {
    __m256i x = _mm256_packus_epi32(_mm256_srli_epi32(meld_bf16_round_hi(a), 16), _mm256_srli_epi32(meld_bf16_round_hi(b), 16));
    x = _mm256_permute4x64_epi64(x, 0xD8);
    if (((uintptr_t)p & 31) == 0) _mm256_stream_si256((__m256i *)p, x); else _mm256_storeu_si256((__m256i *)p, x);
}
static inline __attribute__((always_inline)) void vf2_stream_bf16(uint16_t *p, vf e, vf o) {
    __m256i x = _mm256_or_si256(_mm256_srli_epi32(meld_bf16_round_hi(e), 16),
                                _mm256_and_si256(meld_bf16_round_hi(o), _mm256_set1_epi32((int)0xffff0000u)));
    if (((uintptr_t)p & 31) == 0) _mm256_stream_si256((__m256i *)p, x); else _mm256_storeu_si256((__m256i *)p, x);
}
static inline void stream_fence(void) { _mm_sfence(); }
#define MELD_ISA_SUFFIX avx2
/* f64 vectors for reductions: MELD_DW lanes; a vf widens to MELD_W / MELD_DW of them */
#define MELD_DW 4
typedef __m256d vd;
static inline vd vd_zero(void) { return _mm256_setzero_pd(); }
static inline vd vd_add(vd a, vd b) { return _mm256_add_pd(a, b); }
static inline vd vd_fma_exact(vd a, vd b, vd c) { return _mm256_fmadd_pd(a, b, c); }
static inline void vd_store(double *p, vd v) { _mm256_storeu_pd(p, v); }
static inline void vd_widen(vf v, vd out[2]) {
    out[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    out[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
}
#endif
