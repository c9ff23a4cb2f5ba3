/* SPDX-License-Identifier: MIT */
/*
 * Per-connection pseudo-random byte streams. Byte k of a stream is a pure
 * function of (seed, k), so the sender regenerates any part of it on demand
 * and the receiver checks echoed bytes without keeping a copy of what was
 * sent.
 */
#ifndef RBB_STREAM_H
#define RBB_STREAM_H

#include <stddef.h>
#include <stdint.h>

/* Seed of connection @index's stream in a run seeded with @run_seed. */
uint64_t rbb_stream_seed(uint64_t run_seed, uint64_t index);
/* Writes bytes [off, off + len) of stream @seed into @buf. */
void rbb_stream_fill(uint64_t seed, uint64_t off, void *buf, size_t len);
/* Byte @off of stream @seed. */
uint8_t rbb_stream_byte(uint64_t seed, uint64_t off);
/*
 * Compares @buf with bytes [off, off + len) of stream @seed. Returns the
 * index in @buf of the first byte that differs, or @len if all match.
 */
size_t rbb_stream_check(uint64_t seed, uint64_t off, const void *buf, size_t len);

/* A receiver's position in one stream. */
struct rbb_verifier {
	uint64_t seed;
	uint64_t off;  /* bytes verified so far */
	uint64_t sent; /* bytes the peer may echo (sent so far) */
	/* Filled when rbb_verifier_feed() fails. */
	uint64_t bad_off;
	uint8_t expected;
	uint8_t got;
};

/* Starts verifying stream @seed from offset 0. */
void rbb_verifier_init(struct rbb_verifier *v, uint64_t seed);
/*
 * Verifies the next @len echoed bytes. Returns 0, -EBADMSG on a byte that
 * differs (bad_off, expected and got say which), or -EOVERFLOW when more
 * bytes came back than were sent (bad_off is the first extra byte).
 * The position advances only on success.
 */
int rbb_verifier_feed(struct rbb_verifier *v, const void *buf, size_t len);

#endif
