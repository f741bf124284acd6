/* The registry entry of this ISA: every ukernel above, by role. */
#define MELD_REG_NAME MELD_CAT(meld_ukernels, MELD_ISA_SUFFIX)
#define MELD_STR_(x) #x
#define MELD_STR(x) MELD_STR_(x)
#define meld_ukernels__scalar meld_ukernels_scalar
#define meld_ukernels__avx2 meld_ukernels_avx2
#define meld_ukernels__avx512 meld_ukernels_avx512
#define meld_ukernels__avx512bf16 meld_ukernels_avx512bf16

const meld_ukernels MELD_REG_NAME = {
    .isa = MELD_ISA_ID,
    .name = MELD_STR(MELD_ISA_SUFFIX),
    .convert = UK(meld_xf32_convert),
    .tv_merge = UK(meld_xf32_tv_merge),
    .collect = UK(meld_xf32_collect),
    .hist = UK(meld_xf32_hist),
    .philox_bits = UK(meld_philox_bits),
    .philox_u24 = UK(meld_philox_u24),
    .gram = UK(meld_f64_gram),
    .l1 = UK(meld_f64_l1),
    .apply = UK(meld_xf32_sparse_apply),
    .gemm = UK(meld_f32_gemm),
    .gemm_packed = UK(meld_f32_gemm_packed),
    .gemm_mr = MELD_MR,
    .gemm_nr = 2 * MELD_W,
    .gemm_spread_prefetch = MELD_GEMM_SPREAD_PREFETCH,
    .gemm_stream_flops_per_byte = MELD_GEMM_STREAM_FLOPS_PER_BYTE,
};
