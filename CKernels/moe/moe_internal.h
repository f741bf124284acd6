/* Internal: the packed expert weights, shared by the CPU and OpenCL paths. */
#ifndef MELD_MOE_INTERNAL_H
#define MELD_MOE_INTERNAL_H
#include "../core/internal.h"

struct meld_moe_weights {
    meld_isa isa;
    meld_dtype dtype;
    size_t E, N, K, nr, panels;
    void *data;   /* CPU: [E][K / KC blocks][panels][kc][nr] (ISA-specific); with pairs: kc rounded
                   * up to even, each k pair of a column adjacent ([kc/2][nr][2]) */
    int pairs;    /* bf16 weights for the AVX512-BF16 dot-product microkernel */
    size_t bytes;
    void *device; /* OpenCL: the dense E x N x K weights in a device buffer (cl_mem) */
    meld_context *owner;
};
#endif
