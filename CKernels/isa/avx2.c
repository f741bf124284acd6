/* The avx2 instantiation of every microkernel template, and its registry entry. */
#include <stddef.h>
#include <stdint.h>
#include "meld.h"
#include "../ukernels/ukernel.h"
#include <immintrin.h>
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi2"))), apply_to = function)
#include "../simd/simd_avx2.h"
#define MELD_ISA_ID MELD_ISA_AVX2
#include "../ukernels/common.tpl.h"
#include "../ukernels/merge.tpl.h"
#include "../ukernels/select.tpl.h"
#include "../ukernels/philox.tpl.h"
#include "../ukernels/reduce.tpl.h"
#include "../ukernels/gemm.tpl.h"
#include "../ukernels/registry.tpl.h"
#pragma clang attribute pop
