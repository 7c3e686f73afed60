/* sha256: FIPS 180-4 SHA-256, for checkpoint integrity (trainer_state.json) and the
 * tokenizer fingerprint in data shards.  Digests are written as 64 lowercase hex
 * characters plus a NUL, the same text `sha256sum` prints. */
#ifndef MOET_SHA256_H
#define MOET_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];      /* running hash state */
    uint64_t nbytes;    /* total bytes fed so far */
    uint8_t  buf[64];   /* partial block */
    size_t   nbuf;
} sha256_ctx;

/* Streaming: init, update any number of times with any sizes, final once. */
void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
void sha256_final(sha256_ctx *c, uint8_t digest[32]);
void sha256_final_hex(sha256_ctx *c, char out[65]);

/* One-shot hash of a buffer. */
void sha256_hex(const void *data, size_t n, char out[65]);

/* The x86 SHA extensions are used when the CPU has them. enable = 0 forces the portable
 * code, 1 uses the instructions if present, -1 only reports. Returns 1 if they are in use. */
int sha256_hardware(int enable);

/* Hash a whole file, read in 1 MiB chunks.  0 ok, -1 with err set (open/read failure). */
int sha256_file(const char *path, char out[65], char *err);

#endif
