/* The avx512bf16 instantiation of every microkernel template, and its registry entry: the
 * AVX-512 kernels with bf16 outputs rounded by VCVTNE2PS2BF16 (simd_avx512.h, MELD_HW_BF16). */
#include <stddef.h>
#include <stdint.h>
#include "meld.h"
#include "../ukernels/ukernel.h"
#include <immintrin.h>
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,bmi2"))), apply_to = function)
#define MELD_HW_BF16 1
#include "../simd/simd_avx512.h"
#define MELD_ISA_ID MELD_ISA_AVX512BF16
#include "../ukernels/common.tpl.h"
#include "../ukernels/merge.tpl.h"
#include "../ukernels/select.tpl.h"
#include "../ukernels/philox.tpl.h"
#include "../ukernels/reduce.tpl.h"
#include "../ukernels/gemm.tpl.h"
#include "../ukernels/registry.tpl.h"
#pragma clang attribute pop
