/* SPDX-License-Identifier: MIT */
/*
 * The one engine table, in preference order (libevent's eventops[], haproxy's
 * pollers[]): `--engine auto` takes the first entry marked RB_CAP_AUTO whose
 * probe succeeds; an engine named explicitly that cannot run is an error
 * with its probe's reason. Adding an engine: its own file(s), one entry
 * here, and meson.build.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "engines.h"
#include "poller.h"
#include "rb_config.h"

#define READINESS_PROBE(fn, ops)                                                                   \
	static int fn(char *why, size_t whylen)                                                    \
	{                                                                                          \
		int rc = (ops).probe();                                                            \
		if (rc < 0 && why && whylen)                                                       \
			snprintf(why, whylen, "engine '%s' cannot run here: %s", (ops).name,       \
			         strerror(-rc));                                                   \
		return rc;                                                                         \
	}

READINESS_PROBE(epoll_probe, rb__poller_epoll)
READINESS_PROBE(poll_probe, rb__poller_poll)
READINESS_PROBE(select_probe, rb__poller_select)

#if RB_HAVE_URING
#include "uring_probe.h"
#define URING_PROBE rb__uring_probe
#define URING_MODEL (&rb__uring_model)
#else
static int uring_unbuilt(char *why, size_t whylen)
{
	if (why && whylen)
		snprintf(why, whylen,
		         "engine 'uring' is not available: rebound was built without liburing");
	return -ENOTSUP;
}
#define URING_PROBE uring_unbuilt
#define URING_MODEL NULL
#endif

#if RB_HAVE_SOCKMAP
#include "sockmap.h"
#define SOCKMAP_PROBE rb__sockmap_probe
#define SOCKMAP_MODEL (&rb__sockmap_model)
#else
static int sockmap_unbuilt(char *why, size_t whylen)
{
	if (why && whylen)
		snprintf(why, whylen, "engine 'sockmap' is not available: built without libbpf");
	return -ENOTSUP;
}
#define SOCKMAP_PROBE sockmap_unbuilt
#define SOCKMAP_MODEL NULL
#endif

static const struct rb_engine_desc engines[] = {
        {
                .id = RB_ENGINE_EPOLL,
                .name = "epoll",
                .caps = RB_CAP_UDP | RB_CAP_UNIX | RB_CAP_SPLICE | RB_CAP_RELAY | RB_CAP_SERVICES |
                        RB_CAP_TIMEOUTS | RB_CAP_IMPAIR | RB_CAP_UDP_IMPAIR | RB_CAP_AUTO |
                        RB_CAP_LEVEL,
                .probe = epoll_probe,
                .model = &rb__reactor_model,
                .poller = &rb__poller_epoll,
        },
        {
                .id = RB_ENGINE_POLL,
                .name = "poll",
                .caps = RB_CAP_UDP | RB_CAP_UNIX | RB_CAP_SPLICE | RB_CAP_RELAY | RB_CAP_SERVICES |
                        RB_CAP_TIMEOUTS | RB_CAP_IMPAIR | RB_CAP_UDP_IMPAIR | RB_CAP_AUTO |
                        RB_CAP_LEVEL,
                .probe = poll_probe,
                .model = &rb__reactor_model,
                .poller = &rb__poller_poll,
        },
        {
                .id = RB_ENGINE_SELECT,
                .name = "select",
                .caps = RB_CAP_UDP | RB_CAP_UNIX | RB_CAP_SPLICE | RB_CAP_RELAY | RB_CAP_SERVICES |
                        RB_CAP_TIMEOUTS | RB_CAP_IMPAIR | RB_CAP_UDP_IMPAIR | RB_CAP_AUTO |
                        RB_CAP_LEVEL,
                .probe = select_probe,
                .model = &rb__reactor_model,
                .poller = &rb__poller_select,
        },
        {
                /* Not chosen by auto: docs/uring.md shows it behind epoll in some
                 * 1000-connection cells on this kernel. */
                .id = RB_ENGINE_URING,
                .name = "uring",
                .caps = RB_CAP_UDP | RB_CAP_UNIX | RB_CAP_RELAY | RB_CAP_SERVICES |
                        RB_CAP_TIMEOUTS | RB_CAP_IMPAIR | RB_CAP_UDP_IMPAIR,
                .probe = URING_PROBE,
                .model = URING_MODEL,
        },
        {
                /* Needs privileges (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): never
                 * chosen by auto. TCP echo only: AF_UNIX moves one queued skb per
                 * peer send, so bytes that came before the socket joined would
                 * stall (docs/sockmap.md). */
                .id = RB_ENGINE_SOCKMAP,
                .name = "sockmap",
                .caps = 0,
                .probe = SOCKMAP_PROBE,
                .model = SOCKMAP_MODEL,
        },
};

#define N_ENGINES (sizeof(engines) / sizeof(engines[0]))

const struct rb_engine_desc *rb__engine_find(enum rb_engine e)
{
	for (size_t i = 0; i < N_ENGINES; i++)
		if (engines[i].id == e)
			return &engines[i];
	return NULL;
}

const struct rb_engine_desc *rb__engine_auto(void)
{
	for (size_t i = 0; i < N_ENGINES; i++)
		if ((engines[i].caps & RB_CAP_AUTO) && engines[i].probe(NULL, 0) == 0)
			return &engines[i];
	return NULL;
}

const char *rb_engine_name(enum rb_engine e)
{
	const struct rb_engine_desc *d;

	if (e == RB_ENGINE_AUTO)
		return "auto";
	d = rb__engine_find(e);
	return d ? d->name : "?";
}

int rb_engine_parse(const char *s, enum rb_engine *out)
{
	if (!s)
		return -EINVAL;
	if (strcmp(s, "auto") == 0) {
		*out = RB_ENGINE_AUTO;
		return 0;
	}
	for (size_t i = 0; i < N_ENGINES; i++) {
		if (strcmp(s, engines[i].name) == 0) {
			*out = engines[i].id;
			return 0;
		}
	}
	return -EINVAL;
}

size_t rb_engine_list(enum rb_engine *out, size_t max)
{
	for (size_t i = 0; i < N_ENGINES && i < max; i++)
		out[i] = engines[i].id;
	return N_ENGINES;
}

int rb_engine_features(enum rb_engine e, char *buf, size_t len)
{
	static const struct {
		unsigned cap;
		const char *name;
	} names[] = {
	        {RB_CAP_UNIX, "unix"},         {RB_CAP_UDP, "udp"},
	        {RB_CAP_SPLICE, "splice"},     {RB_CAP_RELAY, "relay"},
	        {RB_CAP_SERVICES, "services"}, {RB_CAP_LEVEL, "level"},
	        {RB_CAP_TIMEOUTS, "timeouts"}, {RB_CAP_IMPAIR, "impair"},
	};
	const struct rb_engine_desc *d = rb__engine_find(e);
	size_t off = 0;

	if (!d)
		return -EINVAL;
	if (len)
		buf[0] = '\0';
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(d->caps & names[i].cap) || off >= len)
			continue;
		int n = snprintf(buf + off, len - off, "%s%s", off ? " " : "", names[i].name);
		if (n > 0)
			off += (size_t)n;
	}
	return 0;
}

int rb_engine_available(enum rb_engine e, char *why, size_t whylen)
{
	const struct rb_engine_desc *d;

	if (e == RB_ENGINE_AUTO) {
		if (rb__engine_auto())
			return 0;
		if (why && whylen)
			snprintf(why, whylen, "no engine can run here");
		return -ENOSYS;
	}
	d = rb__engine_find(e);
	if (!d) {
		if (why && whylen)
			snprintf(why, whylen, "engine %d is not an engine of rebound %s", (int)e,
			         RB_VERSION_STRING);
		return -EINVAL;
	}
	return d->probe(why, whylen);
}
