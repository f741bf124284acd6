/* AVX512-BF16 GEMM microkernel for bf16 expert weights: VDPBF16PS multiplies pairs of bf16
 * (activations rounded to bf16 with round-to-nearest-even) and accumulates in f32, two k steps
 * per instruction. Contract as meld_gemm_ukernel (ukernel.h), except that b is packed in k-pairs:
 * [kc/2 rounded up][NR][2] bf16, the second of an odd last pair zero. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "meld.h"
#include "../ukernels/ukernel.h"

#define MR 8
#define NR 32

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
void meld_bf16_gemm_dot__avx512bf16(size_t kc, const float *const *a, const void *b, const void *b_next, size_t pf_lines,
                                    int b_dt, float *const *c, size_t mr, size_t nr, int accumulate) {
    (void)b_dt;
    (void)b_next;
    (void)pf_lines;
    const size_t pairs = (kc + 1) / 2;
    /* activations of the MR rows as bf16 pairs (one 32-bit word per k pair) */
    uint32_t ap[MR][128 + 8];
    __m512 c0[MR], c1[MR];
    for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm512_setzero_ps();
    for (size_t p0 = 0; p0 < pairs; p0 += 128) {
        const size_t pn = pairs - p0 < 128 ? pairs - p0 : 128;
        for (int r = 0; r < MR; r++) {
            const float *src = a[r] + 2 * p0;
            size_t kk = 2 * pn, avail = kc - 2 * p0 < kk ? kc - 2 * p0 : kk;
            for (size_t q = 0; q < kk; q += 32) {
                float tmp[32];
                size_t m = avail > q ? (avail - q < 32 ? avail - q : 32) : 0;
                memcpy(tmp, src + q, m * sizeof(float));
                memset(tmp + m, 0, (32 - m) * sizeof(float));
                __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(tmp + 16), _mm512_loadu_ps(tmp));
                _mm512_storeu_si512((void *)(ap[r] + q / 2), (__m512i)h);
            }
        }
        const uint16_t *bp = (const uint16_t *)b + p0 * NR * 2;
        for (size_t p = 0; p < pn; p++) {
            __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR * 2));
            __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR * 2 + 32));
            for (int r = 0; r < MR; r++) {
                __m512bh av = (__m512bh)_mm512_set1_epi32((int)ap[r][p]);
                c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
                c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
            }
        }
    }
    for (size_t r = 0; r < mr; r++) {
        if (nr == NR) {
            if (accumulate) { c0[r] = _mm512_add_ps(_mm512_loadu_ps(c[r]), c0[r]); c1[r] = _mm512_add_ps(_mm512_loadu_ps(c[r] + 16), c1[r]); }
            _mm512_storeu_ps(c[r], c0[r]);
            _mm512_storeu_ps(c[r] + 16, c1[r]);
        } else {
            float tmp[NR];
            _mm512_storeu_ps(tmp, c0[r]);
            _mm512_storeu_ps(tmp + 16, c1[r]);
            for (size_t j = 0; j < nr; j++) c[r][j] = accumulate ? c[r][j] + tmp[j] : tmp[j];
        }
    }
}
