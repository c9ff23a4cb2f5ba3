// SPDX-License-Identifier: MIT
#include "stream.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64's output function: a fast, well-mixed 64-bit bijection. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static uint64_t word_at(uint64_t seed, uint64_t block)
{
	return mix64(seed + block * 0x9e3779b97f4a7c15ULL);
}

/*
 * The pattern: RBB_STREAM_PERIOD pseudo-random bytes, followed by a copy of
 * its first RBB_STREAM_WINDOW bytes so that any window of up to that length
 * is contiguous. Stream @seed is the pattern read from offset seed % period,
 * wrapping: sending is a pointer into it and checking is memcmp, so the
 * client costs little next to the kernel's copies. The period is odd, so it
 * never lines up with message or buffer sizes.
 */
static uint8_t *pattern;
static pthread_once_t pattern_once = PTHREAD_ONCE_INIT;

static void pattern_init(void)
{
	size_t len = RBB_STREAM_PERIOD + RBB_STREAM_WINDOW;

	pattern = malloc(len);
	if (!pattern)
		abort();
	for (size_t i = 0; i < RBB_STREAM_PERIOD; i += 8) {
		uint64_t w = word_at(0x5eedULL, i / 8);

		for (size_t k = 0; k < 8 && i + k < RBB_STREAM_PERIOD; k++)
			pattern[i + k] = (uint8_t)(w >> (8 * k));
	}
	memcpy(pattern + RBB_STREAM_PERIOD, pattern, RBB_STREAM_WINDOW);
}

static const uint8_t *pattern_at(uint64_t seed, uint64_t off)
{
	pthread_once(&pattern_once, pattern_init);
	return pattern + (seed % RBB_STREAM_PERIOD + off % RBB_STREAM_PERIOD) % RBB_STREAM_PERIOD;
}

uint64_t rbb_stream_seed(uint64_t run_seed, uint64_t index)
{
	return mix64(run_seed ^ mix64(index + 1));
}

uint8_t rbb_stream_byte(uint64_t seed, uint64_t off)
{
	return *pattern_at(seed, off);
}

const void *rbb_stream_window(uint64_t seed, uint64_t off, size_t len)
{
	return len <= RBB_STREAM_WINDOW ? pattern_at(seed, off) : NULL;
}

void rbb_stream_fill(uint64_t seed, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		size_t n = len < RBB_STREAM_WINDOW ? len : RBB_STREAM_WINDOW;

		memcpy(p, pattern_at(seed, off), n);
		p += n;
		off += n;
		len -= n;
	}
}

size_t rbb_stream_check(uint64_t seed, uint64_t off, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t i = 0;

	while (i < len) {
		size_t n = len - i < RBB_STREAM_WINDOW ? len - i : RBB_STREAM_WINDOW;
		const uint8_t *want = pattern_at(seed, off + i);

		if (memcmp(p + i, want, n)) {
			for (size_t k = 0; k < n; k++)
				if (p[i + k] != want[k])
					return i + k;
		}
		i += n;
	}
	return len;
}

void rbb_verifier_init(struct rbb_verifier *v, uint64_t seed)
{
	memset(v, 0, sizeof(*v));
	v->seed = seed;
}

int rbb_verifier_feed(struct rbb_verifier *v, const void *buf, size_t len)
{
	size_t bad, ok_len = len;

	if (v->off + len > v->sent)
		ok_len = (size_t)(v->sent - v->off);
	bad = rbb_stream_check(v->seed, v->off, buf, ok_len);
	if (bad < ok_len) {
		v->bad_off = v->off + bad;
		v->expected = rbb_stream_byte(v->seed, v->bad_off);
		v->got = ((const uint8_t *)buf)[bad];
		return -EBADMSG;
	}
	if (ok_len < len) {
		v->bad_off = v->sent;
		v->got = ((const uint8_t *)buf)[ok_len];
		return -EOVERFLOW;
	}
	v->off += len;
	return 0;
}
