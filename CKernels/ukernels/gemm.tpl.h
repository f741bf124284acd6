/* GEMM microkernel (template): MELD_MR x (2 * MELD_W) register block. Contract: ukernel.h. */
#define MELD_NR (2 * MELD_W)

static inline __attribute__((always_inline)) void gemm_body(size_t kc, const float *const *a, const void *b,
                                                            const int bdt, float *const *c, size_t mr, size_t nr,
                                                            int accumulate) {
    vf c0[MELD_MR], c1[MELD_MR];
    for (int r = 0; r < MELD_MR; r++) c0[r] = c1[r] = vf_zero();
    for (size_t k = 0; k < kc; k++) {
        vf b0 = load_dt(b, bdt, k * MELD_NR), b1 = load_dt(b, bdt, k * MELD_NR + MELD_W);
        for (int r = 0; r < MELD_MR; r++) {
            vf av = vf_set1(a[r][k]);
            c0[r] = vf_fma(av, b0, c0[r]);
            c1[r] = vf_fma(av, b1, c1[r]);
        }
    }
    for (size_t r = 0; r < mr; r++) {
        if (nr == MELD_NR) {
            if (accumulate) { c0[r] = vf_add(vf_load(c[r]), c0[r]); c1[r] = vf_add(vf_load(c[r] + MELD_W), c1[r]); }
            vf_store(c[r], c0[r]);
            vf_store(c[r] + MELD_W, c1[r]);
        } else {
            float tmp[MELD_NR];
            vf_store(tmp, c0[r]);
            vf_store(tmp + MELD_W, c1[r]);
            for (size_t j = 0; j < nr; j++) c[r][j] = accumulate ? c[r][j] + tmp[j] : tmp[j];
        }
    }
}

void UK(meld_f32_gemm)(size_t kc, const float *const *a, const void *b, int b_dt, float *const *c, size_t mr,
                       size_t nr, int accumulate) {
    switch (b_dt) {
    case MELD_F32: gemm_body(kc, a, b, MELD_F32, c, mr, nr, accumulate); break;
    case MELD_BF16: gemm_body(kc, a, b, MELD_BF16, c, mr, nr, accumulate); break;
    default: gemm_body(kc, a, b, MELD_F16, c, mr, nr, accumulate); break;
    }
}
