/* Philox4x32-10 keep bits (template), vectorized across counter blocks. Contract: ukernel.h. */

/* The key and, for the vector rounds, its ten round keys broadcast once per call. */
typedef struct philox_keys {
    uint32_t key[2];
#ifdef MELD_SIMD_PHILOX
    vi rk0[10], rk1[10];
#endif
} philox_keys;
static inline philox_keys philox_keys_of(uint32_t key0, uint32_t key1) {
    philox_keys k = {.key = {key0, key1}};
#ifdef MELD_SIMD_PHILOX
    for (uint32_t r = 0, k0 = key0, k1 = key1; r < 10; r++, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
        k.rk0[r] = vi_set1(k0);
        k.rk1[r] = vi_set1(k1);
    }
#endif
    return k;
}

#ifdef MELD_SIMD_PHILOX
/* Rounds on U groups of W blocks (group u, lane l: block u*W + l; c[u][w]: word w). Even and odd
 * lanes run as separate halves in 64-bit lanes, where one 32x32->64 multiply gives both product
 * halves and the junk above bit 32 never reaches a low half (the multiply ignores it): 6
 * instructions per half-round. The U groups are interleaved round by round: a round is a chain
 * of multiply, shift and xor, and one group alone leaves the core waiting on that latency (the
 * scheduler cannot reach far enough into the next call to hide it). */
static inline __attribute__((always_inline)) void philox_rounds_x(vi c[][4], const int U, const philox_keys *ks,
                                                                   const uint32_t *fresh_hi) {
    const vi m0 = vi_set1(0xD2511F53u), m1 = vi_set1(0xCD9E8D57u);
    const vi *rk0 = ks->rk0, *rk1 = ks->rk1;
    const uint32_t *key = ks->key;
    vi h[2 * 4][4]; /* U <= 4 */
    int r = 0;
    if (fresh_hi) {
        /* Fresh counters (word 0 per lane, word 1 = fresh_hi[u] in every lane, words 2 and 3
         * zero): the first two rounds fold. Round 0: M1·0 = 0, so word 0 becomes the constant
         * C = hi ^ k0, word 1 zero, word 2 hi(M0·c0) ^ k1', word 3 M0·c0. Round 1: M0·C is a
         * constant P, so word 2 becomes word 3 ^ hi(P) ^ k1'' and word 3 lo(P); words 0 and 1
         * come from M1·(word 2) as usual. 7 instructions per half for the two, in place of 12. */
        for (int u = 0; u < U; u++) {
            const uint32_t C = fresh_hi[u] ^ key[0];
            const uint64_t P = (uint64_t)C * 0xD2511F53u;
            const vi kx = vi_set1((uint32_t)(P >> 32) ^ (key[1] + 0xBB67AE85u));
            const vi plo = vi_set1((uint32_t)P);
            for (int q = 2 * u; q < 2 * u + 2; q++) {
                vi c0 = q & 1 ? vi_hi32_down(c[u][0]) : c[u][0];
                vi p0 = vi_mul_lo32(c0, m0);                      /* round 0 */
                vi w2 = vi_xor(vi_hi32_down(p0), rk1[0]);
                vi p1 = vi_mul_lo32(w2, m1);                      /* round 1 */
                h[q][0] = vi_xor(vi_hi32_down(p1), rk0[1]);
                h[q][1] = p1;
                h[q][2] = vi_xor(p0, kx);
                h[q][3] = plo;
            }
        }
        r = 2;
    } else {
        for (int u = 0; u < U; u++)
            for (int w = 0; w < 4; w++) { h[2 * u][w] = c[u][w]; h[2 * u + 1][w] = vi_hi32_down(c[u][w]); }
    }
#pragma clang loop unroll(full)
    for (; r < 10; r++)
#pragma clang loop unroll(full)
        for (int q = 0; q < 2 * U; q++) {
            vi p0 = vi_mul_lo32(h[q][0], m0), p1 = vi_mul_lo32(h[q][2], m1);
            vi n0 = vi_xor3(vi_hi32_down(p1), h[q][1], rk0[r]);
            vi n2 = vi_xor3(vi_hi32_down(p0), h[q][3], rk1[r]);
            h[q][0] = n0; h[q][1] = p1; h[q][2] = n2; h[q][3] = p0;
        }
    for (int u = 0; u < U; u++)
        for (int w = 0; w < 4; w++) c[u][w] = vi_blend_odd(h[2 * u][w], vi_lo32_up(h[2 * u + 1][w]));
}
#define PHILOX_GROUPS 3
#else
static inline void philox_rounds_x(vi c[][4], const int U, const philox_keys *ks, const uint32_t *fresh_hi) {
    const vi m0 = vi_set1(0xD2511F53u), m1 = vi_set1(0xCD9E8D57u);
    uint32_t k0 = ks->key[0], k1 = ks->key[1];
    (void)U; (void)fresh_hi;
    for (int r = 0; r < 10; r++) {
        vi hi0, lo0, hi1, lo1;
        vi_mulhilo(m0, c[0][0], &hi0, &lo0); /* both halves from the same 64-bit products */
        vi_mulhilo(m1, c[0][2], &hi1, &lo1);
        vi n0 = vi_xor(vi_xor(hi1, c[0][1]), vi_set1(k0));
        vi n2 = vi_xor(vi_xor(hi0, c[0][3]), vi_set1(k1));
        c[0][0] = n0; c[0][1] = lo1; c[0][2] = n2; c[0][3] = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}
#define PHILOX_GROUPS 1
#endif

/* Spread 2-bit groups of the low 16 bits of m to bytes: group g (bits 2g, 2g + 1) lands at bits
 * 8g, 8g + 1 (BMI2 PDEP where the ISA has it fast). */
static inline uint64_t spread2x8(uint32_t m) {
#ifdef MELD_FAST_PDEP
    return meld_pdep64(m, 0x0303030303030303ull);
#else
    uint64_t x = m & 0xffffu;
    x = (x | (x << 24)) & 0x000000FF000000FFull;
    x = (x | (x << 12)) & 0x000F000F000F000Full;
    x = (x | (x << 6)) & 0x0303030303030303ull;
    return x;
#endif
}

/* counters of the W blocks starting at block c0; 1 when word 1 is the same in every lane */
static inline int philox_counters(uint64_t c0, vi c[4]) {
    c[2] = c[3] = vi_set1(0);
    if ((uint32_t)c0 <= UINT32_MAX - (MELD_W - 1)) { /* no carry into the high word */
        c[0] = vi_add(vi_set1((uint32_t)c0), vi_iota());
        c[1] = vi_set1((uint32_t)(c0 >> 32));
        return 1;
    } else {
        uint32_t clo[MELD_W], chi[MELD_W];
        for (int l = 0; l < MELD_W; l++) {
            clo[l] = (uint32_t)(c0 + (uint64_t)l);
            chi[l] = (uint32_t)((c0 + (uint64_t)l) >> 32);
        }
        c[0] = vi_load(clo);
        c[1] = vi_load(chi);
        return 0;
    }
}

/* Ties u == p32's high half: draw v from the block with counter word 2 = 1 for each tied
 * element (bit 2l + h of eq: lane l, half h) of word w; returns the keep bits of those. Rare
 * (2^-16 of elements), so scalar and out of line. */
static __attribute__((noinline, cold)) uint32_t philox_ties(uint32_t eq, int w, uint64_t blk0, const philox_keys *ks,
                                                            uint32_t tlo) {
    uint32_t keep = 0;
    for (; eq; eq &= eq - 1) {
        const int b = __builtin_ctz(eq);
        const uint64_t blk = blk0 + (uint64_t)(b / 2);
        const uint32_t ctr[4] = {(uint32_t)blk, (uint32_t)(blk >> 32), 1, 0};
        uint32_t o[4];
        meld_philox_block(ctr, ks->key[0], ks->key[1], o);
        keep |= (uint32_t)(((o[w] >> (16 * (b & 1))) & 0xffffu) < tlo) << b;
    }
    return keep;
}

/* The 8W keep bits of one group (blocks blk0 .. blk0 + W - 1), as W bytes at out: element
 * 8l + 2w + h (lane l, word w, half h) has u = that 16-bit half; kept iff u < thi, or u == thi
 * and v < tlo (ukernel.h). Byte l of out is lane l's block; 8 lanes fill a 64-bit word. */
static inline void philox_keep(const vi c[4], vi thi, uint32_t tlo, uint64_t blk0, const philox_keys *ks, uint8_t *out) {
    enum { WORDS = (MELD_W + 7) / 8 };
#ifdef MELD_SIMD_KEEP_BYTES
    if (vi_keep_bytes(c, thi, out)) return;
#endif
    uint64_t bits[WORDS] = {0};
    for (int w = 0; w < 4; w++) {
        uint32_t eq;
        uint32_t m = vi_ltu16_bits(c[w], thi, &eq); /* bit 2l + h */
        if (__builtin_expect(eq != 0, 0)) m |= philox_ties(eq, w, blk0, ks, tlo);
        for (int b = 0; b < WORDS; b++) bits[b] |= spread2x8(m >> (16 * b)) << (2 * w);
    }
    memcpy(out, bits, MELD_W);
}

void UK(meld_philox_bits)(size_t n, size_t i0, const meld_uk_philox_args *a) {
    enum { G = 8 * MELD_W, U = PHILOX_GROUPS }; /* elements per group, groups per step */
    uint8_t *out = a->out;
    if (a->p32 == 0 || a->p32 >= 1ull << 32) { /* nothing or everything: no draw decides */
        memset(out, a->p32 ? 0xff : 0, n / 8);
        return;
    }
    const uint32_t thi = (uint32_t)(a->p32 >> 16), tlo = (uint32_t)a->p32 & 0xffffu;
    const vi vthi = vi_set1(thi * 0x10001u); /* in both halves of every lane */
    const philox_keys ks = philox_keys_of(a->key0, a->key1);
    size_t j = 0;
    for (; j + U * G <= n; j += U * G) {
        vi c[U][4];
        uint32_t hi[U];
        uint64_t blk[U];
        int fresh = 1;
        for (int u = 0; u < U; u++) {
            blk[u] = (i0 + j + (size_t)u * G) >> 3;
            fresh &= philox_counters(blk[u], c[u]);
            hi[u] = (uint32_t)(blk[u] >> 32);
        }
        if (fresh) philox_rounds_x(c, U, &ks, hi);
        else philox_rounds_x(c, U, &ks, NULL);
        for (int u = 0; u < U; u++, out += G / 8) philox_keep(c[u], vthi, tlo, blk[u], &ks, out);
    }
    for (; j < n; j += G) { /* single groups; the last may be cut short (n is a multiple of 8) */
        vi c[1][4];
        const uint64_t blk = (i0 + j) >> 3;
        philox_counters(blk, c[0]);
        philox_rounds_x(c, 1, &ks, NULL);
        uint8_t bytes[G / 8];
        philox_keep(c[0], vthi, tlo, blk, &ks, bytes);
        const size_t produced = n - j < G ? n - j : G;
        memcpy(out, bytes, produced / 8);
        out += produced / 8;
    }
}

void UK(meld_philox_u24)(size_t n, size_t i0, uint32_t key0, uint32_t key1, uint32_t *out) {
    enum { G = 4 * MELD_W, U = PHILOX_GROUPS }; /* elements per group, groups per step */
    const philox_keys ks = philox_keys_of(key0, key1);
    /* the first group starts at the block holding element i0 */
    const size_t e0 = i0 & ~(size_t)3;
    uint32_t tmp[U][4][MELD_W];
    for (size_t j = 0; e0 + j < i0 + n;) {
        const size_t u_n = e0 + j + U * G <= i0 + n ? U : 1; /* whole steps, then groups */
        vi c[U][4];
        uint32_t hi[U];
        int fresh = 1;
        for (size_t u = 0; u < u_n; u++) {
            const uint64_t c0 = (e0 + j + u * G) >> 2;
            fresh &= philox_counters(c0, c[u]);
            hi[u] = (uint32_t)(c0 >> 32);
        }
        if (u_n == U && fresh) philox_rounds_x(c, U, &ks, hi);
        else if (u_n == U) philox_rounds_x(c, U, &ks, NULL);
        else philox_rounds_x(c, 1, &ks, NULL);
        for (size_t u = 0; u < u_n; u++)
            for (int w = 0; w < 4; w++) vi_store(tmp[u][w], vi_srl(c[u][w], 8));
        /* element e0 + j + u G + 4 l + w is word w of lane l */
        for (size_t q = 0; q < u_n * G; q++) {
            const size_t e = e0 + j + q;
            if (e >= i0 && e < i0 + n) out[e - i0] = tmp[q / G][q % 4][(q % G) / 4];
        }
        j += u_n * G;
    }
}
