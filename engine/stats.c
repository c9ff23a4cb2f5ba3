/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

int rb_stats_json(const struct rb_stats *st, char *buf, size_t len)
{
	size_t off = 0;
	int n;

#define FIELD(name, how, doc)                                                                      \
	n = snprintf(buf + off, off < len ? len - off : 0, "%s\"" #name "\":%" PRIu64,             \
	             off ? "," : "{", st->name);                                                   \
	if (n > 0)                                                                                 \
		off += (size_t)n;
	RB_STATS(FIELD)
#undef FIELD
	n = snprintf(buf + off, off < len ? len - off : 0, "}");
	if (n > 0)
		off += (size_t)n;
	return off < len ? (int)off : (len ? (int)len - 1 : 0);
}

/* Summed over the workers; each field is written by its worker alone. */
#define LOAD(f) __atomic_load_n(&w->st.f, __ATOMIC_RELAXED)

void rb_server_stats(const struct rb_server *srv, struct rb_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < srv->n_workers; i++) {
		const struct rb_worker *w = &srv->workers[i];
		uint64_t v;
#define SUM(name) out->name += v;
#define MAX(name)                                                                                  \
	if (v > out->name)                                                                         \
		out->name = v;
#define FIELD(name, how, doc)                                                                      \
	v = LOAD(name);                                                                            \
	how(name)
		RB_STATS(FIELD)
#undef FIELD
#undef MAX
#undef SUM
	}
}

int rb_server_stats_json(const struct rb_server *srv, char *buf, size_t len)
{
	struct rb_stats st;
	size_t off;
	int n;

	rb_server_stats(srv, &st);
	off = (size_t)rb_stats_json(&st, buf, len);
	if (off == 0 || off + 2 >= len)
		return (int)off;
	/* Reopen the object: the workers' share of the accepts (--reuseport). */
	off--;
	n = snprintf(buf + off, len - off, ",\"accepted_per_worker\":[");
	off += n > 0 ? (size_t)n : 0;
	for (unsigned i = 0; i < srv->n_workers && off < len; i++) {
		n = snprintf(buf + off, len - off, "%s%" PRIu64, i ? "," : "",
		             __atomic_load_n(&srv->workers[i].st.accepted, __ATOMIC_RELAXED));
		off += n > 0 ? (size_t)n : 0;
	}
	if (off < len) {
		n = snprintf(buf + off, len - off, "]}");
		off += n > 0 ? (size_t)n : 0;
	}
	return off < len ? (int)off : (len ? (int)len - 1 : 0);
}
