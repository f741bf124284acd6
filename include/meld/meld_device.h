/* Meld devices: OpenCL (a GPU where there is one; PoCL on the CPU in tests). No OpenCL types
 * appear here. A context with an OpenCL device attached runs the merge kernels (convert, linear,
 * task arithmetic, TIES and its building blocks, DARE/DELLA/breadcrumbs merges, sparse apply),
 * magnitude selection, the grouped matmul and the MoE FFN on the device. Arguments may be host
 * memory (copied, or used in place where the device shares host memory) or device buffers
 * (meld_buffer_view), so a chain of operations can stay on the device. Merge and sparse results
 * are bit-identical to the CPU path; matmuls agree with an f64 reference within tolerance.
 * Other entry points return MELD_ERR_UNSUPPORTED for device buffers and run on the CPU for host
 * memory. */
#ifndef MELD_DEVICE_H
#define MELD_DEVICE_H

#include "meld_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum meld_device_kind {
    MELD_DEVICE_CPU = 0,
    MELD_DEVICE_OPENCL = 1,
} meld_device_kind;

/* OpenCL devices across all platforms, in platform then device order. 0 when no platform. */
MELD_API meld_status meld_opencl_device_count(size_t *count);
MELD_API meld_status meld_opencl_device_name(size_t index, char *name, size_t len);

/* Attach OpenCL device `index` (< 0: the MELD_CL_DEVICE environment variable, else 0) and build
 * the kernels once (embedded sources, or MELD_CL_SOURCE_DIR/meld.cl while developing).
 * MELD_ERR_NO_DEVICE without a platform, MELD_ERR_INDEX_OUT_OF_RANGE for a bad index,
 * MELD_ERR_BUILD_FAILED with the build log in meld_context_last_error(). */
MELD_API meld_status meld_context_use_opencl(meld_context *ctx, int index);
MELD_API meld_status meld_context_device(const meld_context *ctx, meld_device_kind *kind, char *name, size_t len);

/* Device buffers. wrap: the device uses `host` in place where it shares host memory. */
typedef struct meld_buffer meld_buffer;
MELD_API meld_status meld_buffer_create(meld_context *ctx, size_t bytes, meld_buffer **out);
MELD_API meld_status meld_buffer_wrap(meld_context *ctx, void *host, size_t bytes, meld_buffer **out);
MELD_API meld_status meld_buffer_upload(meld_context *ctx, meld_buffer *b, size_t offset, const void *src, size_t bytes);
MELD_API meld_status meld_buffer_download(meld_context *ctx, const meld_buffer *b, size_t offset, void *dst, size_t bytes);
MELD_API meld_status meld_buffer_destroy(meld_buffer *b);
/* A view / span whose data is the buffer: pass it to any device-capable entry point. */
MELD_API meld_view meld_buffer_view(const meld_buffer *b, meld_dtype dtype, size_t numel);
MELD_API meld_span meld_buffer_span(meld_buffer *b, meld_dtype dtype, size_t numel);

#ifdef __cplusplus
}
#endif
#endif
