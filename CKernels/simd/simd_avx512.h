/* AVX-512 F/BW/DQ/VL, 16 lanes, native __mmask16 masks. */
#ifndef MELD_SIMD_AVX512_H
#define MELD_SIMD_AVX512_H
#include <immintrin.h>
#include "../core/fp.h"

#define MELD_W 16
typedef __m512 vf;
typedef __m512i vi;
typedef uint32_t vm;

static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_load_bf16(const uint16_t *p) {
    __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
}
static inline vf vf_load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m256i meld_bf16_bits(vf v);
/* integer RNE rather than VCVTNEPS2BF16, which flushes denormal inputs to zero */
static inline void vf_store_bf16(uint16_t *p, vf v) { _mm256_storeu_si256((__m256i *)p, meld_bf16_bits(v)); }
static inline void vf_store_f16(uint16_t *p, vf v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_select(vm m, vf t, vf f) { return _mm512_mask_blend_ps((__mmask16)m, f, t); }
/* masked arithmetic: lanes in m get the result, the others src (one instruction each) */
static inline vf vf_mask_mul(vm m, vf src, vf a, vf b) { return _mm512_mask_mul_ps(src, (__mmask16)m, a, b); }
static inline vf vf_mask_add(vm m, vf src, vf a, vf b) { return _mm512_mask_add_ps(src, (__mmask16)m, a, b); }
static inline vf vf_mask_div(vm m, vf src, vf a, vf b) { return _mm512_mask_div_ps(src, (__mmask16)m, a, b); }
static inline vf vf_xor(vf a, vf b) { return _mm512_xor_ps(a, b); }
static inline vm vf_gt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline vm vf_lt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline vm vf_ge(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline vm vf_neq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
static inline vm vf_isnan(vf a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
static inline vi vf_absbits(vf a) { return _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)); }
static inline vi vi_set1(uint32_t x) { return _mm512_set1_epi32((int)x); }
static inline vi vi_iota(void) { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
static inline vm vi_gt(vi a, vi b) { return _mm512_cmpgt_epi32_mask(a, b); }
static inline vm vi_eq(vi a, vi b) { return _mm512_cmpeq_epi32_mask(a, b); }
static inline vm vi_lt(vi a, vi b) { return _mm512_cmplt_epi32_mask(a, b); }
static inline vm vi_ltu(vi a, vi b) { return _mm512_cmplt_epu32_mask(a, b); }
static inline vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
static inline vi vi_xor(vi a, vi b) { return _mm512_xor_si512(a, b); }
static inline vi vi_srl(vi a, int s) { return _mm512_srli_epi32(a, (unsigned)s); }
static inline vm vm_and(vm a, vm b) { return a & b; }
static inline vm vm_or(vm a, vm b) { return a | b; }
static inline vm vm_andnot(vm a, vm b) { return (~a) & b & 0xffffu; }
static inline vm vm_all(void) { return 0xffffu; }
static inline vm vm_none(void) { return 0u; }
static inline vm vm_from_bits(uint32_t bits) { return bits & 0xffffu; }
static inline uint32_t vm_to_bits(vm m) { return m & 0xffffu; }
static inline vm vm_not(vm m) { return (~m) & 0xffffu; }
static inline vi vi_load(const uint32_t *p) { return _mm512_loadu_si512((const void *)p); }
static inline void vi_store(uint32_t *p, vi v) { _mm512_storeu_si512((void *)p, v); }
static inline vm vm_from_i8_pos(const int8_t *p) {
    __m512i x = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm512_cmpgt_epi32_mask(x, _mm512_setzero_si512());
}
static inline void vm_store_sign_i8(int8_t *p, vm pos) {
    __m128i v = _mm_mask_blend_epi8((__mmask16)pos, _mm_set1_epi8(-1), _mm_set1_epi8(1));
    _mm_storeu_si128((__m128i *)p, v);
}
/* Compress in a register, then a plain store: a compress straight to memory is microcoded
 * (slow) on some cores. The store is 16 bytes unless more than 4 lanes are kept: the lists
 * advance by the kept count, so a 64-byte store split a cache line nearly every time, and
 * candidates are sparse (a few percent of lanes), so the wide store is a rare, predicted branch.
 * bf16 select at 16M: 1.49-1.60 -> 1.17-1.41 ms. p must have 16 writable entries. */
static inline size_t vi_compress_store(uint32_t *p, vm m, vi v) {
    const __m512i c = _mm512_maskz_compress_epi32((__mmask16)m, v);
    const size_t n = (size_t)__builtin_popcount(m);
    _mm_storeu_si128((__m128i *)p, _mm512_castsi512_si128(c));
    if (__builtin_expect(n > 4, 0)) _mm512_storeu_si512((void *)p, c);
    return n;
}
static inline vi vi_and(vi a, vi b) { return _mm512_and_si512(a, b); }
static inline vi vi_sub(vi a, vi b) { return _mm512_sub_epi32(a, b); }
/* the sum of the lanes (per-lane counters) */
static inline uint64_t vi_total(vi acc) { return (uint32_t)_mm512_reduce_add_epi32(acc); }
/* 16-bit lanes of a vi (MELD_SIMD_W16): the bf16 collect counts two elements a 32-bit lane */
#define MELD_SIMD_W16 1
static inline vi vi_sub16(vi a, vi b) { return _mm512_sub_epi16(a, b); }
static inline vi vi_add16(vi a, vi b) { return _mm512_add_epi16(a, b); }
static inline vi vi_srl16(vi a, int s) { return _mm512_srli_epi16(a, (unsigned)s); }
static inline vi vi_sll(vi a, int s) { return _mm512_slli_epi32(a, (unsigned)s); }
/* the sum of the 16-bit lanes */
static inline uint64_t vi_total16(vi acc) {
    const __m512i lo = _mm512_and_si512(acc, _mm512_set1_epi32(0xffff));
    return (uint32_t)_mm512_reduce_add_epi32(_mm512_add_epi32(lo, _mm512_srli_epi32(acc, 16)));
}
/* acc + s * (the next packed values, expanded to the lanes of bits) in those lanes (one
 * rounding), acc elsewhere */
static inline vf vf_expand_fma(uint32_t bits, vf packed, vf s, vf acc) {
    return _mm512_mask3_fmadd_ps(s, _mm512_maskz_expand_ps((__mmask16)bits, packed), acc, (__mmask16)bits);
}
/* Philox in 64-bit lanes (philox.tpl.h): the 32x32->64 product of the low halves, the high
 * half moved down, the low half moved up, a three-way xor, odd 32-bit lanes from `odd`. */
#define MELD_SIMD_PHILOX 1
static inline vi vi_mul_lo32(vi a, vi b) { return _mm512_mul_epu32(a, b); }
static inline vi vi_hi32_down(vi a) { return _mm512_srli_epi64(a, 32); }
static inline vi vi_lo32_up(vi a) { return _mm512_slli_epi64(a, 32); }
static inline vi vi_xor3(vi a, vi b, vi c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }
static inline vi vi_blend_odd(vi even, vi odd) { return _mm512_mask_blend_epi32(0xAAAA, even, odd); }
/* BMI2 PDEP: fast here, microcoded on Zen 2, so AVX2 spreads bits with shifts instead */
#define MELD_FAST_PDEP 1
static inline uint64_t meld_pdep64(uint64_t m, uint64_t mask) { return _pdep_u64(m, mask); }
/* bit 2l + h: 16-bit half h of lane l of a < that of t, unsigned; *eq the same for == */
static inline uint32_t vi_ltu16_bits(vi a, vi t, uint32_t *eq) {
    *eq = (uint32_t)_mm512_cmpeq_epu16_mask(a, t);
    return (uint32_t)_mm512_cmplt_epu16_mask(a, t);
}
/* The TIES vote with fewer float adds and compares (merge.tpl.h, tv_vec): a 16-entry table of
 * divisors and integer logic in their place. */
#define MELD_SIMD_TABLE16 1
static inline vi vf_bits(vf a) { return _mm512_castps_si512(a); }
static inline vi vi_mask_or(vm m, vi src, vi b) { return _mm512_mask_or_epi32(src, (__mmask16)m, src, b); }
typedef vf vtab16; /* 16 floats */
static inline vtab16 vtab16_load(const float *p) { return vf_load(p); }
static inline vf vf_lookup16(vtab16 table, vi idx) { return _mm512_permutexvar_ps(idx, table); }
static inline vf vf_lookup8(vtab16 table, vi idx) { return _mm512_permutexvar_ps(idx, table); } /* idx < 8 */
/* GEMM register block: MELD_MR rows x 2 vectors of columns */
#define MELD_MR 12
/* The GEMM's prefetch of the next weight panel goes to L2 (prefetcht1), not L1. On the
 * Sapphire Rapids-class VM: qwen3 decode 104% -> 115% of the triad, T = 512 uniform ~6% faster
 * (A/B alternated in one run); locality 1 measured the same as 2. Likely cause (no counters on
 * that VM to confirm): an L1 prefetch holds one of the core's few L1 fill buffers until its line
 * arrives, capping the weight stream. AVX2 keeps L1: on the Zen 3 machine, decode T = 8
 * all-to-one read slower with locality 2 in 8 of 9 alternated pairs (3 shapes, by up to 11%). */
#define MELD_GEMM_PREFETCH_LOCALITY 2
/* The grouped matmul's heavy tasks prefetch their next k block through the kernel's own L2
 * prefetches (moe/grouped.c: measured on the Zen 5 machine; bursts between the calls measured
 * no gain there, nor a similar spread on the Sapphire Rapids-class VM). */
#define MELD_GEMM_SPREAD_PREFETCH MELD_SPREAD_IN_KERNEL
/* Prefill units of few rows keep the copied order (moe/grouped.c, rows_streamed): the decode
 * order's gain was measured on AVX2 only, and here a 32 KiB panel shares L1 with up to three
 * 12-row tiles read in place. On the Zen 5 machine, qwen3 T = 512 uniform (32 rows an expert),
 * 2 threads, with 16 here: best of 30 alternated 94.1 against 92.3 ms, no gain. */
#define MELD_GEMM_STREAM_FLOPS_PER_BYTE 0
static inline void vf_stream(float *p, vf v) {
    if (((uintptr_t)p & 63) == 0) _mm512_stream_ps(p, v); else _mm512_storeu_ps(p, v);
}
/* f32 bits whose top half is the bf16 (RNE; NaN quieted, as meld_f32_to_bf16) */
static inline __attribute__((always_inline)) __m512i meld_bf16_round_hi(vf v) {
    __m512i b = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)),
                                 _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1)));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(r, nan, b, _mm512_set1_epi32(0x400000));
}
static inline __m256i meld_bf16_bits_int(vf v) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(meld_bf16_round_hi(v), 16)); }
#ifdef MELD_HW_BF16
/* AVX512-BF16: VCVTNE(2)PS2BF16 round to nearest even and quiet NaNs as meld_f32_to_bf16 does,
 * but read f32 subnormals as zero (their bf16 is not always zero). Lanes holding a subnormal
 * (VFPCLASSPS category 0x20; rare in weights) take the integer rounding, so the bits equal the
 * other paths'. */
#define MELD_F32_SUBNORMAL 0x20
static inline __m256i meld_bf16_bits(vf v) {
    __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    __mmask16 sub = _mm512_fpclass_ps_mask(v, MELD_F32_SUBNORMAL);
    if (__builtin_expect(sub != 0, 0)) h = _mm256_mask_blend_epi16(sub, h, meld_bf16_bits_int(v));
    return h;
}
#else
static inline __m256i meld_bf16_bits(vf v) { return meld_bf16_bits_int(v); }
#endif
static inline void vf_stream_u16(uint16_t *p, vf v, int f16) {
    __m256i h = f16 ? _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) : meld_bf16_bits(v);
    if (((uintptr_t)p & 31) == 0) _mm256_stream_si256((__m256i *)p, h); else _mm256_storeu_si256((__m256i *)p, h);
}
/* Pairs: 2 * MELD_W bf16 as two vectors, lane j of `e` holding element 2j and of `o` element
 * 2j + 1. One plain load and a shift or a mask each (no widening shuffle); for elementwise
 * kernels the lane order does not matter as long as the store inverts it. */
static inline __attribute__((always_inline)) void vf2_load_bf16(const uint16_t *p, vf *e, vf *o) {
    __m512i x = _mm512_loadu_si512((const void *)p);
    *e = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    *o = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
}
/* keep bits of a pair: w holds 2 * MELD_W bits in element order */
static inline void vm2_from_bits(uint32_t w, vm *e, vm *o) {
    *e = _pext_u32(w, 0x55555555u);
    *o = _pext_u32(w, 0xAAAAAAAAu);
}
static inline __attribute__((always_inline)) __m512i meld_bf16_pair_int(vf e, vf o) {
    /* low halves from e, high halves from o: (e >> 16) | (o & 0xffff0000) */
    return _mm512_ternarylogic_epi32(_mm512_srli_epi32(meld_bf16_round_hi(e), 16), meld_bf16_round_hi(o),
                                     _mm512_set1_epi32((int)0xffff0000u), 0xF8);
}
static inline __attribute__((always_inline)) void vf2_stream_bf16(uint16_t *p, vf e, vf o) {
#ifdef MELD_HW_BF16
    /* one conversion of both (words 0-15 from e, 16-31 from o), then word 2j <- j, 2j+1 <- 16+j */
    const __m512i inter = _mm512_setr_epi32(0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005,
                                            0x00160006, 0x00170007, 0x00180008, 0x00190009, 0x001a000a, 0x001b000b,
                                            0x001c000c, 0x001d000d, 0x001e000e, 0x001f000f);
    __m512i x = _mm512_permutexvar_epi16(inter, (__m512i)_mm512_cvtne2ps_pbh(o, e));
    if (__builtin_expect((_mm512_fpclass_ps_mask(e, MELD_F32_SUBNORMAL) | _mm512_fpclass_ps_mask(o, MELD_F32_SUBNORMAL)) != 0, 0))
        x = meld_bf16_pair_int(e, o);
#else
    __m512i x = meld_bf16_pair_int(e, o);
#endif
    if (((uintptr_t)p & 63) == 0) _mm512_stream_si512((void *)p, x); else _mm512_storeu_si512((void *)p, x);
}
/* Two vectors of consecutive elements (a: the first W) rounded to bf16 and stored with one
 * two-source word permute (two narrowing moves otherwise). */
static inline __attribute__((always_inline)) void vf2_stream_bf16_seq(uint16_t *p, vf a, vf b) {
    const __m512i odd_words = _mm512_setr_epi32(0x00030001, 0x00070005, 0x000b0009, 0x000f000d, 0x00130011, 0x00170015,
                                                0x001b0019, 0x001f001d, 0x00230021, 0x00270025, 0x002b0029, 0x002f002d,
                                                0x00330031, 0x00370035, 0x003b0039, 0x003f003d);
#ifdef MELD_HW_BF16
    (void)odd_words;
    __m512i x = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* words 0-15 from a, 16-31 from b */
    if (__builtin_expect((_mm512_fpclass_ps_mask(a, MELD_F32_SUBNORMAL) | _mm512_fpclass_ps_mask(b, MELD_F32_SUBNORMAL)) != 0, 0))
        x = _mm512_permutex2var_epi16(meld_bf16_round_hi(a), odd_words, meld_bf16_round_hi(b));
#else
    __m512i x = _mm512_permutex2var_epi16(meld_bf16_round_hi(a), odd_words, meld_bf16_round_hi(b));
#endif
    if (((uintptr_t)p & 63) == 0) _mm512_stream_si512((void *)p, x); else _mm512_storeu_si512((void *)p, x);
}
static inline void stream_fence(void) { _mm_sfence(); }
/* f64 vectors for reductions: MELD_DW lanes; a vf widens to MELD_W / MELD_DW of them */
#define MELD_DW 8
typedef __m512d vd;
static inline vd vd_zero(void) { return _mm512_setzero_pd(); }
static inline vd vd_add(vd a, vd b) { return _mm512_add_pd(a, b); }
static inline vd vd_fma_exact(vd a, vd b, vd c) { return _mm512_fmadd_pd(a, b, c); }
static inline void vd_store(double *p, vd v) { _mm512_storeu_pd(p, v); }
static inline void vd_widen(vf v, vd out[2]) {
    out[0] = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    out[1] = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
#ifdef MELD_HW_BF16
#define MELD_ISA_SUFFIX avx512bf16
#else
#define MELD_ISA_SUFFIX avx512
#endif
#endif
