/* Philox4x32-10 keep bits (template), vectorized across counter blocks. Contract: ukernel.h. */

static inline void philox_rounds(vi c[4], uint32_t k0, uint32_t k1) {
    const vi m0 = vi_set1(0xD2511F53u), m1 = vi_set1(0xCD9E8D57u);
    for (int r = 0; r < 10; r++) {
        vi hi0, lo0, hi1, lo1;
        vi_mulhilo(m0, c[0], &hi0, &lo0); /* both halves from the same 64-bit products */
        vi_mulhilo(m1, c[2], &hi1, &lo1);
        vi n0 = vi_xor(vi_xor(hi1, c[1]), vi_set1(k0));
        vi n2 = vi_xor(vi_xor(hi0, c[3]), vi_set1(k1));
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

/* Spread the low 16 bits of m so that bit l lands at bit 4l (BMI2 PDEP where the ISA has it fast). */
static inline uint64_t spread4(uint32_t m) {
#ifdef MELD_SIMD_PHILOX /* the ISA header gives rounds and spread (PDEP) together */
    return meld_spread4(m);
#else
    uint64_t x = m & 0xffffu;
    x = (x | (x << 24)) & 0x000000FF000000FFull;
    x = (x | (x << 12)) & 0x000F000F000F000Full;
    x = (x | (x << 6)) & 0x0303030303030303ull;
    x = (x | (x << 3)) & 0x1111111111111111ull;
    return x;
#endif
}

void UK(meld_philox_bits)(size_t n, size_t i0, const meld_uk_philox_args *a) {
    uint32_t clo[MELD_W], chi[MELD_W];
    uint64_t acc = 0;
    unsigned nbits = 0;
    uint8_t *out = a->out;
    const vi p = vi_set1(a->p24);
#ifdef MELD_SIMD_PHILOX
    vi rk0[10], rk1[10];
    for (uint32_t r = 0, k0 = a->key0, k1 = a->key1; r < 10; r++, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
        rk0[r] = vi_set1(k0);
        rk1[r] = vi_set1(k1);
    }
#endif
    for (size_t j = 0; j < n; j += 4 * MELD_W) {
        uint64_t c0 = (i0 + j) >> 2;
        vi c[4] = {vi_set1(0), vi_set1(0), vi_set1(0), vi_set1(0)};
        if ((uint32_t)c0 <= UINT32_MAX - (MELD_W - 1)) { /* no carry into the high word */
            c[0] = vi_add(vi_set1((uint32_t)c0), vi_iota());
            c[1] = vi_set1((uint32_t)(c0 >> 32));
        } else {
            for (int l = 0; l < MELD_W; l++) {
                clo[l] = (uint32_t)(c0 + (uint64_t)l);
                chi[l] = (uint32_t)((c0 + (uint64_t)l) >> 32);
            }
            c[0] = vi_load(clo);
            c[1] = vi_load(chi);
        }
#ifdef MELD_SIMD_PHILOX
        vi_philox_rounds(c, rk0, rk1);
#else
        philox_rounds(c, a->key0, a->key1);
#endif
        uint64_t bits = 0;
        for (int w = 0; w < 4; w++) bits |= spread4(vm_to_bits(vi_lt(vi_srl(c[w], 8), p))) << w;
        /* 4W bits produced; fewer are needed when n is not a multiple of 4W */
        unsigned produced = (unsigned)(n - j < 4 * MELD_W ? n - j : 4 * MELD_W);
        if (produced == 64 && nbits == 0) { /* whole bytes, nothing waiting: store them as they are */
            memcpy(out, &bits, 8);
            out += 8;
            continue;
        }
        if (produced < 64) bits &= (1ull << produced) - 1;
        /* produced is a multiple of 16 when MELD_W > 1 and 4 when MELD_W == 1, so after each
         * flush at most 4 bits wait and the next add fits in 64 bits */
        acc |= bits << nbits;
        nbits += produced;
        while (nbits >= 8) { *out++ = (uint8_t)acc; acc >>= 8; nbits -= 8; }
    }
}
