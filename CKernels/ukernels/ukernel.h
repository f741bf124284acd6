/* The microkernel contract (every ISA file implements these with the same semantics).
 *
 *  - n is a multiple of MELD_UK_ALIGN (16, the widest vector); n may be 0.
 *  - Pointers are already offset to the first element of the call; no alignment is assumed.
 *  - i0 is the global index of element 0 (tie cutoffs compare against global indices).
 *  - Typed pointers carry their meld_dtype; ukernels load any dtype to f32 and store f32 to any.
 *  - Each output element is produced by one fixed sequence of IEEE f32 operations, identical in
 *    every ISA file, so results are bit-identical across ISAs. No ukernel allocates or threads.
 */
#ifndef MELD_UKERNEL_H
#define MELD_UKERNEL_H
#include <stddef.h>
#include <stdint.h>
#include "meld.h"

#define MELD_UK_ALIGN 16

typedef struct meld_uk_in {
    const void *p;
    int dt; /* meld_dtype */
} meld_uk_in;

/* Per-expert keep rule, evaluated per element inside the fused passes. */
enum {
    MELD_RULE_ALL = 0,
    MELD_RULE_NONE = 1,
    MELD_RULE_TOP = 2,    /* absbits > thr || (absbits == thr && i < cut) */
    MELD_RULE_WINDOW = 3, /* TOP(thr, cut) && !TOP(thr2, cut2) */
    MELD_RULE_BITS = 4,   /* bit j (LSB first) of bits = element i0 + j of this call */
};

typedef struct meld_uk_rule {
    uint32_t kind;
    uint32_t thr, thr2;
    uint64_t cut, cut2;
    const uint8_t *bits;
    float scale; /* kept values are multiplied by scale (rescale); exactly 1 means none */
} meld_uk_rule;

/* The generalized task-vector pass: task arithmetic, TIES, DARE/DELLA/breadcrumbs merges,
 * disjoint merge, sign election. Per element i:
 *   d_k = x_k - base (or x_k when x_are_deltas)
 *   t_k = (d_k * m_k) [* scale_k]      m_k = 1.0 if rule_k keeps i, else 0.0
 *   v_k = t_k * w_k
 *   vote: SUM s = sum_k u_k; COUNT s = sum_k sign(u_k)   (u_k = t_k if vote_unweighted else v_k)
 *         elected e = +1 if s >= 0 else -1   (or e = sign_in[i] when given)
 *   a_k = 1.0 if (u_k > 0 && e > 0) || (u_k < 0 && e < 0), else 0.0   (NONE: a_k = 1)
 *   mixed = sum_k v_k * a_k
 *   div = WEIGHT_SUM: sum_k w_k * a_k (NONE consensus: fixed_div); COUNT: sum_k a_k; NONE: 1
 *         a zero div counts as 1
 *   out = (mixed / div) * lambda [+ base]
 * Sums run over k in ascending order from +0. sign_out, when set, receives e. */
typedef struct meld_uk_tv_args {
    size_t k;
    meld_uk_in base;           /* p == NULL: no base (out = mixed * lambda) */
    const meld_uk_in *x;       /* k inputs */
    int x_are_deltas;
    const meld_uk_rule *rule;  /* k rules */
    const float *w;            /* k weights */
    int consensus;             /* meld_consensus */
    int vote_unweighted;
    const int8_t *sign_in;     /* elected signs, or NULL to vote */
    int divisor;               /* meld_divisor */
    float fixed_div;           /* divisor for consensus NONE with WEIGHT_SUM */
    float lambda;
    void *out;                 /* may be NULL (sign election only) */
    int out_dt;
    int8_t *sign_out;          /* may be NULL */
} meld_uk_tv_args;

/* Candidate collection for exact selection: per element of each of k task vectors,
 * b = absbits(d_k) (d_k = x_k - base, or x_k when base.p is NULL); count b > hi_k into gt[k].
 * Exclusive (inclusive == 0): count b == hi_k into eq_hi[k], b == lo_k into eq_lo[k] (only when
 * lo_k < hi_k), and append b to cand[k] when lo_k < b < hi_k. Counting the bracket's ends
 * instead of storing them keeps heavy ties (bf16) cheap.
 * Inclusive (lo_k <= hi_k): append b to cand[k] when lo_k <= b <= hi_k; eq_hi and eq_lo are
 * left alone. Two counts fewer an element, for brackets whose ends are not heavy ties.
 * Appends go in any order within the call, while count[k] + MELD_UK_ALIGN <= cap (past that
 * only count[k] grows). cand[k] needs MELD_UK_ALIGN entries of slack. */
typedef struct meld_uk_collect_args {
    size_t k;
    meld_uk_in base;
    const meld_uk_in *x;
    const uint32_t *lo, *hi;
    int inclusive;
    uint64_t *gt, *eq_hi, *eq_lo; /* k counters each, accumulated */
    uint32_t **cand;              /* k lists */
    size_t *count;                /* k counters, accumulated */
    size_t cap;
} meld_uk_collect_args;

/* Range histogram for radix selection: for each element, b = absbits(d) (as collect); when
 * lo <= b <= hi, hist[(b - lo) >> shift]++ (hist is accumulated). lo, hi < 2^31. */
typedef struct meld_uk_hist_args {
    meld_uk_in base;
    meld_uk_in x;
    uint32_t lo, hi;
    int shift;
    uint32_t *hist;
} meld_uk_hist_args;

/* Philox4x32-10 keep bits (DARE), layout of include/meld/meld_sparse.h: for j in [0, n),
 * element e = i0 + j, block c = e / 8; u = the 16-bit half e % 2 (0 = low) of word (e / 2) % 4
 * of Philox(key, (lo32(c), hi32(c), 0, 0)), v the same of Philox(key, (lo32(c), hi32(c), 1, 0));
 * bit j of out (LSB first) = u 2^16 + v < p32, p32 in [0, 2^32]. v is only needed when u is
 * p32's high half (2^-16 of elements), so a keep bit costs half a Philox word. n and i0 are
 * multiples of 8; out holds n/8 bytes. */
typedef struct meld_uk_philox_args {
    uint32_t key0, key1;
    uint64_t p32;
    uint8_t *out;
} meld_uk_philox_args;

/* One Philox4x32-10 block (Random123): the reference every vector path matches. */
static inline void meld_philox_block(const uint32_t in[4], uint32_t k0, uint32_t k1, uint32_t out[4]) {
    uint32_t c0 = in[0], c1 = in[1], c2 = in[2], c3 = in[3];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1; c3 = (uint32_t)p0; c0 = n0; c2 = n2;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* Philox4x32-10 24-bit uniforms (DELLA): out[j] = word e % 4 of Philox(key, counter = e / 4)
 * shifted right by 8, e = i0 + j, for j in [0, n). Any n and i0 (DELLA's rows start anywhere). */
typedef void (*meld_philox_u24_ukernel)(size_t n, size_t i0, uint32_t key0, uint32_t key1, uint32_t *out);

/* Reductions: 16 logical lanes (element i of the call goes to lane i % 16), f64 products of the
 * f32 values (exact) added in element order per lane; the lanes are then summed 0..15 into
 * out. Every ISA performs the identical sequence. */
#define MELD_GRAM_MAX 16
/* out[p] += sum over the call of (x_i - base)(x_j - base) for pairs p = (i <= j) in row order. */
typedef struct meld_uk_gram_args {
    size_t k;
    meld_uk_in base; /* p NULL: no base */
    const meld_uk_in *x;
    double *out;     /* k (k + 1) / 2 */
} meld_uk_gram_args;

/* out[2k] += sum |d_k|, out[2k+1] += sum |d_k| over kept entries (rule_k), d_k = x_k - base. */
typedef struct meld_uk_l1_args {
    size_t k;
    meld_uk_in base;
    const meld_uk_in *x;
    const meld_uk_rule *rule;
    double *out;
} meld_uk_l1_args;

/* Sparse apply: out = base + sum_k s_k * unpack_k, where unpack_k places values_k[pos_k ...] at
 * the set bits of bits_k (bit j = element j of the call). pos_k advances; values_k must hold
 * MELD_UK_ALIGN readable entries past the last one used (callers pad the end). */
typedef struct meld_uk_apply_args {
    size_t k;
    meld_uk_in base;
    const uint8_t *const *bits;
    const meld_uk_in *values; /* at the call's first packed entry */
    const float *scale;
    void *out;
    int out_dt;
} meld_uk_apply_args;

/* GEMM microkernel: C[mr x nr] (+)= A[mr x kc] * B[kc x NR], f32 accumulation.
 *  - a: MELD_MR row pointers at the first k of the block (rows >= mr repeat a valid row);
 *  - b: packed panel, kc x NR, k-major, in b_dt (zero-padded past the matrix's last column);
 *  - b_next, pf_lines: pf_lines 64-byte lines from b_next (the panel the caller uses next, its
 *    share of it, or a share of its next k block), prefetched while b is consumed, spread evenly over the kc steps (with
 *    few rows per expert every panel comes from DRAM once); a hint: a step prefetches at most
 *    the bytes of a step's NR weights; b_next NULL or pf_lines 0: none. Into the cache level of
 *    MELD_GEMM_PREFETCH_LOCALITY (L1, or L2 on AVX-512);
 *  - c: mr row pointers at the panel's first column; nr <= NR columns are stored;
 *  - accumulate: C = C + A*B (else C = A*B). NR = gemm_nr, MR = gemm_mr of the registry. */
typedef void (*meld_gemm_ukernel)(size_t kc, const float *const *a, const void *b, const void *b_next, size_t pf_lines,
                                  int b_dt, float *const *c, size_t mr, size_t nr, int accumulate);
/* The same with A packed: kc x MR floats, k-major (row r of step k at a[k * MR + r]; rows >= mr
 * hold copies of a valid row). Same bits as the row-pointer form. */
typedef void (*meld_gemm_packed_ukernel)(size_t kc, const float *a, const void *b, const void *b_next, size_t pf_lines,
                                         int b_dt, float *const *c, size_t mr, size_t nr, int accumulate);

/* How the grouped matmul spreads a task's next k block prefetch (gemm_spread_prefetch) */
enum meld_gemm_spread {
    MELD_SPREAD_NONE = 0,
    MELD_SPREAD_BURSTS = 1, /* prefetches to L2 in a burst before each call */
    MELD_SPREAD_IN_KERNEL = 2, /* through each call's b_next and pf_lines (the kernel's own prefetches) */
};

typedef struct meld_ukernels {
    meld_isa isa;
    const char *name;
    void (*convert)(size_t n, meld_uk_in src, void *dst, int dst_dt);
    void (*tv_merge)(size_t n, size_t i0, const meld_uk_tv_args *a);
    void (*collect)(size_t n, size_t i0, const meld_uk_collect_args *a);
    void (*hist)(size_t n, const meld_uk_hist_args *a);
    void (*philox_bits)(size_t n, size_t i0, const meld_uk_philox_args *a);
    meld_philox_u24_ukernel philox_u24;
    void (*gram)(size_t n, const meld_uk_gram_args *a);
    void (*l1)(size_t n, size_t i0, const meld_uk_l1_args *a);
    void (*apply)(size_t n, const meld_uk_apply_args *a);
    meld_gemm_ukernel gemm;
    meld_gemm_packed_ukernel gemm_packed;
    size_t gemm_mr, gemm_nr;
    /* the caller (moe/grouped.c) spreads prefetches of a task's next k block over the calls of
     * its row tiles after the first (meld_gemm_spread). A tuning choice of the ISA, no change in
     * results */
    int gemm_spread_prefetch;
    /* prefill units of at most this many FLOPs a weight byte run in decode order, rows read in
     * place (moe/grouped.c, rows_streamed); 0: none. A tuning choice too */
    int gemm_stream_flops_per_byte;
} meld_ukernels;

extern const meld_ukernels meld_ukernels_scalar;
extern const meld_ukernels meld_ukernels_avx2;
extern const meld_ukernels meld_ukernels_avx512;
extern const meld_ukernels meld_ukernels_avx512bf16;
#endif
