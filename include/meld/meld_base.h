/* Meld: tensor kernels for composing expert models.
 * Base C API: status codes, dtypes, version, the context.
 * Stability: enum values are explicit and never reused; structs are passed by value or
 * pointer and only grow at the end. */
#ifndef MELD_BASE_H
#define MELD_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MELD_VERSION_MAJOR 0
#define MELD_VERSION_MINOR 9
#define MELD_VERSION_PATCH 0
/* MAJOR*10000 + MINOR*100 + PATCH */
#define MELD_VERSION (MELD_VERSION_MAJOR * 10000 + MELD_VERSION_MINOR * 100 + MELD_VERSION_PATCH)

#if defined(__GNUC__) || defined(__clang__)
#define MELD_API __attribute__((visibility("default")))
#else
#define MELD_API
#endif

typedef enum meld_status {
    MELD_OK = 0,
    MELD_ERR_NULL_POINTER = 1,      /* a required pointer argument is NULL */
    MELD_ERR_INVALID_ARGUMENT = 2,  /* a parameter is out of its documented range or NaN */
    MELD_ERR_SIZE_MISMATCH = 3,     /* tensors that must have the same element count do not */
    MELD_ERR_UNSUPPORTED_DTYPE = 4, /* unknown dtype value, or a dtype this call does not take */
    MELD_ERR_OUT_OF_MEMORY = 5,
    MELD_ERR_UNSUPPORTED = 6,       /* valid request this build or machine cannot serve (e.g. ISA) */
    MELD_ERR_INDEX_OUT_OF_RANGE = 7,/* an id or index (expert id, device index) is out of range */
    MELD_ERR_DEVICE = 8,            /* device (OpenCL) failure; see meld_context_last_error() */
    MELD_ERR_NO_DEVICE = 9,         /* no device of the requested kind exists */
    MELD_ERR_BUILD_FAILED = 10,     /* a device program failed to compile; log in last error */
} meld_status;

MELD_API const char *meld_status_string(meld_status status);

typedef enum meld_dtype {
    MELD_F32 = 0,
    MELD_F16 = 1,
    MELD_BF16 = 2,
} meld_dtype;

/* Bytes per element, 0 for an unknown dtype. */
MELD_API size_t meld_dtype_size(meld_dtype dtype);
MELD_API const char *meld_dtype_name(meld_dtype dtype);

/* Instruction-set paths. The environment variable MELD_ISA=scalar|avx2|avx512|avx512bf16
 * overrides AUTO. Every path gives the same bits. */
typedef enum meld_isa {
    MELD_ISA_AUTO = 0,
    MELD_ISA_SCALAR = 1,
    MELD_ISA_AVX2 = 2,   /* AVX2 + FMA + F16C */
    MELD_ISA_AVX512 = 3, /* AVX-512 F/BW/DQ/VL */
    MELD_ISA_AVX512BF16 = 4, /* AVX512 with AVX512-BF16 conversions for bf16 outputs */
} meld_isa;

MELD_API int meld_isa_supported(meld_isa isa); /* 1 if this machine can run it */
MELD_API const char *meld_isa_name(meld_isa isa);

/* Returns MELD_VERSION of the library actually linked. */
MELD_API int meld_version(void);
MELD_API const char *meld_version_string(void);

/* A read-only flat tensor: numel elements of dtype at data. Where a call takes an optional
 * view (a base), it is absent as {NULL, 0, any dtype}; NULL data with a nonzero numel is a
 * mistake, MELD_ERR_NULL_POINTER, never read as absent. */
typedef struct meld_view {
    const void *data;
    size_t numel;
    meld_dtype dtype;
} meld_view;

/* A writable flat tensor. */
typedef struct meld_span {
    void *data;
    size_t numel;
    meld_dtype dtype;
} meld_span;

/* The context owns the thread count, the ISA choice and (later) devices. Not thread-safe:
 * use one context per calling thread. */
typedef struct meld_context meld_context;

typedef struct meld_context_options {
    int threads;   /* 0 = the OpenMP default */
    meld_isa isa;  /* AUTO = best available, or MELD_ISA from the environment */
} meld_context_options;

MELD_API meld_status meld_context_create(int threads, meld_context **out);
MELD_API meld_status meld_context_create_ex(const meld_context_options *options, meld_context **out);
MELD_API meld_status meld_context_destroy(meld_context *ctx);
MELD_API meld_status meld_context_threads(const meld_context *ctx, int *out);
MELD_API meld_status meld_context_isa(const meld_context *ctx, meld_isa *out);
/* Message of the last failing call on this context that gave one (device build logs, a bad
 * expert id, ...), "" if none. A failing call without a message leaves it as it was: clear it
 * before a call whose message you will read. */
MELD_API const char *meld_context_last_error(const meld_context *ctx);
MELD_API void meld_context_clear_error(meld_context *ctx);

/* Streaming in windows, for inputs that the caller pages in and out (mmap'ed checkpoints larger
 * than a memory budget). Every streaming pass of the merge kernels (selection, reductions, the
 * merge and conversion passes) over more than `window` elements then runs window by window in
 * index order, and after each window, and at the end of every pass, calls
 * done(user, first, count) on the calling thread: that pass has read all it will read of
 * elements [first, first + count) of its inputs (a later pass may read them again). Results do
 * not change. window 0 (the default) or done NULL: off. */
typedef void (*meld_window_fn)(void *user, size_t first, size_t count);
MELD_API meld_status meld_context_set_window(meld_context *ctx, size_t window, meld_window_fn done, void *user);

/* Side work: the caller's own work done on the context's threads between tiles of the
 * streaming passes, in place of a thread of its own that would take a core from them (meld
 * merge writes the merged output this way). During such a pass on two or more threads, a thread
 * about to claim more tiles first calls fn(user) when enough tiles remain to keep the other
 * threads busy meanwhile; at most one thread at a time is inside fn. fn should do one short
 * piece of work (well under a millisecond), return nonzero if it did some, never call meld and
 * never fail: keep its errors for later. Results do not change. fn NULL (the default): off. */
typedef int (*meld_side_fn)(void *user);
MELD_API meld_status meld_context_set_side_work(meld_context *ctx, meld_side_fn fn, void *user);

/* The caller's own parallel work on the context's threads: fn(user, i) for every i in
 * [0, count), once each, items claimed in turn by the threads of one parallel region. For work
 * beside the kernels that should share their threads rather than start threads of its own
 * (meld merge pages in each tensor's inputs this way). fn must not call meld. */
typedef void (*meld_item_fn)(void *user, size_t i);
MELD_API meld_status meld_context_parallel_for(meld_context *ctx, size_t count, meld_item_fn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif
