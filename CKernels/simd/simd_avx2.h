/* AVX2 + FMA + F16C, 8 lanes. Masks are kept as bitmasks (uint32, bit j = lane j) so the
 * templates see the same mask type on every ISA; compares go through movemask. */
#ifndef MELD_SIMD_AVX2_H
#define MELD_SIMD_AVX2_H
#include <immintrin.h>
#include "../core/fp.h"

#define MELD_W 8
typedef __m256 vf;
typedef __m256i vi;
typedef uint32_t vm;

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
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    return _mm256_blendv_epi8(r, _mm256_or_si256(b, _mm256_set1_epi32(0x400000)), nan);
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
/* Lane masks of the 256 bit masks (8 KB): one load where broadcast, and and compare took four
 * instructions for every masked operation; the AVX2 TIES fused pass ran 14-24% faster with it
 * (merge bench with MELD_ISA=avx2, f32 14.0 -> 10.7-11.2 ms). Row m, lane l: -(bit l of m). */
#define MELD_L8(m) {-((m) & 1), -((m) >> 1 & 1), -((m) >> 2 & 1), -((m) >> 3 & 1), -((m) >> 4 & 1), -((m) >> 5 & 1), -((m) >> 6 & 1), -((m) >> 7 & 1)}
#define MELD_L32(m) MELD_L8(m), MELD_L8(m + 1), MELD_L8(m + 2), MELD_L8(m + 3), MELD_L8(m + 4), MELD_L8(m + 5), MELD_L8(m + 6), MELD_L8(m + 7), \
    MELD_L8(m + 8), MELD_L8(m + 9), MELD_L8(m + 10), MELD_L8(m + 11), MELD_L8(m + 12), MELD_L8(m + 13), MELD_L8(m + 14), MELD_L8(m + 15), \
    MELD_L8(m + 16), MELD_L8(m + 17), MELD_L8(m + 18), MELD_L8(m + 19), MELD_L8(m + 20), MELD_L8(m + 21), MELD_L8(m + 22), MELD_L8(m + 23), \
    MELD_L8(m + 24), MELD_L8(m + 25), MELD_L8(m + 26), MELD_L8(m + 27), MELD_L8(m + 28), MELD_L8(m + 29), MELD_L8(m + 30), MELD_L8(m + 31)
static const int32_t meld_avx2_lane_masks[256][8] __attribute__((aligned(32))) = {
    MELD_L32(0), MELD_L32(32), MELD_L32(64), MELD_L32(96), MELD_L32(128), MELD_L32(160), MELD_L32(192), MELD_L32(224)};
static inline __m256 meld_avx2_lanes(vm m) { return _mm256_load_ps((const float *)meld_avx2_lane_masks[m & 0xffu]); }
static inline vf vf_select(vm m, vf t, vf f) { return _mm256_blendv_ps(f, t, meld_avx2_lanes(m)); }
/* masked arithmetic: lanes in m get the result, the others src */
static inline vf vf_mask_mul(vm m, vf src, vf a, vf b) { return vf_select(m, _mm256_mul_ps(a, b), src); }
static inline vf vf_mask_add(vm m, vf src, vf a, vf b) { return vf_select(m, _mm256_add_ps(a, b), src); }
static inline vf vf_mask_div(vm m, vf src, vf a, vf b) { return vf_select(m, _mm256_div_ps(a, b), src); }
static inline vf vf_xor(vf a, vf b) { return _mm256_xor_ps(a, b); }
static inline vm vf_gt(vf a, vf b) { return (vm)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }
static inline vm vf_lt(vf a, vf b) { return (vm)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
static inline vm vf_ge(vf a, vf b) { return (vm)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)); }
static inline vm vf_neq(vf a, vf b) { return (vm)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_NEQ_UQ)); }
static inline vm vf_isnan(vf a) { return (vm)_mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
static inline vi vf_absbits(vf a) { return _mm256_and_si256(_mm256_castps_si256(a), _mm256_set1_epi32(0x7fffffff)); }
static inline vi vi_set1(uint32_t x) { return _mm256_set1_epi32((int)x); }
static inline vi vi_iota(void) { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
static inline vm meld_avx2_imask(__m256i x) { return (vm)_mm256_movemask_ps(_mm256_castsi256_ps(x)); }
static inline vm vi_gt(vi a, vi b) { return meld_avx2_imask(_mm256_cmpgt_epi32(a, b)); }
static inline vm vi_eq(vi a, vi b) { return meld_avx2_imask(_mm256_cmpeq_epi32(a, b)); }
static inline vm vi_lt(vi a, vi b) { return meld_avx2_imask(_mm256_cmpgt_epi32(b, a)); }
/* unsigned: flip the top bits, then a signed compare */
static inline vm vi_ltu(vi a, vi b) {
    const __m256i t = _mm256_set1_epi32((int)0x80000000u);
    return meld_avx2_imask(_mm256_cmpgt_epi32(_mm256_xor_si256(b, t), _mm256_xor_si256(a, t)));
}
static inline vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vi vi_xor(vi a, vi b) { return _mm256_xor_si256(a, b); }
static inline vi vi_srl(vi a, int s) { return _mm256_srli_epi32(a, s); }
static inline vm vm_and(vm a, vm b) { return a & b; }
static inline vm vm_or(vm a, vm b) { return a | b; }
static inline vm vm_andnot(vm a, vm b) { return (~a) & b & 0xffu; }
static inline vm vm_all(void) { return 0xffu; }
static inline vm vm_none(void) { return 0u; }
static inline vm vm_from_bits(uint32_t bits) { return bits & 0xffu; }
static inline uint32_t vm_to_bits(vm m) { return m & 0xffu; }
static inline int vm_any(vm m) { return (m & 0xffu) != 0; }
static inline vm vm_not(vm m) { return (~m) & 0xffu; }
static inline vi vi_load(const uint32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline void vi_store(uint32_t *p, vi v) { _mm256_storeu_si256((__m256i *)p, v); }
static inline vm vm_from_i8_pos(const int8_t *p) {
    __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return meld_avx2_imask(_mm256_cmpgt_epi32(x, _mm256_setzero_si256()));
}
static inline void vm_store_sign_i8(int8_t *p, vm pos) {
    for (int j = 0; j < 8; j++) p[j] = ((pos >> j) & 1u) ? 1 : -1;
}
/* For each 8-bit mask, the lanes of its set bits in order, 3 bits each (lane of the j-th set
 * bit at bits 3j..3j+2). Generated: for m in 0..255, sum(p << 3j for the j-th set bit p of m). */
static const uint32_t meld_avx2_compress_lanes[256] = {
    0x000000, 0x000000, 0x000001, 0x000008, 0x000002, 0x000010, 0x000011, 0x000088,
    0x000003, 0x000018, 0x000019, 0x0000c8, 0x00001a, 0x0000d0, 0x0000d1, 0x000688,
    0x000004, 0x000020, 0x000021, 0x000108, 0x000022, 0x000110, 0x000111, 0x000888,
    0x000023, 0x000118, 0x000119, 0x0008c8, 0x00011a, 0x0008d0, 0x0008d1, 0x004688,
    0x000005, 0x000028, 0x000029, 0x000148, 0x00002a, 0x000150, 0x000151, 0x000a88,
    0x00002b, 0x000158, 0x000159, 0x000ac8, 0x00015a, 0x000ad0, 0x000ad1, 0x005688,
    0x00002c, 0x000160, 0x000161, 0x000b08, 0x000162, 0x000b10, 0x000b11, 0x005888,
    0x000163, 0x000b18, 0x000b19, 0x0058c8, 0x000b1a, 0x0058d0, 0x0058d1, 0x02c688,
    0x000006, 0x000030, 0x000031, 0x000188, 0x000032, 0x000190, 0x000191, 0x000c88,
    0x000033, 0x000198, 0x000199, 0x000cc8, 0x00019a, 0x000cd0, 0x000cd1, 0x006688,
    0x000034, 0x0001a0, 0x0001a1, 0x000d08, 0x0001a2, 0x000d10, 0x000d11, 0x006888,
    0x0001a3, 0x000d18, 0x000d19, 0x0068c8, 0x000d1a, 0x0068d0, 0x0068d1, 0x034688,
    0x000035, 0x0001a8, 0x0001a9, 0x000d48, 0x0001aa, 0x000d50, 0x000d51, 0x006a88,
    0x0001ab, 0x000d58, 0x000d59, 0x006ac8, 0x000d5a, 0x006ad0, 0x006ad1, 0x035688,
    0x0001ac, 0x000d60, 0x000d61, 0x006b08, 0x000d62, 0x006b10, 0x006b11, 0x035888,
    0x000d63, 0x006b18, 0x006b19, 0x0358c8, 0x006b1a, 0x0358d0, 0x0358d1, 0x1ac688,
    0x000007, 0x000038, 0x000039, 0x0001c8, 0x00003a, 0x0001d0, 0x0001d1, 0x000e88,
    0x00003b, 0x0001d8, 0x0001d9, 0x000ec8, 0x0001da, 0x000ed0, 0x000ed1, 0x007688,
    0x00003c, 0x0001e0, 0x0001e1, 0x000f08, 0x0001e2, 0x000f10, 0x000f11, 0x007888,
    0x0001e3, 0x000f18, 0x000f19, 0x0078c8, 0x000f1a, 0x0078d0, 0x0078d1, 0x03c688,
    0x00003d, 0x0001e8, 0x0001e9, 0x000f48, 0x0001ea, 0x000f50, 0x000f51, 0x007a88,
    0x0001eb, 0x000f58, 0x000f59, 0x007ac8, 0x000f5a, 0x007ad0, 0x007ad1, 0x03d688,
    0x0001ec, 0x000f60, 0x000f61, 0x007b08, 0x000f62, 0x007b10, 0x007b11, 0x03d888,
    0x000f63, 0x007b18, 0x007b19, 0x03d8c8, 0x007b1a, 0x03d8d0, 0x03d8d1, 0x1ec688,
    0x00003e, 0x0001f0, 0x0001f1, 0x000f88, 0x0001f2, 0x000f90, 0x000f91, 0x007c88,
    0x0001f3, 0x000f98, 0x000f99, 0x007cc8, 0x000f9a, 0x007cd0, 0x007cd1, 0x03e688,
    0x0001f4, 0x000fa0, 0x000fa1, 0x007d08, 0x000fa2, 0x007d10, 0x007d11, 0x03e888,
    0x000fa3, 0x007d18, 0x007d19, 0x03e8c8, 0x007d1a, 0x03e8d0, 0x03e8d1, 0x1f4688,
    0x0001f5, 0x000fa8, 0x000fa9, 0x007d48, 0x000faa, 0x007d50, 0x007d51, 0x03ea88,
    0x000fab, 0x007d58, 0x007d59, 0x03eac8, 0x007d5a, 0x03ead0, 0x03ead1, 0x1f5688,
    0x000fac, 0x007d60, 0x007d61, 0x03eb08, 0x007d62, 0x03eb10, 0x03eb11, 0x1f5888,
    0x007d63, 0x03eb18, 0x03eb19, 0x1f58c8, 0x03eb1a, 0x1f58d0, 0x1f58d1, 0xfac688,
};
/* Compress by a permute from the table (no BMI2: PDEP/PEXT are microcoded on Zen 1 and 2), then
 * one 32-byte store (a lane at a time, the set-bit loop mispredicted its exit). p must have 8
 * writable entries. */
static inline size_t vi_compress_store(uint32_t *p, vm m, vi v) {
    const __m256i sel = _mm256_srlv_epi32(_mm256_set1_epi32((int)meld_avx2_compress_lanes[m & 0xffu]),
                                          _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21));
    _mm256_storeu_si256((__m256i *)p, _mm256_permutevar8x32_epi32(v, sel)); /* uses the low 3 bits of sel */
    return (size_t)__builtin_popcount(m & 0xffu);
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
/* For each 8-bit mask, lane l's source in an expand: the count of set bits below l, 3 bits
 * each (at bits 3l..3l+2). Generated: for m in 0..255, sum(popcount(m & (2^l - 1)) << 3l). */
static const uint32_t meld_avx2_expand_lanes[256] = {
    0x000000, 0x249248, 0x249240, 0x492488, 0x249200, 0x492448, 0x492440, 0x6db688,
    0x249000, 0x492248, 0x492240, 0x6db488, 0x492200, 0x6db448, 0x6db440, 0x924688,
    0x248000, 0x491248, 0x491240, 0x6da488, 0x491200, 0x6da448, 0x6da440, 0x923688,
    0x491000, 0x6da248, 0x6da240, 0x923488, 0x6da200, 0x923448, 0x923440, 0xb6c688,
    0x240000, 0x489248, 0x489240, 0x6d2488, 0x489200, 0x6d2448, 0x6d2440, 0x91b688,
    0x489000, 0x6d2248, 0x6d2240, 0x91b488, 0x6d2200, 0x91b448, 0x91b440, 0xb64688,
    0x488000, 0x6d1248, 0x6d1240, 0x91a488, 0x6d1200, 0x91a448, 0x91a440, 0xb63688,
    0x6d1000, 0x91a248, 0x91a240, 0xb63488, 0x91a200, 0xb63448, 0xb63440, 0xdac688,
    0x200000, 0x449248, 0x449240, 0x692488, 0x449200, 0x692448, 0x692440, 0x8db688,
    0x449000, 0x692248, 0x692240, 0x8db488, 0x692200, 0x8db448, 0x8db440, 0xb24688,
    0x448000, 0x691248, 0x691240, 0x8da488, 0x691200, 0x8da448, 0x8da440, 0xb23688,
    0x691000, 0x8da248, 0x8da240, 0xb23488, 0x8da200, 0xb23448, 0xb23440, 0xd6c688,
    0x440000, 0x689248, 0x689240, 0x8d2488, 0x689200, 0x8d2448, 0x8d2440, 0xb1b688,
    0x689000, 0x8d2248, 0x8d2240, 0xb1b488, 0x8d2200, 0xb1b448, 0xb1b440, 0xd64688,
    0x688000, 0x8d1248, 0x8d1240, 0xb1a488, 0x8d1200, 0xb1a448, 0xb1a440, 0xd63688,
    0x8d1000, 0xb1a248, 0xb1a240, 0xd63488, 0xb1a200, 0xd63448, 0xd63440, 0xfac688,
    0x000000, 0x249248, 0x249240, 0x492488, 0x249200, 0x492448, 0x492440, 0x6db688,
    0x249000, 0x492248, 0x492240, 0x6db488, 0x492200, 0x6db448, 0x6db440, 0x924688,
    0x248000, 0x491248, 0x491240, 0x6da488, 0x491200, 0x6da448, 0x6da440, 0x923688,
    0x491000, 0x6da248, 0x6da240, 0x923488, 0x6da200, 0x923448, 0x923440, 0xb6c688,
    0x240000, 0x489248, 0x489240, 0x6d2488, 0x489200, 0x6d2448, 0x6d2440, 0x91b688,
    0x489000, 0x6d2248, 0x6d2240, 0x91b488, 0x6d2200, 0x91b448, 0x91b440, 0xb64688,
    0x488000, 0x6d1248, 0x6d1240, 0x91a488, 0x6d1200, 0x91a448, 0x91a440, 0xb63688,
    0x6d1000, 0x91a248, 0x91a240, 0xb63488, 0x91a200, 0xb63448, 0xb63440, 0xdac688,
    0x200000, 0x449248, 0x449240, 0x692488, 0x449200, 0x692448, 0x692440, 0x8db688,
    0x449000, 0x692248, 0x692240, 0x8db488, 0x692200, 0x8db448, 0x8db440, 0xb24688,
    0x448000, 0x691248, 0x691240, 0x8da488, 0x691200, 0x8da448, 0x8da440, 0xb23688,
    0x691000, 0x8da248, 0x8da240, 0xb23488, 0x8da200, 0xb23448, 0xb23440, 0xd6c688,
    0x440000, 0x689248, 0x689240, 0x8d2488, 0x689200, 0x8d2448, 0x8d2440, 0xb1b688,
    0x689000, 0x8d2248, 0x8d2240, 0xb1b488, 0x8d2200, 0xb1b448, 0xb1b440, 0xd64688,
    0x688000, 0x8d1248, 0x8d1240, 0xb1a488, 0x8d1200, 0xb1a448, 0xb1a440, 0xd63688,
    0x8d1000, 0xb1a248, 0xb1a240, 0xd63488, 0xb1a200, 0xd63448, 0xd63440, 0xfac688,
};
/* Expand by a permute from the table (it was built lane by lane through memory), lanes
 * without a bit zeroed. */
static inline vf vf_expand(vm m, vf packed) {
    const __m256i sel = _mm256_srlv_epi32(_mm256_set1_epi32((int)meld_avx2_expand_lanes[m & 0xffu]),
                                          _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21));
    return _mm256_and_ps(_mm256_permutevar8x32_ps(packed, sel), meld_avx2_lanes(m));
}
/* Philox in 64-bit lanes (philox.tpl.h); no fast PDEP (microcoded on Zen 2) */
#define MELD_SIMD_PHILOX 1
static inline vi vi_mul_lo32(vi a, vi b) { return _mm256_mul_epu32(a, b); }
static inline vi vi_hi32_down(vi a) { return _mm256_srli_epi64(a, 32); }
static inline vi vi_lo32_up(vi a) { return _mm256_slli_epi64(a, 32); }
static inline vi vi_xor3(vi a, vi b, vi c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
static inline vi vi_blend_odd(vi even, vi odd) { return _mm256_blend_epi32(even, odd, 0xAA); }
/* GEMM register block: MELD_MR rows x 2 vectors of columns */
#define MELD_MR 6
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
/* keep bits of a pair: w holds 2 * MELD_W bits in element order (shifts, not PEXT: PEXT is
 * microcoded on some AVX2 cores) */
static inline uint32_t meld_even_bits16(uint32_t x) {
    x &= 0x5555u;
    x = (x | (x >> 1)) & 0x3333u;
    x = (x | (x >> 2)) & 0x0f0fu;
    return (x | (x >> 4)) & 0x00ffu;
}
static inline void vm2_from_bits(uint32_t w, vm *e, vm *o) {
    *e = meld_even_bits16(w);
    *o = meld_even_bits16(w >> 1);
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
