// SPDX-License-Identifier: MIT
#include "chargen.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

uint8_t rbb_chargen_byte(uint64_t off)
{
	uint64_t line = off / RBB_CHARGEN_LINE_BYTES;
	unsigned col = (unsigned)(off % RBB_CHARGEN_LINE_BYTES);

	if (col == RBB_CHARGEN_LINE)
		return '\r';
	if (col == RBB_CHARGEN_LINE + 1)
		return '\n';
	return (uint8_t)(RBB_CHARGEN_FIRST + (line + col) % RBB_CHARGEN_CHARS);
}

/*
 * Two periods back to back, so that any piece of up to one period starting
 * anywhere in the first is contiguous: filling is memcpy and checking is
 * memcmp, one period at a time.
 */
static uint8_t ring[2 * RBB_CHARGEN_PERIOD];
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;

static void ring_init(void)
{
	for (unsigned i = 0; i < sizeof(ring); i++)
		ring[i] = rbb_chargen_byte(i);
}

void rbb_chargen_prepare(void)
{
	pthread_once(&ring_once, ring_init);
}

static const uint8_t *ring_at(uint64_t off)
{
	rbb_chargen_prepare();
	return ring + off % RBB_CHARGEN_PERIOD;
}

void rbb_chargen_fill(uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		size_t n = len < RBB_CHARGEN_PERIOD ? len : RBB_CHARGEN_PERIOD;

		memcpy(p, ring_at(off), n);
		p += n;
		off += n;
		len -= n;
	}
}

size_t rbb_chargen_check(uint64_t off, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t i = 0;

	while (i < len) {
		size_t n = len - i < RBB_CHARGEN_PERIOD ? len - i : RBB_CHARGEN_PERIOD;
		const uint8_t *want = ring_at(off + i);

		if (memcmp(p + i, want, n)) {
			for (size_t k = 0; k < n; k++)
				if (p[i + k] != want[k])
					return i + k;
		}
		i += n;
	}
	return len;
}

const char *rbb_chargen_where(uint64_t off, char *buf, size_t len)
{
	snprintf(buf, len, "line %llu, column %u",
	         (unsigned long long)(off / RBB_CHARGEN_LINE_BYTES),
	         (unsigned)(off % RBB_CHARGEN_LINE_BYTES));
	return buf;
}
