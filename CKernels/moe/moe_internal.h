/* Internal: the packed expert weights, shared by the CPU and OpenCL paths. */
#ifndef MELD_MOE_INTERNAL_H
#define MELD_MOE_INTERNAL_H
#include "../core/internal.h"

struct meld_moe_weights {
    meld_isa isa;
    meld_dtype dtype;
    size_t E, N, K, nr, panels;
    void *data;   /* CPU: [E][K / KC blocks][panels][kc][nr] (ISA-specific) */
    size_t bytes;
    void *device; /* OpenCL: the dense E x N x K weights in a device buffer (cl_mem) */
    meld_context *owner;
};
#endif
