/* The OpenCL backend: device selection, one program build per context, device buffers, and the
 * device versions of the merge, selection, sparse-apply, grouped-matmul and MoE-FFN drivers.
 * Kernel sources: CKernels/opencl/meld.cl, embedded with C23 #embed. */
#define CL_TARGET_OPENCL_VERSION 120
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <stdlib.h>
#include <string.h>
#include "opencl.h"
#include "../merge/select.h"
#include "../moe/moe_internal.h"

static const char meld_cl_embedded[] = {
#embed "../opencl/meld.cl"
    , 0};

typedef struct cl_state {
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    cl_program program;
    cl_kernel convert, tv[8], sample, bracket, hist, count, apply, gemm, act, combine; /* tv[K-1]: K models */
    char name[256];
    int unified;
    meld_buffer **bufs;
    size_t nbufs, capbufs;
} cl_state;

struct meld_buffer {
    meld_context *ctx;
    cl_mem mem;
    size_t bytes;
};

static meld_status cl_fail(meld_context *ctx, cl_int e, const char *what) {
    meld_set_error(ctx, "OpenCL error %d in %s", (int)e, what);
    if (e == CL_MEM_OBJECT_ALLOCATION_FAILURE || e == CL_OUT_OF_RESOURCES || e == CL_OUT_OF_HOST_MEMORY ||
        e == CL_INVALID_BUFFER_SIZE)
        return MELD_ERR_OUT_OF_MEMORY;
    return MELD_ERR_DEVICE;
}
#define CL_TRY(ctx, call, what) do { cl_int e_ = (call); if (e_ != CL_SUCCESS) return cl_fail(ctx, e_, what); } while (0)

/* ---- devices --------------------------------------------------------------------------------- */
static size_t list_devices(cl_device_id *out, size_t cap) {
    cl_uint np = 0;
    if (clGetPlatformIDs(0, NULL, &np) != CL_SUCCESS || np == 0) return 0;
    cl_platform_id plats[16];
    if (np > 16) np = 16;
    if (clGetPlatformIDs(np, plats, NULL) != CL_SUCCESS) return 0;
    size_t n = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS) continue;
        cl_device_id devs[64];
        if (nd > 64) nd = 64;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL) != CL_SUCCESS) continue;
        for (cl_uint d = 0; d < nd && n < cap; d++) out[n++] = devs[d];
    }
    return n;
}

meld_status meld_opencl_device_count(size_t *count) {
    if (!count) return MELD_ERR_NULL_POINTER;
    cl_device_id d[256];
    *count = list_devices(d, 256);
    return MELD_OK;
}

meld_status meld_opencl_device_name(size_t index, char *name, size_t len) {
    if (!name || !len) return MELD_ERR_NULL_POINTER;
    cl_device_id d[256];
    size_t n = list_devices(d, 256);
    if (index >= n) return n ? MELD_ERR_INDEX_OUT_OF_RANGE : MELD_ERR_NO_DEVICE;
    name[0] = 0;
    clGetDeviceInfo(d[index], CL_DEVICE_NAME, len, name, NULL);
    name[len - 1] = 0;
    return MELD_OK;
}

void meld_opencl_release(meld_context *ctx) {
    cl_state *st = ctx->opencl;
    if (!st) return;
    for (size_t i = 0; i < st->nbufs; i++) { /* buffers outliving their context become empty */
        clReleaseMemObject(st->bufs[i]->mem);
        st->bufs[i]->mem = NULL;
        st->bufs[i]->ctx = NULL;
    }
    free(st->bufs);
    cl_kernel ks[] = {st->convert, st->tv[0], st->tv[1], st->tv[2], st->tv[3], st->tv[4], st->tv[5], st->tv[6], st->tv[7],
                      st->sample, st->bracket, st->hist, st->count, st->apply, st->gemm, st->act, st->combine};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) if (ks[i]) clReleaseKernel(ks[i]);
    if (st->program) clReleaseProgram(st->program);
    if (st->queue) clReleaseCommandQueue(st->queue);
    if (st->context) clReleaseContext(st->context);
    free(st);
    ctx->opencl = NULL;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) == (size_t)n) s[n] = 0;
    else { free(s); s = NULL; }
    fclose(f);
    return s;
}

meld_status meld_context_use_opencl(meld_context *ctx, int index) {
    if (!ctx) return MELD_ERR_NULL_POINTER;
    meld_opencl_release(ctx);
    if (index < 0) {
        const char *env = getenv("MELD_CL_DEVICE");
        index = env && *env ? atoi(env) : 0;
    }
    cl_device_id devs[256];
    size_t n = list_devices(devs, 256);
    if (n == 0) { meld_set_error(ctx, "no OpenCL platform or device found"); return MELD_ERR_NO_DEVICE; }
    if (index < 0 || (size_t)index >= n) {
        meld_set_error(ctx, "OpenCL device %d does not exist (%zu device%s found)", index, n, n == 1 ? "" : "s");
        return MELD_ERR_INDEX_OUT_OF_RANGE;
    }
    cl_state *st = calloc(1, sizeof *st);
    if (!st) return MELD_ERR_OUT_OF_MEMORY;
    st->device = devs[index];
    clGetDeviceInfo(st->device, CL_DEVICE_NAME, sizeof st->name, st->name, NULL);
    cl_bool unified = CL_FALSE;
    clGetDeviceInfo(st->device, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
    st->unified = unified == CL_TRUE;
    cl_int e;
    ctx->opencl = st; /* so that failures below release what was made */
    st->context = clCreateContext(NULL, 1, &st->device, NULL, NULL, &e);
    if (e != CL_SUCCESS) { meld_status s = cl_fail(ctx, e, "clCreateContext"); meld_opencl_release(ctx); return s; }
    st->queue = clCreateCommandQueue(st->context, st->device, 0, &e);
    if (e != CL_SUCCESS) { meld_status s = cl_fail(ctx, e, "clCreateCommandQueue"); meld_opencl_release(ctx); return s; }
    const char *dir = getenv("MELD_CL_SOURCE_DIR");
    char *owned = NULL;
    const char *src = meld_cl_embedded;
    if (dir && *dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/meld.cl", dir);
        owned = read_file(path);
        if (!owned) { meld_set_error(ctx, "cannot read OpenCL source %s", path); meld_opencl_release(ctx); return MELD_ERR_BUILD_FAILED; }
        src = owned;
    }
    st->program = clCreateProgramWithSource(st->context, 1, &src, NULL, &e);
    free(owned);
    if (e != CL_SUCCESS) { meld_status s = cl_fail(ctx, e, "clCreateProgramWithSource"); meld_opencl_release(ctx); return s; }
    cl_device_fp_config fp = 0;
    clGetDeviceInfo(st->device, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fp, &fp, NULL);
    /* division must round correctly for results to match the CPU bit for bit */
    const char *opts = (fp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) ? "-cl-fp32-correctly-rounded-divide-sqrt" : "";
    e = clBuildProgram(st->program, 1, &st->device, opts, NULL, NULL);
    if (e != CL_SUCCESS) {
        size_t len = 0;
        clGetProgramBuildInfo(st->program, st->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &len);
        char *log = malloc(len + 1);
        if (log) {
            clGetProgramBuildInfo(st->program, st->device, CL_PROGRAM_BUILD_LOG, len, log, NULL);
            log[len] = 0;
            meld_set_error(ctx, "OpenCL program build failed on %s: %s", st->name, log);
            free(log);
        }
        meld_opencl_release(ctx);
        return MELD_ERR_BUILD_FAILED;
    }
    struct { cl_kernel *k; const char *name; } ks[] = {
        {&st->convert, "meld_convert"}, {&st->tv[0], "meld_tv_merge1"}, {&st->tv[1], "meld_tv_merge2"},
        {&st->tv[2], "meld_tv_merge3"}, {&st->tv[3], "meld_tv_merge4"}, {&st->tv[4], "meld_tv_merge5"},
        {&st->tv[5], "meld_tv_merge6"}, {&st->tv[6], "meld_tv_merge7"}, {&st->tv[7], "meld_tv_merge8"}, {&st->sample, "meld_sample_bits"},
        {&st->bracket, "meld_bracket_collect"}, {&st->hist, "meld_hist_range"},
        {&st->count, "meld_count_eq"}, {&st->apply, "meld_sparse_apply"}, {&st->gemm, "meld_gemm_grouped"},
        {&st->act, "meld_moe_act"}, {&st->combine, "meld_moe_combine"}};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        *ks[i].k = clCreateKernel(st->program, ks[i].name, &e);
        if (e != CL_SUCCESS) { meld_status s = cl_fail(ctx, e, ks[i].name); meld_opencl_release(ctx); return s; }
    }
    return MELD_OK;
}

meld_status meld_context_device(const meld_context *ctx, meld_device_kind *kind, char *name, size_t len) {
    if (!ctx || !kind) return MELD_ERR_NULL_POINTER;
    const cl_state *st = ctx->opencl;
    *kind = st ? MELD_DEVICE_OPENCL : MELD_DEVICE_CPU;
    if (name && len) snprintf(name, len, "%s", st ? st->name : "cpu");
    return MELD_OK;
}

/* ---- buffers ------------------------------------------------------------------------------------ */
static meld_status register_buffer(meld_context *ctx, meld_buffer *b) {
    cl_state *st = ctx->opencl;
    if (st->nbufs == st->capbufs) {
        size_t cap = st->capbufs ? 2 * st->capbufs : 16;
        meld_buffer **nb = realloc(st->bufs, cap * sizeof *nb);
        if (!nb) return MELD_ERR_OUT_OF_MEMORY;
        st->bufs = nb;
        st->capbufs = cap;
    }
    st->bufs[st->nbufs++] = b;
    return MELD_OK;
}

static meld_status buffer_new(meld_context *ctx, void *host, size_t bytes, cl_mem_flags flags, meld_buffer **out) {
    if (!ctx || !out) return MELD_ERR_NULL_POINTER;
    *out = NULL;
    if (!meld_cl_active(ctx)) { meld_set_error(ctx, "no OpenCL device is attached to this context"); return MELD_ERR_NO_DEVICE; }
    if (bytes == 0) return MELD_ERR_INVALID_ARGUMENT;
    cl_state *st = ctx->opencl;
    cl_int e;
    cl_mem m = clCreateBuffer(st->context, flags, bytes, host, &e);
    if (e != CL_SUCCESS) return cl_fail(ctx, e, "clCreateBuffer");
    meld_buffer *b = malloc(sizeof *b);
    if (!b) { clReleaseMemObject(m); return MELD_ERR_OUT_OF_MEMORY; }
    *b = (meld_buffer){ctx, m, bytes};
    if (register_buffer(ctx, b) != MELD_OK) { clReleaseMemObject(m); free(b); return MELD_ERR_OUT_OF_MEMORY; }
    *out = b;
    return MELD_OK;
}

meld_status meld_buffer_create(meld_context *ctx, size_t bytes, meld_buffer **out) {
    return buffer_new(ctx, NULL, bytes, CL_MEM_READ_WRITE, out);
}

meld_status meld_buffer_wrap(meld_context *ctx, void *host, size_t bytes, meld_buffer **out) {
    if (!host) return MELD_ERR_NULL_POINTER;
    return buffer_new(ctx, host, bytes, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, out);
}

meld_status meld_buffer_upload(meld_context *ctx, meld_buffer *b, size_t offset, const void *src, size_t bytes) {
    if (!ctx || !b || (!src && bytes)) return MELD_ERR_NULL_POINTER;
    if (b->ctx != ctx || !b->mem) return MELD_ERR_INVALID_ARGUMENT;
    if (offset > b->bytes || bytes > b->bytes - offset) return MELD_ERR_SIZE_MISMATCH;
    cl_state *st = ctx->opencl;
    if (bytes) CL_TRY(ctx, clEnqueueWriteBuffer(st->queue, b->mem, CL_TRUE, offset, bytes, src, 0, NULL, NULL), "upload");
    return MELD_OK;
}

meld_status meld_buffer_download(meld_context *ctx, const meld_buffer *b, size_t offset, void *dst, size_t bytes) {
    if (!ctx || !b || (!dst && bytes)) return MELD_ERR_NULL_POINTER;
    if (b->ctx != ctx || !b->mem) return MELD_ERR_INVALID_ARGUMENT;
    if (offset > b->bytes || bytes > b->bytes - offset) return MELD_ERR_SIZE_MISMATCH;
    cl_state *st = ctx->opencl;
    if (bytes) CL_TRY(ctx, clEnqueueReadBuffer(st->queue, b->mem, CL_TRUE, offset, bytes, dst, 0, NULL, NULL), "download");
    return MELD_OK;
}

meld_status meld_buffer_destroy(meld_buffer *b) {
    if (!b) return MELD_ERR_NULL_POINTER;
    if (b->ctx && b->ctx->opencl) {
        cl_state *st = b->ctx->opencl;
        for (size_t i = 0; i < st->nbufs; i++)
            if (st->bufs[i] == b) { st->bufs[i] = st->bufs[--st->nbufs]; break; }
    }
    if (b->mem) clReleaseMemObject(b->mem);
    free(b);
    return MELD_OK;
}

meld_view meld_buffer_view(const meld_buffer *b, meld_dtype dtype, size_t numel) { return (meld_view){b, numel, dtype}; }
meld_span meld_buffer_span(meld_buffer *b, meld_dtype dtype, size_t numel) { return (meld_span){b, numel, dtype}; }

int meld_cl_is_buffer(const meld_context *ctx, const void *p) {
    const cl_state *st = ctx ? ctx->opencl : NULL;
    if (!st || !p) return 0;
    for (size_t i = 0; i < st->nbufs; i++)
        if ((const void *)st->bufs[i] == p) return 1;
    return 0;
}

meld_status meld_cl_reject_buffers(meld_context *ctx, const void *const *ptrs, size_t n, const char *op) {
    for (size_t i = 0; i < n; i++)
        if (meld_cl_is_buffer(ctx, ptrs[i])) {
            meld_set_error(ctx, "%s does not run on the OpenCL device: pass host memory", op);
            return MELD_ERR_UNSUPPORTED;
        }
    return MELD_OK;
}

/* ---- kernel arguments: device buffers as they are, host memory in place or copied ------------- */
typedef struct arg {
    cl_mem mem;
    int temp, write;
    void *host;
    size_t bytes;
} arg;

static meld_status arg_make(meld_context *ctx, const void *p, size_t bytes, int write, arg *a) {
    cl_state *st = ctx->opencl;
    *a = (arg){0};
    if (meld_cl_is_buffer(ctx, p)) {
        const meld_buffer *b = p;
        if (bytes > b->bytes) { meld_set_error(ctx, "device buffer of %zu bytes is too small (%zu needed)", b->bytes, bytes); return MELD_ERR_SIZE_MISMATCH; }
        a->mem = b->mem;
        return MELD_OK;
    }
    cl_int e;
    a->temp = 1;
    a->write = write;
    a->host = (void *)p;
    a->bytes = bytes;
    if (!p || !bytes) { /* an unused argument still needs a valid buffer */
        a->write = 0;
        a->mem = clCreateBuffer(st->context, CL_MEM_READ_WRITE, 64, NULL, &e);
    } else {
        cl_mem_flags f = (write ? CL_MEM_READ_WRITE : CL_MEM_READ_ONLY) | (st->unified ? CL_MEM_USE_HOST_PTR : CL_MEM_COPY_HOST_PTR);
        a->mem = clCreateBuffer(st->context, f, bytes, (void *)p, &e);
    }
    if (e != CL_SUCCESS) return cl_fail(ctx, e, "clCreateBuffer (argument)");
    return MELD_OK;
}

static meld_status arg_done(meld_context *ctx, arg *a, meld_status st_in) {
    cl_state *st = ctx->opencl;
    meld_status s = st_in;
    if (a->temp && a->write && a->mem && s == MELD_OK) {
        cl_int e;
        if (st->unified) { /* map/unmap makes the host copy current */
            void *m = clEnqueueMapBuffer(st->queue, a->mem, CL_TRUE, CL_MAP_READ, 0, a->bytes, 0, NULL, NULL, &e);
            if (e == CL_SUCCESS) { if (m != a->host) memcpy(a->host, m, a->bytes); e = clEnqueueUnmapMemObject(st->queue, a->mem, m, 0, NULL, NULL); clFinish(st->queue); }
        } else {
            e = clEnqueueReadBuffer(st->queue, a->mem, CL_TRUE, 0, a->bytes, a->host, 0, NULL, NULL);
        }
        if (e != CL_SUCCESS) s = cl_fail(ctx, e, "reading results");
    }
    if (a->temp && a->mem) clReleaseMemObject(a->mem);
    a->mem = NULL;
    return s;
}

/* elementwise kernels: one work-item per element (PoCL vectorizes across work-items) */
static meld_status run1d(meld_context *ctx, cl_kernel k, size_t n, const char *what) {
    cl_state *st = ctx->opencl;
    size_t l = 256, g = (n + l - 1) / l * l;
    if (g == 0) g = l;
    CL_TRY(ctx, clEnqueueNDRangeKernel(st->queue, k, 1, NULL, &g, &l, 0, NULL, NULL), what);
    CL_TRY(ctx, clFinish(st->queue), what);
    return MELD_OK;
}

/* kernels where each work-item owns `span` consecutive elements: the values of meld.cl's VW and TV_SPAN */
#define CL_VW 16
#define CL_TV_SPAN 64
static meld_status run1d_span(meld_context *ctx, cl_kernel k, size_t n, size_t span, const char *what) {
    return run1d(ctx, k, (n + span - 1) / span, what);
}

#define SETARG(k, i, v) clSetKernelArg(k, i, sizeof(v), &(v))

/* ---- convert ---------------------------------------------------------------------------------- */
meld_status meld_cl_convert(meld_context *ctx, meld_view src, meld_span dst) {
    cl_state *st = ctx->opencl;
    arg a, b;
    MELD_TRY(arg_make(ctx, src.data, src.numel * meld_dtype_size(src.dtype), 0, &a));
    meld_status s = arg_make(ctx, dst.data, dst.numel * meld_dtype_size(dst.dtype), 1, &b);
    if (s == MELD_OK) {
        cl_int sdt = src.dtype, ddt = dst.dtype;
        cl_ulong n = dst.numel;
        SETARG(st->convert, 0, a.mem); SETARG(st->convert, 1, sdt); SETARG(st->convert, 2, b.mem);
        SETARG(st->convert, 3, ddt); SETARG(st->convert, 4, n);
        s = run1d_span(ctx, st->convert, dst.numel, CL_VW, "meld_convert");
    }
    s = arg_done(ctx, &b, s);
    arg_done(ctx, &a, MELD_OK);
    return s;
}

/* ---- the task-vector pass ---------------------------------------------------------------------- */
typedef struct cl_rule {
    uint32_t kind, thr, thr2, key0;
    uint64_t cut, cut2;
    uint32_t key1, thi, mask_word, dtype; /* thi, tlo: the keep threshold p32 = thi 2^16 + tlo */
    float scale, w;
    uint32_t tlo, pad0;
} cl_rule;

#define CL_MAXK 8

meld_status meld_cl_tv_run(meld_context *ctx, const tv_request *r) {
    cl_state *st = ctx->opencl;
    if (r->k > CL_MAXK) { meld_set_error(ctx, "the OpenCL path merges at most %d models per call", CL_MAXK); return MELD_ERR_UNSUPPORTED; }
    const size_t n = r->n, words = (n + 31) / 32;
    cl_rule rules[CL_MAXK];
    size_t nmask = 0;
    for (size_t k = 0; k < r->k; k++) nmask += r->rule[k].kind == TV_MASK;
    uint32_t *masks = calloc(nmask * words + 1, sizeof(uint32_t));
    if (!masks) return MELD_ERR_OUT_OF_MEMORY;
    size_t m = 0;
    for (size_t k = 0; k < r->k; k++) {
        const tv_rule *t = &r->rule[k];
        rules[k] = (cl_rule){.kind = t->kind, .thr = t->thr, .thr2 = t->thr2, .key0 = t->key0, .cut = t->cut, .cut2 = t->cut2,
                             .key1 = t->key1, .thi = (uint32_t)(t->p32 >> 16), .tlo = (uint32_t)t->p32 & 0xffffu, .dtype = r->x[k].dtype, .scale = t->scale, .w = r->w[k]};
        if (t->kind == TV_MASK) {
            if (meld_cl_is_buffer(ctx, t->mask)) { free(masks); meld_set_error(ctx, "masks must be host memory"); return MELD_ERR_UNSUPPORTED; }
            rules[k].mask_word = (uint32_t)(m * words);
            memcpy(masks + m * words, t->mask, (n + 7) / 8);
            m++;
        }
    }
    arg base, x[CL_MAXK], out, sin, sout, rul, msk;
    meld_status s = arg_make(ctx, r->base.data, r->base.data ? n * meld_dtype_size(r->base.dtype) : 0, 0, &base);
    size_t nx = 0;
    for (; s == MELD_OK && nx < r->k; nx++) s = arg_make(ctx, r->x[nx].data, n * meld_dtype_size(r->x[nx].dtype), 0, &x[nx]);
    int have_out = 0, have_sin = 0, have_sout = 0, have_rul = 0, have_msk = 0;
    if (s == MELD_OK) { s = arg_make(ctx, r->out.data, r->out.data ? n * meld_dtype_size(r->out.dtype) : 0, r->out.data != NULL, &out); have_out = 1; }
    if (s == MELD_OK) { s = arg_make(ctx, r->sign_in, r->sign_in ? n : 0, 0, &sin); have_sin = 1; }
    if (s == MELD_OK) { s = arg_make(ctx, r->sign_out, r->sign_out ? n : 0, r->sign_out != NULL, &sout); have_sout = 1; }
    if (s == MELD_OK) {
        cl_int e;
        rul = (arg){.temp = 1};
        rul.mem = clCreateBuffer(st->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof rules, rules, &e);
        have_rul = 1;
        if (e != CL_SUCCESS) s = cl_fail(ctx, e, "rules");
    }
    if (s == MELD_OK) {
        cl_int e;
        msk = (arg){.temp = 1};
        msk.mem = clCreateBuffer(st->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (nmask * words + 1) * 4, masks, &e);
        have_msk = 1;
        if (e != CL_SUCCESS) s = cl_fail(ctx, e, "masks");
    }
    if (s == MELD_OK) {
        cl_kernel kk = st->tv[r->k - 1];
        cl_ulong nn = n;
        cl_int bdt = r->base.data ? (cl_int)r->base.dtype : 0, has_base = r->base.data != NULL, deltas = r->x_are_deltas;
        cl_int cons = r->consensus, unw = r->vote_unweighted, has_sin = r->sign_in != NULL, divm = r->divisor;
        cl_int odt = r->out.data ? (cl_int)r->out.dtype : 0, has_out = r->out.data != NULL, has_sout = r->sign_out != NULL;
        cl_float fdiv = r->fixed_div, lambda = r->lambda;
        int i = 0;
        SETARG(kk, i++, nn); SETARG(kk, i++, base.mem); SETARG(kk, i++, bdt); SETARG(kk, i++, has_base);
        for (int q = 0; q < CL_MAXK; q++) SETARG(kk, i++, x[(size_t)q < r->k ? q : 0].mem);
        SETARG(kk, i++, rul.mem); SETARG(kk, i++, msk.mem); SETARG(kk, i++, deltas); SETARG(kk, i++, cons); SETARG(kk, i++, unw);
        SETARG(kk, i++, sin.mem); SETARG(kk, i++, has_sin); SETARG(kk, i++, divm); SETARG(kk, i++, fdiv); SETARG(kk, i++, lambda);
        SETARG(kk, i++, out.mem); SETARG(kk, i++, odt); SETARG(kk, i++, has_out); SETARG(kk, i++, sout.mem); SETARG(kk, i++, has_sout);
        s = run1d_span(ctx, kk, n, CL_TV_SPAN, "meld_tv_merge");
    }
    if (have_out) s = arg_done(ctx, &out, s);
    if (have_sout) s = arg_done(ctx, &sout, s);
    if (have_sin) arg_done(ctx, &sin, MELD_OK);
    if (have_rul) arg_done(ctx, &rul, MELD_OK);
    if (have_msk) arg_done(ctx, &msk, MELD_OK);
    for (size_t q = 0; q < nx; q++) arg_done(ctx, &x[q], MELD_OK);
    arg_done(ctx, &base, MELD_OK);
    free(masks);
    return s;
}

/* ---- selection: range-histogram radix on the device ------------------------------------------ */
static uint32_t pick(const uint32_t *hist, uint32_t bins, uint64_t *rank) {
    uint64_t cum = 0;
    for (uint32_t b = bins; b-- > 0;) {
        if (cum + hist[b] >= *rank) { *rank -= cum; return b; }
        cum += hist[b];
    }
    return 0;
}

/* f32 magnitude bits of element i of (x - base), read on the host from host memory or the buffer */
static meld_status host_bits(meld_context *ctx, meld_view base, meld_view x, size_t a, size_t b, uint32_t *out) {
    size_t cnt = b - a;
    float *xv = malloc(cnt * sizeof(float) + 1), *bv = malloc(cnt * sizeof(float) + 1);
    void *raw = malloc(cnt * 4 + 1);
    meld_status s = (xv && bv && raw) ? MELD_OK : MELD_ERR_OUT_OF_MEMORY;
    for (int pass = 0; pass < 2 && s == MELD_OK; pass++) {
        meld_view v = pass ? base : x;
        float *dst = pass ? bv : xv;
        if (!v.data) { memset(dst, 0, cnt * sizeof(float)); continue; }
        size_t es = meld_dtype_size(v.dtype);
        const void *src = (const char *)v.data + a * es;
        if (meld_cl_is_buffer(ctx, v.data)) {
            s = meld_buffer_download(ctx, v.data, a * es, raw, cnt * es);
            src = raw;
        }
        for (size_t i = 0; i < cnt && s == MELD_OK; i++) dst[i] = meld_load_scalar(src, v.dtype, i);
    }
    for (size_t i = 0; i < cnt && s == MELD_OK; i++) out[i] = meld_f32_bits(base.data ? xv[i] - bv[i] : xv[i]) & 0x7fffffffu;
    free(xv); free(bv); free(raw);
    return s;
}

#define SEL_TILE 4096 /* a multiple of CL_VW */
#define SEL_LOCAL 64
#define SEL_GROUPS 256

static meld_status cl_mem_new(meld_context *ctx, size_t bytes, arg *a, const char *what) {
    cl_int e;
    *a = (arg){.temp = 1};
    a->mem = clCreateBuffer(((cl_state *)ctx->opencl)->context, CL_MEM_READ_WRITE, bytes, NULL, &e);
    return e == CL_SUCCESS ? MELD_OK : cl_fail(ctx, e, what);
}

/* Selection on the device, as on the CPU (merge/select.c): a sample brackets the k-th largest;
 * one pass counts the magnitudes above the bracket and collects those inside it; the host finds
 * the exact threshold among the candidates. Where the bracket misses (or holds too many to
 * store), range histograms refine the range known to hold it. Per-tile counts of the threshold
 * then lead to the tile holding the tie cutoff, which the host scans. */
static meld_status select_one(meld_context *ctx, meld_view base, meld_view x, uint64_t k, meld_selection *out) {
    cl_state *st = ctx->opencl;
    const size_t n = x.numel, tiles = (n + SEL_TILE - 1) / SEL_TILE, blocks = meld_sel_blocks(n), S = blocks * MELD_SEL_RUN;
    const size_t cap = n / 16 + 65536; /* candidates stored; the expected count is about 2% of n */
    size_t hcap = tiles > S ? tiles : S;
    if (hcap < SEL_GROUPS + 1) hcap = SEL_GROUPS + 1;
    arg bb, xx, hist = {0}, counts = {0}, cand = {0};
    MELD_TRY(arg_make(ctx, base.data, base.data ? n * meld_dtype_size(base.dtype) : 0, 0, &bb));
    meld_status s = arg_make(ctx, x.data, n * meld_dtype_size(x.dtype), 0, &xx);
    uint32_t *h = calloc(2048 + hcap, sizeof(uint32_t)), *c = h ? h + 2048 : NULL, *cv = NULL;
    if (!h) s = MELD_ERR_OUT_OF_MEMORY;
    if (s == MELD_OK) s = cl_mem_new(ctx, 2048 * 4, &hist, "selection histogram");
    if (s == MELD_OK) s = cl_mem_new(ctx, (hcap + 1) * 4, &counts, "selection counts");
    cl_int e = CL_SUCCESS;
    cl_ulong nn = n;
    cl_int bdt = base.data ? (cl_int)base.dtype : 0, has_base = base.data != NULL, xdt = x.dtype;
    uint32_t lo = 0, hi = 0x7fffffffu, T = 0;
    uint64_t rank = k;
    int found = 0;
    size_t local = SEL_LOCAL, global = SEL_LOCAL * SEL_GROUPS;
    const char *force = getenv("MELD_SELECT"); /* "radix": the histogram path only, as on the CPU */
    if (s == MELD_OK && n > MELD_SEL_SMALL && !(force && !strcmp(force, "radix"))) {
        cl_kernel kk = st->sample;
        cl_ulong step = n / blocks;
        cl_uint run = MELD_SEL_RUN, cnt = (cl_uint)S, ccap = (cl_uint)cap, zero = 0;
        size_t g = S;
        SETARG(kk, 0, nn); SETARG(kk, 1, bb.mem); SETARG(kk, 2, bdt); SETARG(kk, 3, has_base); SETARG(kk, 4, xx.mem);
        SETARG(kk, 5, xdt); SETARG(kk, 6, step); SETARG(kk, 7, run); SETARG(kk, 8, cnt); SETARG(kk, 9, counts.mem);
        e = clEnqueueNDRangeKernel(st->queue, kk, 1, NULL, &g, &local, 0, NULL, NULL);
        if (e == CL_SUCCESS) e = clEnqueueReadBuffer(st->queue, counts.mem, CL_TRUE, 0, S * 4, c, 0, NULL, NULL);
        uint32_t blo = 0, bhi = 0x7fffffffu;
        if (e == CL_SUCCESS) s = meld_select_bracket(c, S, n, k, &blo, &bhi, NULL);
        if (s == MELD_OK) s = e == CL_SUCCESS ? cl_mem_new(ctx, cap * 4, &cand, "selection candidates") : cl_fail(ctx, e, "meld_sample_bits");
        kk = st->bracket;
        SETARG(kk, 0, nn); SETARG(kk, 1, bb.mem); SETARG(kk, 2, bdt); SETARG(kk, 3, has_base); SETARG(kk, 4, xx.mem);
        SETARG(kk, 5, xdt); SETARG(kk, 6, blo); SETARG(kk, 7, bhi); SETARG(kk, 8, counts.mem); SETARG(kk, 9, hist.mem);
        SETARG(kk, 10, cand.mem); SETARG(kk, 11, ccap);
        clSetKernelArg(kk, 12, sizeof(cl_uint), NULL);
        if (s == MELD_OK) e = clEnqueueWriteBuffer(st->queue, hist.mem, CL_TRUE, 0, 4, &zero, 0, NULL, NULL);
        if (s == MELD_OK && e == CL_SUCCESS) e = clEnqueueNDRangeKernel(st->queue, kk, 1, NULL, &global, &local, 0, NULL, NULL);
        if (s == MELD_OK && e == CL_SUCCESS) e = clEnqueueReadBuffer(st->queue, counts.mem, CL_TRUE, 0, SEL_GROUPS * 4, c, 0, NULL, NULL);
        if (s == MELD_OK && e == CL_SUCCESS) e = clEnqueueReadBuffer(st->queue, hist.mem, CL_TRUE, 0, 4, c + SEL_GROUPS, 0, NULL, NULL);
        if (s == MELD_OK && e != CL_SUCCESS) s = cl_fail(ctx, e, "meld_bracket_collect");
        uint64_t gt = 0, in = s == MELD_OK ? c[SEL_GROUPS] : 0;
        for (size_t q = 0; s == MELD_OK && q < SEL_GROUPS; q++) gt += c[q];
        if (s == MELD_OK && gt < k && k <= gt + in) {
            if (in <= cap && (cv = malloc(in * 4 + 4))) { /* the exact threshold among the candidates */
                e = clEnqueueReadBuffer(st->queue, cand.mem, CL_TRUE, 0, in * 4, cv, 0, NULL, NULL);
                if (e != CL_SUCCESS) s = cl_fail(ctx, e, "selection candidates");
                else if ((s = meld_select_kth(cv, in, k - gt, &T, &rank)) == MELD_OK) found = 1;
            } else { lo = blo; hi = bhi; rank = k - gt; } /* refine within the bracket */
        }
    }
    while (s == MELD_OK && !found && lo < hi) {
        cl_uint shift = 0;
        while (((uint64_t)(hi - lo) >> shift) >= 2048) shift++;
        uint32_t bins = (uint32_t)((uint64_t)(hi - lo) >> shift) + 1;
        memset(h, 0, 2048 * 4);
        e = clEnqueueWriteBuffer(st->queue, hist.mem, CL_TRUE, 0, 2048 * 4, h, 0, NULL, NULL);
        cl_kernel kk = st->hist;
        SETARG(kk, 0, nn); SETARG(kk, 1, bb.mem); SETARG(kk, 2, bdt); SETARG(kk, 3, has_base); SETARG(kk, 4, xx.mem);
        SETARG(kk, 5, xdt); SETARG(kk, 6, lo); SETARG(kk, 7, hi); SETARG(kk, 8, shift); SETARG(kk, 9, hist.mem);
        clSetKernelArg(kk, 10, 2048 * 4, NULL);
        if (e == CL_SUCCESS) e = clEnqueueNDRangeKernel(st->queue, kk, 1, NULL, &global, &local, 0, NULL, NULL);
        if (e == CL_SUCCESS) e = clEnqueueReadBuffer(st->queue, hist.mem, CL_TRUE, 0, 2048 * 4, h, 0, NULL, NULL);
        if (e != CL_SUCCESS) { s = cl_fail(ctx, e, "meld_hist_range"); break; }
        uint32_t dg = pick(h, bins, &rank);
        lo += dg << shift;
        if (shift < 31 && lo + ((1u << shift) - 1) < hi) hi = lo + ((1u << shift) - 1);
    }
    if (!found) T = lo;
    uint64_t cutoff = n;
    if (s == MELD_OK) { /* per-tile counts of T, then the one tile that holds the cutoff */
        cl_kernel kk = st->count;
        cl_uint tile = SEL_TILE;
        SETARG(kk, 0, nn); SETARG(kk, 1, bb.mem); SETARG(kk, 2, bdt); SETARG(kk, 3, has_base); SETARG(kk, 4, xx.mem);
        SETARG(kk, 5, xdt); SETARG(kk, 6, T); SETARG(kk, 7, tile); SETARG(kk, 8, counts.mem);
        clSetKernelArg(kk, 9, sizeof(cl_uint), NULL);
        size_t g = tiles * SEL_LOCAL;
        e = clEnqueueNDRangeKernel(st->queue, kk, 1, NULL, &g, &local, 0, NULL, NULL);
        if (e == CL_SUCCESS) e = clEnqueueReadBuffer(st->queue, counts.mem, CL_TRUE, 0, tiles * 4, c, 0, NULL, NULL);
        if (e != CL_SUCCESS) s = cl_fail(ctx, e, "meld_count_eq");
        for (size_t t = 0; s == MELD_OK && t < tiles; t++) {
            if (c[t] < rank) { rank -= c[t]; continue; }
            size_t a = t * SEL_TILE, b = a + SEL_TILE < n ? a + SEL_TILE : n;
            uint32_t bits[SEL_TILE];
            s = host_bits(ctx, base, x, a, b, bits);
            for (size_t i = a; s == MELD_OK && i < b; i++)
                if (bits[i - a] == T && --rank == 0) { cutoff = i + 1; break; }
            break;
        }
    }
    if (s == MELD_OK) *out = (meld_selection){.threshold = T, .tie_cutoff = cutoff, .kept = k};
    free(h);
    free(cv);
    if (hist.mem) arg_done(ctx, &hist, MELD_OK);
    if (counts.mem) arg_done(ctx, &counts, MELD_OK);
    if (cand.mem) arg_done(ctx, &cand, MELD_OK);
    arg_done(ctx, &xx, MELD_OK);
    arg_done(ctx, &bb, MELD_OK);
    return s;
}

meld_status meld_cl_select(meld_context *ctx, meld_view base, size_t count, const meld_view *x, const uint64_t *k,
                           meld_selection *out) {
    for (size_t e = 0; e < count; e++) {
        const size_t n = x[e].numel;
        if (k[e] == 0) out[e] = (meld_selection){.threshold = 0xffffffffu, .tie_cutoff = 0, .kept = 0};
        else if (k[e] >= n) out[e] = (meld_selection){.threshold = 0, .tie_cutoff = n, .kept = n};
        else MELD_TRY(select_one(ctx, base, x[e], k[e], &out[e]));
    }
    return MELD_OK;
}

/* ---- sparse apply ------------------------------------------------------------------------------ */
typedef struct cl_packed {
    uint32_t mask_word, block_off, dtype, pad;
    uint64_t value_byte;
    float scale, pad2;
} cl_packed;

meld_status meld_cl_sparse_apply(meld_context *ctx, meld_view base, size_t k, const meld_packed_view *d, const float *scales,
                                 meld_span out) {
    cl_state *st = ctx->opencl;
    if (k > 64) return MELD_ERR_UNSUPPORTED;
    const size_t n = out.numel, words = (n + 31) / 32, blocks = (n + 255) / 256;
    for (size_t i = 0; i < k; i++) {
        const void *p[2] = {d[i].mask, d[i].values};
        MELD_TRY(meld_cl_reject_buffers(ctx, p, 2, "sparse apply of device-resident packed deltas"));
    }
    size_t vbytes = 0;
    for (size_t i = 0; i < k; i++) vbytes += (d[i].nnz * meld_dtype_size(d[i].dtype) + 7) / 8 * 8;
    uint32_t *masks = calloc(k * words + 1, 4), *bstart = calloc(k * blocks + 1, 4);
    char *vals = malloc(vbytes + 8);
    cl_packed info[64];
    meld_status s = masks && bstart && vals ? MELD_OK : MELD_ERR_OUT_OF_MEMORY;
    size_t voff = 0;
    for (size_t i = 0; s == MELD_OK && i < k; i++) {
        memcpy(masks + i * words, d[i].mask, (n + 7) / 8);
        if (n & 31) masks[i * words + words - 1] &= (1u << (n & 31)) - 1; /* bits past n never count */
        uint32_t c = 0;
        for (size_t b = 0; b < blocks; b++) {
            bstart[i * blocks + b] = c;
            for (size_t w = b * 8; w < b * 8 + 8 && w < words; w++) c += (uint32_t)__builtin_popcount(masks[i * words + w]);
        }
        size_t vb = d[i].nnz * meld_dtype_size(d[i].dtype);
        memcpy(vals + voff, d[i].values, vb);
        info[i] = (cl_packed){.mask_word = (uint32_t)(i * words), .block_off = (uint32_t)(i * blocks), .dtype = d[i].dtype,
                              .value_byte = voff, .scale = scales[i]};
        voff += (vb + 7) / 8 * 8;
    }
    arg bb, ob, mb, sb, vb, ib;
    int made = 0;
    if (s == MELD_OK) { s = arg_make(ctx, base.data, base.data ? n * meld_dtype_size(base.dtype) : 0, 0, &bb); made = 1; }
    if (s == MELD_OK) { s = arg_make(ctx, out.data, n * meld_dtype_size(out.dtype), 1, &ob); made = 2; }
    if (s == MELD_OK) { s = arg_make(ctx, masks, (k * words + 1) * 4, 0, &mb); made = 3; }
    if (s == MELD_OK) { s = arg_make(ctx, bstart, (k * blocks + 1) * 4, 0, &sb); made = 4; }
    if (s == MELD_OK) { s = arg_make(ctx, vals, voff + 8, 0, &vb); made = 5; }
    if (s == MELD_OK) { s = arg_make(ctx, info, k * sizeof(cl_packed), 0, &ib); made = 6; }
    if (s == MELD_OK) {
        cl_kernel kk = st->apply;
        cl_ulong nn = n;
        cl_uint K = (cl_uint)k;
        cl_int bdt = base.data ? (cl_int)base.dtype : 0, has_base = base.data != NULL, odt = out.dtype;
        SETARG(kk, 0, nn); SETARG(kk, 1, K); SETARG(kk, 2, bb.mem); SETARG(kk, 3, bdt); SETARG(kk, 4, has_base);
        SETARG(kk, 5, ib.mem); SETARG(kk, 6, mb.mem); SETARG(kk, 7, sb.mem); SETARG(kk, 8, vb.mem); SETARG(kk, 9, ob.mem);
        SETARG(kk, 10, odt);
        s = run1d(ctx, kk, n, "meld_sparse_apply");
    }
    if (made >= 6) arg_done(ctx, &ib, MELD_OK);
    if (made >= 5) arg_done(ctx, &vb, MELD_OK);
    if (made >= 4) arg_done(ctx, &sb, MELD_OK);
    if (made >= 3) arg_done(ctx, &mb, MELD_OK);
    if (made >= 2) s = arg_done(ctx, &ob, s);
    if (made >= 1) arg_done(ctx, &bb, MELD_OK);
    free(masks); free(bstart); free(vals);
    return s;
}

/* ---- expert weights, grouped GEMM, MoE FFN ------------------------------------------------------ */
meld_status meld_cl_weights_upload(meld_context *ctx, const void *w, meld_dtype dtype, size_t E, size_t N, size_t K, size_t ld,
                                   meld_moe_weights *p) {
    cl_state *st = ctx->opencl;
    const size_t es = meld_dtype_size(dtype), bytes = E * N * K * es;
    char *dense = NULL;
    const void *src = w;
    if (ld != K) {
        dense = malloc(bytes);
        if (!dense) return MELD_ERR_OUT_OF_MEMORY;
        for (size_t r = 0; r < E * N; r++) memcpy(dense + r * K * es, (const char *)w + r * ld * es, K * es);
        src = dense;
    }
    cl_int e;
    cl_mem m = clCreateBuffer(st->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, (void *)src, &e);
    free(dense);
    if (e != CL_SUCCESS) return cl_fail(ctx, e, "expert weights");
    p->device = m;
    p->bytes = bytes;
    p->owner = ctx;
    return MELD_OK;
}

void meld_cl_weights_release(meld_moe_weights *p) {
    if (p->device) clReleaseMemObject((cl_mem)p->device);
    p->device = NULL;
}

static meld_status gemm_dev(meld_context *ctx, const meld_moe_weights *w, const size_t *start, cl_mem arow, cl_mem x, size_t ldx,
                            cl_mem crow, cl_mem y, size_t ldy) {
    cl_state *st = ctx->opencl;
    size_t ntiles = 0;
    for (size_t e = 0; e < w->E; e++) ntiles += (start[e + 1] - start[e] + 63) / 64;
    if (!ntiles) return MELD_OK;
    cl_int *tiles = malloc(ntiles * 4 * sizeof(cl_int));
    if (!tiles) return MELD_ERR_OUT_OF_MEMORY;
    size_t q = 0;
    for (size_t e = 0; e < w->E; e++)
        for (size_t m0 = start[e]; m0 < start[e + 1]; m0 += 64) {
            tiles[4 * q] = (cl_int)e;
            tiles[4 * q + 1] = (cl_int)m0;
            tiles[4 * q + 2] = (cl_int)(start[e + 1] - m0 < 64 ? start[e + 1] - m0 : 64);
            tiles[4 * q + 3] = 0;
            q++;
        }
    cl_int e;
    cl_mem tb = clCreateBuffer(st->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, ntiles * 4 * sizeof(cl_int), tiles, &e);
    free(tiles);
    if (e != CL_SUCCESS) return cl_fail(ctx, e, "gemm tiles");
    cl_kernel kk = st->gemm;
    cl_uint lx = (cl_uint)ldx, ly = (cl_uint)ldy, N = (cl_uint)w->N, K = (cl_uint)w->K;
    cl_int wdt = w->dtype;
    cl_mem wm = w->device;
    SETARG(kk, 0, x); SETARG(kk, 1, lx); SETARG(kk, 2, arow); SETARG(kk, 3, wm); SETARG(kk, 4, wdt); SETARG(kk, 5, N);
    SETARG(kk, 6, K); SETARG(kk, 7, y); SETARG(kk, 8, ly); SETARG(kk, 9, crow); SETARG(kk, 10, tb);
    size_t g[2] = {ntiles * 16, (w->N + 63) / 64 * 16}, l[2] = {16, 16};
    e = clEnqueueNDRangeKernel(st->queue, kk, 2, NULL, g, l, 0, NULL, NULL);
    if (e == CL_SUCCESS) e = clFinish(st->queue);
    clReleaseMemObject(tb);
    return e == CL_SUCCESS ? MELD_OK : cl_fail(ctx, e, "meld_gemm_grouped");
}

meld_status meld_cl_grouped(meld_context *ctx, const meld_moe_weights *w, const size_t *start, const int32_t *arow,
                            const float *x, size_t ldx, size_t xrows, const int32_t *crow, float *y, size_t ldy, size_t yrows) {
    const size_t M = start[w->E];
    arg ar, cr, xa, ya;
    MELD_TRY(arg_make(ctx, arow, M * 4 + 4, 0, &ar));
    meld_status s = arg_make(ctx, crow, M * 4 + 4, 0, &cr);
    int made = s == MELD_OK;
    if (s == MELD_OK) { s = arg_make(ctx, x, xrows ? ((xrows - 1) * ldx + w->K) * 4 : 0, 0, &xa); made = 2; }
    if (s == MELD_OK) { s = arg_make(ctx, y, yrows ? ((yrows - 1) * ldy + w->N) * 4 : 0, 1, &ya); made = 3; }
    if (s == MELD_OK) s = gemm_dev(ctx, w, start, ar.mem, xa.mem, ldx, cr.mem, ya.mem, ldy);
    if (made >= 3) s = arg_done(ctx, &ya, s);
    if (made >= 2) arg_done(ctx, &xa, MELD_OK);
    if (made >= 1) arg_done(ctx, &cr, MELD_OK);
    arg_done(ctx, &ar, MELD_OK);
    return s;
}

/* A scratch buffer of `bytes` (at least 4: an empty one is still an object), initialized from
 * `init` when given: exactly `bytes` of it are read, so a caller's array needs no padding. */
static cl_mem dev_alloc(meld_context *ctx, size_t bytes, const void *init, meld_status *s) {
    cl_state *st = ctx->opencl;
    cl_int e;
    const int copy = init && bytes;
    cl_mem m = clCreateBuffer(st->context, CL_MEM_READ_WRITE | (copy ? CL_MEM_COPY_HOST_PTR : 0), bytes ? bytes : 4,
                              copy ? (void *)init : NULL, &e);
    if (e != CL_SUCCESS && *s == MELD_OK) *s = cl_fail(ctx, e, "MoE scratch");
    return e == CL_SUCCESS ? m : NULL;
}

static meld_status ffn_dev(meld_context *ctx, const meld_moe_weights *gu, const meld_moe_weights *dn, const size_t *start, cl_mem xrow,
                           cl_mem x, size_t ldx, size_t M, const meld_moe_ffn_options *o, cl_mem ident, cl_mem h1, cl_mem a, cl_mem y) {
    cl_state *st = ctx->opencl;
    const size_t I = dn->K, H = dn->N;
    MELD_TRY(gemm_dev(ctx, gu, start, xrow, x, ldx, ident, h1, 2 * I));
    cl_kernel kk = st->act;
    cl_ulong mm = M;
    cl_uint ii = (cl_uint)I;
    cl_int act = o->activation, inter = o->interleaved_gate_up;
    cl_float alpha = o->alpha, limit = o->limit;
    SETARG(kk, 0, mm); SETARG(kk, 1, ii); SETARG(kk, 2, h1); SETARG(kk, 3, a); SETARG(kk, 4, act); SETARG(kk, 5, alpha);
    SETARG(kk, 6, limit); SETARG(kk, 7, inter);
    MELD_TRY(run1d(ctx, kk, M * I, "meld_moe_act"));
    return gemm_dev(ctx, dn, start, ident, a, I, ident, y, H);
}

meld_status meld_cl_moe_ffn(meld_context *ctx, const float *x, size_t T, size_t ldx, const int32_t *ids, const float *weights,
                            size_t k, const meld_moe_weights *gu, const meld_moe_weights *dn, const meld_moe_weights *sgu,
                            const meld_moe_weights *sdn, const meld_moe_ffn_options *o, float *out, size_t ldo) {
    cl_state *st = ctx->opencl;
    const size_t E = gu->E, H = gu->K, I = dn->K, M = T * k, Is = sdn ? sdn->K : 0, Imax = I > Is ? I : Is, Mmax = M > T ? M : T;
    MELD_TRY(meld_cl_reject_buffers(ctx, (const void *[]){ids, weights}, 2, "MoE routing arrays on the device"));
    meld_moe_plan *plan;
    MELD_TRY(meld_moe_plan_create(ctx, ids, T, k, E, &plan));
    const int32_t *off = meld_moe_plan_offsets(plan), *order = meld_moe_plan_order(plan), *inv = meld_moe_plan_inverse(plan);
    int32_t *xr = malloc((Mmax + 1) * 4), *ident = malloc((Mmax + 1) * 4);
    size_t *start = malloc((E + 1) * sizeof *start);
    meld_status s = xr && ident && start ? MELD_OK : MELD_ERR_OUT_OF_MEMORY;
    cl_mem xrow = NULL, idm = NULL, h1 = NULL, am = NULL, ym = NULL, ysm = NULL, invm = NULL, wm = NULL;
    arg xa, oa;
    int made = 0;
    if (s == MELD_OK) {
        for (size_t e = 0; e <= E; e++) start[e] = (size_t)off[e];
        for (size_t q = 0; q < M; q++) xr[q] = order[q] / (int32_t)k;
        for (size_t q = 0; q < Mmax; q++) ident[q] = (int32_t)q;
        xrow = dev_alloc(ctx, (M + 1) * 4, xr, &s);
        idm = dev_alloc(ctx, (Mmax + 1) * 4, ident, &s);
        h1 = dev_alloc(ctx, Mmax * 2 * Imax * 4, NULL, &s);
        am = dev_alloc(ctx, Mmax * Imax * 4, NULL, &s);
        ym = dev_alloc(ctx, M * H * 4, NULL, &s);
        ysm = dev_alloc(ctx, (sdn ? T : 1) * H * 4, NULL, &s);
        invm = dev_alloc(ctx, (M + 1) * 4, inv, &s);
        wm = dev_alloc(ctx, M * 4, weights, &s); /* the caller's T x k weights: no more */
    }
    if (s == MELD_OK) { s = arg_make(ctx, x, T ? ((T - 1) * ldx + H) * 4 : 0, 0, &xa); made = 1; }
    if (s == MELD_OK) { s = arg_make(ctx, out, T ? ((T - 1) * ldo + H) * 4 : 0, 1, &oa); made = 2; }
    if (s == MELD_OK) s = ffn_dev(ctx, gu, dn, start, xrow, xa.mem, ldx, M, o, idm, h1, am, ym);
    if (s == MELD_OK && sdn) {
        size_t sstart[2] = {0, T};
        s = ffn_dev(ctx, sgu, sdn, sstart, idm, xa.mem, ldx, T, o, idm, h1, am, ysm);
    }
    if (s == MELD_OK) {
        cl_kernel kk = st->combine;
        cl_ulong tt = T;
        cl_uint hh = (cl_uint)H, kq = (cl_uint)k, lo = (cl_uint)ldo;
        cl_int has_shared = sdn != NULL, acc = o->accumulate;
        SETARG(kk, 0, tt); SETARG(kk, 1, hh); SETARG(kk, 2, kq); SETARG(kk, 3, ym); SETARG(kk, 4, invm); SETARG(kk, 5, wm);
        SETARG(kk, 6, ysm); SETARG(kk, 7, has_shared); SETARG(kk, 8, oa.mem); SETARG(kk, 9, lo); SETARG(kk, 10, acc);
        s = run1d(ctx, kk, T * H, "meld_moe_combine");
    }
    if (made >= 2) s = arg_done(ctx, &oa, s);
    if (made >= 1) arg_done(ctx, &xa, MELD_OK);
    cl_mem ms[] = {xrow, idm, h1, am, ym, ysm, invm, wm};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) if (ms[i]) clReleaseMemObject(ms[i]);
    free(xr); free(ident); free(start);
    meld_moe_plan_destroy(plan);
    return s;
}
