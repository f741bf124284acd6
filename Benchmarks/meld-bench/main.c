/* meld-bench: the plain benchmark executable.
 *   meld-bench [merge|moe|opencl|triad|all] [--n N] [--reps R] [--threads T] [--quick] [--json]
 *              [--shape NAME] [--tokens T]   (moe: one shape, one token count) */
#include <meld.h>
#include "bench_util.h"

void merge_bench(const bench_cfg *c);
void moe_bench(const bench_cfg *c, int quick);
void opencl_bench(const bench_cfg *c);

int main(int argc, char **argv) {
    bench_cfg c = {.n = (size_t)16 << 20, .reps = 5, .threads = 2, .json = 0};
    const char *which = "all";
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--n") && i + 1 < argc) c.n = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) c.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) c.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) { c.n = (size_t)1 << 20; c.reps = 2; quick = 1; }
        else if (!strcmp(argv[i], "--json")) c.json = 1;
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) c.shape = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) c.tokens = strtoull(argv[++i], NULL, 10);
        else if (argv[i][0] != '-') which = argv[i];
        else { fprintf(stderr, "usage: meld-bench [merge|moe|opencl|triad|all] [--n N] [--reps R] [--threads T] [--quick] [--json] [--shape NAME] [--tokens T]\n"); return 2; }
    }
    printf("meld-bench, libmeld %s\n", meld_version_string());
    if (!strcmp(which, "triad")) { printf("triad_gbs %.2f\n", triad_gbs(c.n, c.reps, c.threads)); return 0; }
    if (!strcmp(which, "merge") || !strcmp(which, "all")) merge_bench(&c);
    if (!strcmp(which, "moe") || !strcmp(which, "all")) moe_bench(&c, quick);
    if (!strcmp(which, "opencl") || !strcmp(which, "all")) opencl_bench(&c);
    return 0;
}
