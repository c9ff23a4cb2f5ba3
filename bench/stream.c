// SPDX-License-Identifier: MIT
#include "stream.h"

#include <errno.h>
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

/* Words are laid out little-endian whatever the host, so streams are portable. */
static void store_le(uint8_t *p, uint64_t w)
{
	for (unsigned i = 0; i < 8; i++)
		p[i] = (uint8_t)(w >> (8 * i));
}

uint64_t rbb_stream_seed(uint64_t run_seed, uint64_t index)
{
	return mix64(run_seed ^ mix64(index + 1));
}

uint8_t rbb_stream_byte(uint64_t seed, uint64_t off)
{
	return (uint8_t)(word_at(seed, off / 8) >> (8 * (off % 8)));
}

void rbb_stream_fill(uint64_t seed, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	uint64_t block = off / 8;
	uint8_t w[8];

	/* Head up to the next word boundary. */
	while (len && off % 8) {
		*p++ = rbb_stream_byte(seed, off++);
		len--;
	}
	block = off / 8;
	while (len >= 8) {
		store_le(p, word_at(seed, block++));
		p += 8;
		len -= 8;
	}
	if (len) {
		store_le(w, word_at(seed, block));
		memcpy(p, w, len);
	}
}

size_t rbb_stream_check(uint64_t seed, uint64_t off, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t i = 0;
	uint8_t w[8];

	while (i < len && (off + i) % 8) {
		if (p[i] != rbb_stream_byte(seed, off + i))
			return i;
		i++;
	}
	while (len - i >= 8) {
		store_le(w, word_at(seed, (off + i) / 8));
		if (memcmp(w, p + i, 8)) {
			for (unsigned k = 0; k < 8; k++)
				if (w[k] != p[i + k])
					return i + k;
		}
		i += 8;
	}
	while (i < len) {
		if (p[i] != rbb_stream_byte(seed, off + i))
			return i;
		i++;
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
