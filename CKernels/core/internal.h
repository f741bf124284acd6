/* Internal framework: the context, argument checks, the OpenMP entry points we use.
 * Kernels (ukernels/) never see this; they get plain pointers from the drivers. */
#ifndef MELD_INTERNAL_H
#define MELD_INTERNAL_H
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include "meld.h"
#include "../ukernels/ukernel.h"
#include "fp.h"

/* omp.h is not on the Swift toolchain's include path: declare what we use. */
int omp_get_max_threads(void);
int omp_get_thread_num(void);
int omp_get_num_threads(void);

struct meld_context {
    int threads;                  /* resolved, >= 1 */
    meld_isa isa;                 /* resolved, never AUTO */
    const meld_ukernels *uk;      /* the registry entry of isa */
    char last_error[1024];
    void *opencl;                 /* device state when an OpenCL device is attached */
    void *scratch;                /* grow-only scratch reused across calls (no page faults per call) */
    size_t scratch_bytes;
    size_t window;                /* meld_context_set_window: elements per window, 0 = off */
    meld_window_fn window_done;
    void *window_user;
    meld_side_fn side;            /* meld_context_set_side_work */
    void *side_user;
    int side_busy;                /* a thread is inside side (atomic) */
};

/* Scratch of at least bytes, owned by ctx and valid until the next call; NULL if out of memory. */
void *meld_scratch(meld_context *ctx, size_t bytes);
void *meld_alloc_large(size_t bytes); /* 64-byte aligned, huge pages where the OS gives them; free() */
void meld_set_error(meld_context *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Validation helpers; each returns a status (MELD_OK when fine). */
static inline bool meld_dtype_valid(meld_dtype dt) { return dt == MELD_F32 || dt == MELD_F16 || dt == MELD_BF16; }
meld_status meld_check_view(meld_view v, size_t n);
meld_status meld_check_span(meld_span s, size_t n);
meld_status meld_check_models(size_t k, const meld_view *models, size_t n);
meld_status meld_check_floats(const float *w, size_t k); /* finite values */
/* merge weights: finite, and sum_k |w_k| within f32 range, so that every sum of them (the
 * weight-sum divisors, per element or whole) is finite; names the fault in the context */
meld_status meld_check_weights(meld_context *ctx, const float *w, size_t k);

#define MELD_TRY(expr) do { meld_status s_ = (expr); if (s_ != MELD_OK) return s_; } while (0)

/* ---- streaming driver -------------------------------------------------------------------
 * Splits [0, n) into tiles of MELD_TILE elements (a multiple of MELD_UK_ALIGN), runs them in one
 * OpenMP parallel region (in one per window under meld_context_set_window), threads claiming runs
 * of tiles, and gives the last partial vector group to the callback through zero-padded f32
 * copies, so ukernels only ever see n % MELD_UK_ALIGN == 0. */
#define MELD_TILE 16384
#define MELD_STREAM_MAX 72

typedef enum meld_elem { MELD_ELEM_F32 = MELD_F32, MELD_ELEM_F16 = MELD_F16, MELD_ELEM_BF16 = MELD_BF16, MELD_ELEM_I8 = 100 } meld_elem;

typedef struct meld_tile {
    size_t i0;     /* global index of the tile's first element */
    size_t n;      /* elements to process, a multiple of MELD_UK_ALIGN */
    size_t valid;  /* elements that are real (< n only in the padded tail) */
    int thread;    /* OpenMP thread number */
    size_t index;  /* tile number */
    const void *in[MELD_STREAM_MAX];
    int in_dt[MELD_STREAM_MAX];
    void *out[4];
    int out_dt[4];
} meld_tile;

typedef struct meld_stream {
    size_t n;
    size_t first; /* global index of the stream's element 0: inputs are addressed by global index,
                     outputs by index within the stream; a multiple of MELD_TILE, so a range has
                     the whole tensor's tiles and bits */
    int nin, nout;
    const void *in[MELD_STREAM_MAX];
    int in_dt[MELD_STREAM_MAX];
    void *out[4];
    int out_dt[4];
} meld_stream;

typedef void (*meld_tile_fn)(const meld_tile *tile, void *op);
size_t meld_stream_tiles(size_t n);
meld_status meld_stream_run(meld_context *ctx, const meld_stream *s, meld_tile_fn fn, void *op);

/* The first nbits bits of src (which starts on a byte boundary) into dst, with the bits past
 * them in the last byte cleared: bitmaps hold no stray bits past their length. */
static inline void meld_bits_copy(uint8_t *dst, const uint8_t *src, size_t nbits) {
    memcpy(dst, src, (nbits + 7) / 8);
    if (nbits & 7) dst[nbits / 8] &= (uint8_t)((1u << (nbits & 7)) - 1);
}

static inline size_t meld_elem_size(int e) { return e == MELD_ELEM_I8 ? 1 : (e == MELD_F32 ? 4 : 2); }
static inline float meld_load_scalar(const void *p, int dt, size_t i) {
    switch (dt) {
    case MELD_F32: return ((const float *)p)[i];
    case MELD_F16: return meld_f16_to_f32(((const uint16_t *)p)[i]);
    case MELD_BF16: return meld_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return (float)((const int8_t *)p)[i];
    }
}
#endif
