/* half: bf16 and f16 <-> fp32, bit for bit as torch / numpy, one value or a whole row.
 * fp32 -> bf16 rounds to nearest even (NaN -> 0x7FC0, as torch); fp32 -> f16 rounds to
 * nearest even with subnormals and overflow to inf (a NaN stays a quiet NaN with its sign and
 * top payload bits, as numpy). Widening is exact. */
#ifndef MOET_HALF_H
#define MOET_HALF_H

#include <stddef.h>
#include <stdint.h>

uint16_t half_f32_to_bf16(float x);
float    half_bf16_to_f32(uint16_t h);
uint16_t half_f32_to_f16(float x);
float    half_f16_to_f32(uint16_t h);

/* dst[i] = src[i] widened, n values; src need not be aligned (mapped safetensors data).
 * bf16 is a shift the compiler vectorises; f16 uses F16C where the build has it. */
void half_widen_bf16(float *dst, const void *src, size_t n);
void half_widen_f16(float *dst, const void *src, size_t n);
/* Index of the first non-finite value of n bf16 / f16 values, or -1. */
long half_first_nonfinite(const void *src, size_t n, int is_bf16);

#endif
