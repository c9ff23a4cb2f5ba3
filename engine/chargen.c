/* SPDX-License-Identifier: MIT */
/*
 * The character generator's stream (RFC 864): lines of 72 of the 95
 * printable ASCII characters (32 to 126), each ended by CR LF, each line
 * starting one character further on: line 0 starts with ' ', line 1 with
 * '!', and line 95 is line 0 again, so the stream repeats every 95 lines
 * (7030 bytes), as BSD inetd's chargen does. Kept twice over, so any
 * RB_CHARGEN_PERIOD bytes from any offset are contiguous.
 */
#include <pthread.h>

#include "internal.h"

static unsigned char pattern[2 * RB_CHARGEN_PERIOD];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void build(void)
{
	for (unsigned line = 0; line < 2 * RB_CHARGEN_LINES; line++) {
		unsigned char *p = pattern + (size_t)line * RB_CHARGEN_LINE;
		for (unsigned j = 0; j < RB_CHARGEN_LINE - 2; j++)
			p[j] = (unsigned char)(32 + (line + j) % 95);
		p[RB_CHARGEN_LINE - 2] = '\r';
		p[RB_CHARGEN_LINE - 1] = '\n';
	}
}

const unsigned char *rb__chargen_pattern(void)
{
	pthread_once(&once, build);
	return pattern;
}
