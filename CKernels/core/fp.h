/* Scalar IEEE conversions between f32, f16 and bf16, bit-exact with the hardware paths:
 * round to nearest even, subnormals kept, NaN quieted with its upper payload bits. */
#ifndef MELD_FP_H
#define MELD_FP_H
#include <stdint.h>
#include <string.h>

static inline uint32_t meld_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float meld_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float meld_bf16_to_f32(uint16_t h) { return meld_bits_f32((uint32_t)h << 16); }

static inline uint16_t meld_f32_to_bf16(float f) {
    uint32_t b = meld_f32_bits(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static inline float meld_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 0x1p-24f; /* exact: m < 2^10 */
        return meld_bits_f32(meld_f32_bits(v) | sign);
    }
    if (e == 31) return meld_bits_f32(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0));
    return meld_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

static inline uint16_t meld_f32_to_f16(float f) {
    uint32_t x = meld_f32_bits(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    uint32_t o;
    if (x >= 0x47800000u) { /* >= 65536: Inf, or NaN */
        o = x > 0x7f800000u ? (0x7e00u | ((x >> 13) & 0x3ffu)) : 0x7c00u;
    } else if (x < 0x38800000u) { /* f16 subnormal or zero: let the FPU round (RNE) */
        float magic = meld_bits_f32(126u << 23); /* 0.5: aligns 2^-24 with the last bit */
        o = meld_f32_bits(meld_bits_f32(x) + magic) - meld_f32_bits(magic);
    } else {
        uint32_t odd = (x >> 13) & 1u;
        x += 0xc8000fffu + odd; /* rebias exponent (-112 << 23) and round */
        o = x >> 13;
    }
    return (uint16_t)(o | sign);
}
#endif
