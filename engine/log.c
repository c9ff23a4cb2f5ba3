/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "internal.h"

int rb__verbosity = RB_LOG_INFO;

void rb__log(int level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	int n;

	if (level > rb__verbosity)
		return;
	n = snprintf(line, sizeof(line), "rebound: ");
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	/* One write per line, so lines from several workers never interleave. */
	fprintf(stderr, "%s\n", line);
}

uint64_t rb__now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool rb__ratelimit_ok(struct rb_ratelimit *rl, unsigned *suppressed)
{
	time_t now = (time_t)(rb__now_ms() / 1000u);

	if (rl->last && now == rl->last) {
		rl->suppressed++;
		return false;
	}
	rl->last = now;
	*suppressed = rl->suppressed;
	rl->suppressed = 0;
	return true;
}
