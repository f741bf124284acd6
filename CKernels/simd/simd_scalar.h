/* Scalar "vector" of width 1: the portable reference path. Same op vocabulary as the
 * AVX2/AVX-512 headers so that kernel templates compile unchanged; every op is a single
 * IEEE operation (fmaf where the vector paths fuse), hence bit-identical results. */
#ifndef MELD_SIMD_SCALAR_H
#define MELD_SIMD_SCALAR_H
#include <math.h>
#include <string.h>
#include "../core/fp.h"

#define MELD_W 1
typedef float vf;
typedef uint32_t vi;
typedef uint32_t vm; /* lane mask: bit j = lane j */

static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf v) { *p = v; }
static inline vf vf_load_bf16(const uint16_t *p) { return meld_bf16_to_f32(*p); }
static inline vf vf_load_f16(const uint16_t *p) { return meld_f16_to_f32(*p); }
static inline void vf_store_bf16(uint16_t *p, vf v) { *p = meld_f32_to_bf16(v); }
static inline void vf_store_f16(uint16_t *p, vf v) { *p = meld_f32_to_f16(v); }
static inline vf vf_set1(float x) { return x; }
static inline vf vf_zero(void) { return 0.0f; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_div(vf a, vf b) { return a / b; }
static inline vf vf_fma(vf a, vf b, vf c) { return fmaf(a, b, c); }
static inline vf vf_select(vm m, vf t, vf f) { return (m & 1u) ? t : f; }
/* masked arithmetic: lanes in m get the result, the others src */
static inline vf vf_mask_mul(vm m, vf src, vf a, vf b) { return (m & 1u) ? a * b : src; }
static inline vf vf_mask_add(vm m, vf src, vf a, vf b) { return (m & 1u) ? a + b : src; }
static inline vf vf_mask_div(vm m, vf src, vf a, vf b) { return (m & 1u) ? a / b : src; }
static inline vf vf_xor(vf a, vf b) { return meld_bits_f32(meld_f32_bits(a) ^ meld_f32_bits(b)); }
static inline vm vf_gt(vf a, vf b) { return a > b; }
static inline vm vf_lt(vf a, vf b) { return a < b; }
static inline vm vf_ge(vf a, vf b) { return a >= b; }
static inline vm vf_neq(vf a, vf b) { return !(a == b); }
static inline vm vf_isnan(vf a) { return a != a; }
static inline vi vf_absbits(vf a) { return meld_f32_bits(a) & 0x7fffffffu; }
static inline vi vi_set1(uint32_t x) { return x; }
static inline vi vi_iota(void) { return 0; }
/* signed 32-bit compares (callers keep operands within [0, 2^31)) */
static inline vm vi_gt(vi a, vi b) { return (int32_t)a > (int32_t)b; }
static inline vm vi_eq(vi a, vi b) { return a == b; }
static inline vm vi_lt(vi a, vi b) { return (int32_t)a < (int32_t)b; }
static inline vm vi_ltu(vi a, vi b) { return a < b; }
/* bit h: 16-bit half h of a < that of t, unsigned; *eq the same for == */
static inline uint32_t vi_ltu16_bits(vi a, vi t, uint32_t *eq) {
    *eq = ((a & 0xffffu) == (t & 0xffffu)) | (uint32_t)((a >> 16) == (t >> 16)) << 1;
    return ((a & 0xffffu) < (t & 0xffffu)) | (uint32_t)((a >> 16) < (t >> 16)) << 1;
}
static inline vi vi_add(vi a, vi b) { return a + b; }
static inline vi vi_xor(vi a, vi b) { return a ^ b; }
static inline vi vi_srl(vi a, int s) { return a >> s; }
static inline vm vm_and(vm a, vm b) { return a & b; }
static inline vm vm_or(vm a, vm b) { return a | b; }
static inline vm vm_andnot(vm a, vm b) { return (~a) & b & 1u; } /* !a & b */
static inline vm vm_all(void) { return 1u; }
static inline vm vm_none(void) { return 0u; }
static inline vm vm_from_bits(uint32_t bits) { return bits & 1u; }
static inline uint32_t vm_to_bits(vm m) { return m & 1u; }
static inline vm vm_not(vm m) { return (~m) & 1u; }
static inline vi vi_load(const uint32_t *p) { return *p; }
static inline void vi_store(uint32_t *p, vi v) { *p = v; }
static inline vm vm_from_i8_pos(const int8_t *p) { return p[0] > 0; }
static inline void vm_store_sign_i8(int8_t *p, vm pos) { p[0] = (pos & 1u) ? 1 : -1; }
/* Appends the lanes of v selected by m at p; returns how many. p needs MELD_W slack. */
static inline size_t vi_compress_store(uint32_t *p, vm m, vi v) { *p = v; return m & 1u; }
static inline vi vi_and(vi a, vi b) { return a & b; }
static inline vi vi_sub(vi a, vi b) { return a - b; }
/* the sum of the lanes (per-lane counters) */
static inline uint64_t vi_total(vi acc) { return acc; }
/* acc + s * packed where the bit is set (one rounding), acc elsewhere */
static inline vf vf_expand_fma(uint32_t bits, vf packed, vf s, vf acc) { return (bits & 1u) ? fmaf(s, packed, acc) : acc; }
static inline void vi_mulhilo(vi a, vi b, vi *hi, vi *lo) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}
/* GEMM register block: MELD_MR rows x 2 vectors of columns */
#define MELD_MR 4
/* Non-temporal store where the ISA has one (else a plain store); callers fence after a batch. */
static inline void vf_stream(float *p, vf v) { *p = v; }
static inline void vf_stream_u16(uint16_t *p, vf v, int f16) { if (f16) vf_store_f16(p, v); else vf_store_bf16(p, v); }
/* Pairs: two elements as e (element 0) and o (element 1); see simd_avx512.h. */
static inline __attribute__((always_inline)) void vf2_load_bf16(const uint16_t *p, vf *e, vf *o) { *e = meld_bf16_to_f32(p[0]); *o = meld_bf16_to_f32(p[1]); }
static inline void vm2_from_bits(uint32_t w, vm *e, vm *o) { *e = w & 1u; *o = (w >> 1) & 1u; }
static inline __attribute__((always_inline)) void vf2_stream_bf16_seq(uint16_t *p, vf a, vf b) { p[0] = meld_f32_to_bf16(a); p[1] = meld_f32_to_bf16(b); }
static inline __attribute__((always_inline)) void vf2_stream_bf16(uint16_t *p, vf e, vf o) { p[0] = meld_f32_to_bf16(e); p[1] = meld_f32_to_bf16(o); }
static inline void stream_fence(void) {}
#define MELD_ISA_SUFFIX scalar
/* f64 vectors for reductions: MELD_DW lanes; a vf widens to MELD_W / MELD_DW of them */
#define MELD_DW 1
typedef double vd;
static inline vd vd_zero(void) { return 0.0; }
static inline vd vd_add(vd a, vd b) { return a + b; }
/* no FMA hardware assumed: a multiply then an add, which rounds as one FMA when the product is
 * exact (f32 * f32 always is in f64) */
static inline vd vd_fma_exact(vd a, vd b, vd c) { return c + a * b; }
static inline void vd_store(double *p, vd v) { *p = v; }
static inline void vd_widen(vf v, vd out[1]) { out[0] = (double)v; }
#endif
