/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdio.h>

#include "internal.h"

int rb_stats_json(const struct rb_stats *st, char *buf, size_t len)
{
	size_t off = 0;
	int n;

#define FIELD(name, how, doc)                                                              \
	n = snprintf(buf + off, off < len ? len - off : 0, "%s\"" #name "\":%" PRIu64,       \
		     off ? "," : "{", st->name);                                            \
	if (n > 0)                                                                         \
		off += (size_t)n;
	RB_STATS(FIELD)
#undef FIELD
	n = snprintf(buf + off, off < len ? len - off : 0, "}");
	if (n > 0)
		off += (size_t)n;
	return off < len ? (int)off : (len ? (int)len - 1 : 0);
}
