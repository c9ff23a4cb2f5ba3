/* SPDX-License-Identifier: MIT */
/*
 * Per-connection pseudo-random byte streams. Byte k of a stream is a pure
 * function of (seed, k): a window of one precomputed pseudo-random pattern,
 * so the sender sends straight from it and the receiver checks echoed bytes
 * with memcmp, without keeping a copy of what was sent.
 */
#ifndef RBB_STREAM_H
#define RBB_STREAM_H

#include <stddef.h>
#include <stdint.h>

/* Period of every stream: an odd length, a little under 1 MiB. */
#define RBB_STREAM_PERIOD ((1u << 20) - 3)
/* The longest window rbb_stream_window() hands out. */
#define RBB_STREAM_WINDOW (256u * 1024u)

/* Seed of connection @index's stream in a run seeded with @run_seed. */
uint64_t rbb_stream_seed(uint64_t run_seed, uint64_t index);
/* Writes bytes [off, off + len) of stream @seed into @buf. */
void rbb_stream_fill(uint64_t seed, uint64_t off, void *buf, size_t len);
/*
 * Bytes [off, off + len) of stream @seed, in place: valid for the life of
 * the process. NULL when @len is over RBB_STREAM_WINDOW.
 */
const void *rbb_stream_window(uint64_t seed, uint64_t off, size_t len);
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
