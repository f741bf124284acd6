/* TIES-merge three toy "fine-tuned" tensors into a base, in f32 and bf16.
 * Build against an installed Meld:  cc ties_example.c $(pkg-config --cflags --libs meld) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <meld.h>

#define N 1000003 /* not a multiple of any vector width */

static int check(meld_status s, const char *what) {
    if (s != MELD_OK) { fprintf(stderr, "%s: %s\n", what, meld_status_string(s)); exit(1); }
    return 0;
}

int main(void) {
    printf("meld %s (header %d.%d.%d)\n", meld_version_string(), MELD_VERSION_MAJOR, MELD_VERSION_MINOR, MELD_VERSION_PATCH);
    meld_context *ctx;
    check(meld_context_create(0, &ctx), "context");
    meld_isa isa; int threads;
    meld_context_isa(ctx, &isa);
    meld_context_threads(ctx, &threads);
    printf("isa %s, %d threads\n", meld_isa_name(isa), threads);

    float *base = malloc(N * sizeof(float)), *x[3], *out = malloc(N * sizeof(float));
    srand(1);
    for (size_t i = 0; i < N; i++) base[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    for (int k = 0; k < 3; k++) {
        x[k] = malloc(N * sizeof(float));
        for (size_t i = 0; i < N; i++) x[k][i] = base[i] + 0.01f * ((float)rand() / (float)RAND_MAX - 0.5f);
    }
    meld_view b = {base, N, MELD_F32};
    meld_view m[3] = {{x[0], N, MELD_F32}, {x[1], N, MELD_F32}, {x[2], N, MELD_F32}};
    float w[3] = {1.0f, 0.6f, 0.8f};
    double density[3] = {0.2, 0.5, 0.35};
    meld_ties_options opt = meld_ties_options_default();
    check(meld_ties(ctx, b, 3, m, w, density, &opt, (meld_span){out, N, MELD_F32}), "ties");

    /* the same merge written as bf16 */
    uint16_t *out16 = malloc(N * sizeof(uint16_t));
    check(meld_ties(ctx, b, 3, m, w, density, &opt, (meld_span){out16, N, MELD_BF16}), "ties bf16");

    double moved = 0;
    for (size_t i = 0; i < N; i++) moved += fabs((double)out[i] - base[i]);
    printf("TIES merged %d tensors of %d elements: mean |out - base| = %.3g\n", 3, N, moved / N);

    /* bad input gets a status, not a crash */
    meld_status s = meld_ties(ctx, b, 3, m, w, (double[]){0.2, 1.5, 0.3}, &opt, (meld_span){out, N, MELD_F32});
    printf("density 1.5 -> %s\n", meld_status_string(s));
    meld_context_destroy(ctx);
    return s == MELD_ERR_INVALID_ARGUMENT ? 0 : 1;
}
