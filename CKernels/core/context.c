/* Status strings, version, ISA detection and the context. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#if defined(__linux__)
#include <sys/mman.h>
#endif

const char *meld_status_string(meld_status status) {
    switch (status) {
    case MELD_OK: return "ok";
    case MELD_ERR_NULL_POINTER: return "a required pointer argument is NULL";
    case MELD_ERR_INVALID_ARGUMENT: return "an argument is out of its valid range or NaN";
    case MELD_ERR_SIZE_MISMATCH: return "tensor element counts do not match";
    case MELD_ERR_UNSUPPORTED_DTYPE: return "unknown or unsupported dtype";
    case MELD_ERR_OUT_OF_MEMORY: return "out of memory";
    case MELD_ERR_UNSUPPORTED: return "not supported by this build or machine";
    case MELD_ERR_INDEX_OUT_OF_RANGE: return "an id or index is out of range";
    case MELD_ERR_DEVICE: return "device error";
    case MELD_ERR_NO_DEVICE: return "no such device";
    case MELD_ERR_BUILD_FAILED: return "device program build failed";
    }
    return "unknown status";
}

size_t meld_dtype_size(meld_dtype dtype) {
    switch (dtype) {
    case MELD_F32: return 4;
    case MELD_F16: case MELD_BF16: return 2;
    }
    return 0;
}

const char *meld_dtype_name(meld_dtype dtype) {
    switch (dtype) {
    case MELD_F32: return "f32";
    case MELD_F16: return "f16";
    case MELD_BF16: return "bf16";
    }
    return "unknown";
}

int meld_version(void) { return MELD_VERSION; }

#define MELD_XSTR_(x) #x
#define MELD_XSTR(x) MELD_XSTR_(x)
const char *meld_version_string(void) {
    return MELD_XSTR(MELD_VERSION_MAJOR) "." MELD_XSTR(MELD_VERSION_MINOR) "." MELD_XSTR(MELD_VERSION_PATCH);
}

const char *meld_isa_name(meld_isa isa) {
    switch (isa) {
    case MELD_ISA_AUTO: return "auto";
    case MELD_ISA_SCALAR: return "scalar";
    case MELD_ISA_AVX2: return "avx2";
    case MELD_ISA_AVX512: return "avx512";
    case MELD_ISA_AVX512BF16: return "avx512bf16";
    }
    return "unknown";
}

int meld_isa_supported(meld_isa isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (isa) {
    case MELD_ISA_AUTO: case MELD_ISA_SCALAR: return 1;
    case MELD_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
    case MELD_ISA_AVX512:
        return meld_isa_supported(MELD_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl");
    case MELD_ISA_AVX512BF16:
        return meld_isa_supported(MELD_ISA_AVX512) && __builtin_cpu_supports("avx512bf16");
    }
    return 0;
#else
    return isa == MELD_ISA_AUTO || isa == MELD_ISA_SCALAR;
#endif
}

static const meld_ukernels *registry_for(meld_isa isa) {
    switch (isa) {
#if defined(__x86_64__)
    case MELD_ISA_AVX512BF16: return &meld_ukernels_avx512bf16;
    case MELD_ISA_AVX512: return &meld_ukernels_avx512;
    case MELD_ISA_AVX2: return &meld_ukernels_avx2;
#endif
    default: return &meld_ukernels_scalar;
    }
}

static meld_isa resolve_isa(meld_isa want) {
    if (want == MELD_ISA_AUTO) {
        const char *env = getenv("MELD_ISA");
        if (env && *env) {
            if (!strcmp(env, "scalar")) want = MELD_ISA_SCALAR;
            else if (!strcmp(env, "avx2")) want = MELD_ISA_AVX2;
            else if (!strcmp(env, "avx512")) want = MELD_ISA_AVX512;
            else if (!strcmp(env, "avx512bf16")) want = MELD_ISA_AVX512BF16;
        }
    }
    if (want == MELD_ISA_AUTO) {
        if (meld_isa_supported(MELD_ISA_AVX512BF16)) return MELD_ISA_AVX512BF16;
        if (meld_isa_supported(MELD_ISA_AVX512)) return MELD_ISA_AVX512;
        if (meld_isa_supported(MELD_ISA_AVX2)) return MELD_ISA_AVX2;
        return MELD_ISA_SCALAR;
    }
    return want;
}

meld_status meld_context_create_ex(const meld_context_options *options, meld_context **out) {
    if (!options || !out) return MELD_ERR_NULL_POINTER;
    *out = NULL;
    if (options->threads < 0 || options->threads > 4096) return MELD_ERR_INVALID_ARGUMENT;
    if (options->isa < MELD_ISA_AUTO || options->isa > MELD_ISA_AVX512BF16) return MELD_ERR_INVALID_ARGUMENT;
    meld_isa isa = resolve_isa(options->isa);
    if (!meld_isa_supported(isa)) return MELD_ERR_UNSUPPORTED;
    meld_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return MELD_ERR_OUT_OF_MEMORY;
    ctx->threads = options->threads > 0 ? options->threads : omp_get_max_threads();
    if (ctx->threads < 1) ctx->threads = 1;
    ctx->isa = isa;
    ctx->uk = registry_for(isa);
    *out = ctx;
    return MELD_OK;
}

meld_status meld_context_create(int threads, meld_context **out) {
    meld_context_options o = {.threads = threads, .isa = MELD_ISA_AUTO};
    return meld_context_create_ex(&o, out);
}

void meld_opencl_release(meld_context *ctx);

meld_status meld_context_destroy(meld_context *ctx) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    meld_opencl_release(ctx);
    free(ctx->scratch);
    free(ctx);
    return MELD_OK;
}

meld_status meld_context_threads(const meld_context *ctx, int *out) {
    if (!ctx || !out) return MELD_ERR_NULL_POINTER;
    *out = ctx->threads;
    return MELD_OK;
}

meld_status meld_context_isa(const meld_context *ctx, meld_isa *out) {
    if (!ctx || !out) return MELD_ERR_NULL_POINTER;
    *out = ctx->isa;
    return MELD_OK;
}

const char *meld_context_last_error(const meld_context *ctx) { return ctx ? ctx->last_error : ""; }
void meld_context_clear_error(meld_context *ctx) { if (ctx) ctx->last_error[0] = '\0'; }

meld_status meld_context_set_window(meld_context *ctx, size_t window, meld_window_fn done, void *user) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    ctx->window = done ? window : 0;
    ctx->window_done = window ? done : NULL;
    ctx->window_user = user;
    return MELD_OK;
}

meld_status meld_context_set_side_work(meld_context *ctx, meld_side_fn fn, void *user) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    ctx->side = fn;
    ctx->side_user = user;
    return MELD_OK;
}

meld_status meld_context_parallel_for(meld_context *ctx, size_t count, meld_item_fn fn, void *user) {
    if (!ctx || (!fn && count)) return MELD_ERR_NULL_POINTER;
    if (!count) return MELD_OK; /* num_threads must be positive */
    const int nt = (size_t)ctx->threads < count ? ctx->threads : (int)count;
    size_t next = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    for (size_t i; (i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < count;) fn(user, i);
    return MELD_OK;
}

void meld_set_error(meld_context *ctx, const char *fmt, ...) {
    if (!ctx) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
}

meld_status meld_check_view(meld_view v, size_t n) {
    if (!meld_dtype_valid(v.dtype)) return MELD_ERR_UNSUPPORTED_DTYPE;
    if (v.numel != n) return MELD_ERR_SIZE_MISMATCH;
    if (!v.data && n) return MELD_ERR_NULL_POINTER;
    return MELD_OK;
}

meld_status meld_check_span(meld_span s, size_t n) {
    return meld_check_view((meld_view){s.data, s.numel, s.dtype}, n);
}

meld_status meld_check_models(size_t k, const meld_view *models, size_t n) {
    if (k == 0 || k > MELD_MAX_MODELS) return MELD_ERR_INVALID_ARGUMENT;
    if (!models) return MELD_ERR_NULL_POINTER;
    for (size_t i = 0; i < k; i++) MELD_TRY(meld_check_view(models[i], n));
    return MELD_OK;
}

meld_status meld_check_floats(const float *w, size_t k) {
    if (!w) return MELD_ERR_NULL_POINTER;
    for (size_t i = 0; i < k; i++)
        if (!isfinite(w[i])) return MELD_ERR_INVALID_ARGUMENT;
    return MELD_OK;
}

meld_status meld_check_weights(meld_context *ctx, const float *w, size_t k) {
    if (!w) return MELD_ERR_NULL_POINTER;
    double total = 0.0;
    for (size_t i = 0; i < k; i++) {
        if (!isfinite(w[i])) { meld_set_error(ctx, "weight %zu is %g: weights must be finite", i, (double)w[i]); return MELD_ERR_INVALID_ARGUMENT; }
        total += fabs((double)w[i]);
    }
    if (total > FLT_MAX) {
        meld_set_error(ctx, "the weights' magnitudes sum to %g, past f32's range: a weight-sum divisor would be infinite", total);
        return MELD_ERR_INVALID_ARGUMENT;
    }
    return MELD_OK;
}

void *meld_scratch(meld_context *ctx, size_t bytes) {
    if (bytes <= ctx->scratch_bytes) return ctx->scratch;
    free(ctx->scratch);
    ctx->scratch = malloc(bytes);
    ctx->scratch_bytes = ctx->scratch ? bytes : 0;
    return ctx->scratch;
}

/* Large long-lived buffers (packed expert weights) on 2 MiB boundaries, asking for transparent
 * huge pages: streamed weights then cross no 4 KiB page boundary, where the hardware prefetcher
 * stops, and cost no TLB miss per 4 KiB. Freed with free(). */
void *meld_alloc_large(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge) return aligned_alloc(64, (bytes + 63) / 64 * 64);
    void *p = NULL;
    if (posix_memalign(&p, huge, (bytes + huge - 1) / huge * huge) != 0) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (!getenv("MELD_NO_HUGEPAGE")) madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}
