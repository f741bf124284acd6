/* Shared benchmark helpers: timing, a STREAM-triad and a streaming-read reference pass,
 * deterministic data, and the table/JSON output. Everything is reported as a ratio to a
 * reference measured in the same run (this machine's timings vary 40-60% between runs). */
#ifndef MELD_BENCH_UTIL_H
#define MELD_BENCH_UTIL_H
#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <meld.h>

int omp_get_max_threads(void);
void omp_set_num_threads(int);
#include <immintrin.h>

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* the command line: element count, repetitions, threads, JSON lines, and (moe) the shapes and
 * token counts to run (NULL / 0: all) */
typedef struct bench_cfg { size_t n; int reps; int threads; int json; const char *shape; size_t tokens; } bench_cfg;

/* a failed call ends the benchmark, naming the call and its status */
#define CHECK(x) do { meld_status s_ = (x); if (s_ != MELD_OK) { fprintf(stderr, "%s: %s\n", #x, meld_status_string(s_)); exit(1); } } while (0)

/* best (minimum) seconds of reps runs of body */
#define BEST_OF(reps, secs, body) do { \
    secs = 1e30; \
    for (int r_ = 0; r_ < (reps); r_++) { double t0_ = now_s(); body; double t_ = now_s() - t0_; if (t_ < secs) secs = t_; } \
} while (0)

static inline void *xmalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) { fprintf(stderr, "out of memory (%zu bytes)\n", n); exit(2); }
    return p;
}

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void fill_normalish(float *p, size_t n, uint64_t seed, float scale) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mix64(seed * 0x9E3779B97F4A7C15ull + i);
        /* sum of 4 uniforms: cheap, bell-shaped, many distinct magnitudes */
        float s = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) + (float)(r >> 48);
        p[i] = (s / 65536.0f - 2.0f) * scale;
    }
}

/* STREAM triad a = b + s*c over n floats; returns GB/s counting 12 bytes per element. */
/* STREAM triad arrays, and one pass over them (seconds): a[i] = b[i] + 3 c[i], 12 bytes/element */
typedef struct triad_arrays { float *a, *b, *c; size_t n; int threads; } triad_arrays;
static inline triad_arrays triad_alloc(size_t n, int threads) {
    triad_arrays t = {xmalloc(n * 4), xmalloc(n * 4), xmalloc(n * 4), n, threads};
#pragma omp parallel for schedule(static) num_threads(threads)
    for (size_t i = 0; i < n; i++) { t.a[i] = 0; t.b[i] = 1; t.c[i] = 2; }
    return t;
}
static inline void triad_free(triad_arrays *t) { free(t->a); free(t->b); free(t->c); }
static inline double triad_pass_s(const triad_arrays *t) {
    float *a = t->a;
    const float *b = t->b, *c = t->c;
    double t0 = now_s();
#pragma omp parallel for schedule(static) num_threads(t->threads)
    for (size_t i = 0; i < t->n; i++) a[i] = b[i] + 3.0f * c[i];
    return now_s() - t0;
}
static inline double triad_gbs(size_t n, int reps, int threads) {
    triad_arrays ta = triad_alloc(n, threads);
    double t = 1e30;
    for (int r = 0; r < reps; r++) t = fmin(t, triad_pass_s(&ta));
    triad_free(&ta);
    return 12.0 * (double)n / t / 1e9;
}

/* One streaming read of bytes at p (xor-reduce of 64-bit words); returns seconds. */
static inline double read_pass_s(const void *p, size_t bytes, int reps, int threads) {
    const uint64_t *w = p;
    size_t n = bytes / 8;
    volatile uint64_t sink = 0;
    double t = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        uint64_t x = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(^ : x)
        for (size_t i = 0; i < n; i++) x ^= w[i];
        sink ^= x;
        double dt = now_s() - t0;
        if (dt < t) t = dt;
    }
    (void)sink;
    return t;
}
#endif
