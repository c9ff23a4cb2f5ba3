/* SPDX-License-Identifier: MIT */
/*
 * The one engine table (engines.c): every engine, whatever its model, is an
 * entry with a name, a probe, its model's operations and what it can do.
 * Nothing else in the engine names a particular engine.
 */
#ifndef REBOUND_ENGINES_H
#define REBOUND_ENGINES_H

#include <stddef.h>

#include "rebound/rebound.h"

struct rb_worker;
struct rb_poller_ops;

/* What an engine can do beyond TCP stream echo. */
enum {
	RB_CAP_UDP = 1u << 0,        /* UDP listeners */
	RB_CAP_SPLICE = 1u << 1,     /* --copy splice */
	RB_CAP_RELAY = 1u << 2,      /* flows between two sockets (a relay) */
	RB_CAP_AUTO = 1u << 3,       /* --engine auto may choose it */
	RB_CAP_LEVEL = 1u << 4,      /* --trigger level (a readiness engine) */
	RB_CAP_SERVICES = 1u << 5,   /* --service discard, chargen, sockperf */
	RB_CAP_TIMEOUTS = 1u << 6,   /* --idle-timeout, --write-timeout */
	RB_CAP_IMPAIR = 1u << 7,     /* impairments: --delay, --rate, --loss ... (impair.h) */
	RB_CAP_UDP_IMPAIR = 1u << 8, /* ... on UDP listeners too: --loss, --duplicate ... */
	RB_CAP_UNIX = 1u << 9,       /* UNIX stream listeners */
};

/*
 * A model drives one worker: init after the common part (worker.c), run
 * until stopped (0 or -errno), fini (safe after a failed init).
 */
struct rb_model_ops {
	int (*worker_init)(struct rb_worker *w);
	int (*run)(struct rb_worker *w);
	void (*worker_fini)(struct rb_worker *w);
	/* What the model chose at start-up, for the start-up line ("" if nothing). */
	const char *(*detail)(const struct rb_worker *w);
	/* Optional, before any worker: 0, or -errno with a one-line reason in
	 * err for a configuration this model cannot serve here. */
	int (*check)(const struct rb_config *cfg, char *err, size_t errlen);
};

struct rb_engine_desc {
	enum rb_engine id;
	const char *name;
	unsigned caps;
	/* 0 if the engine can run here, else -errno with a one-line reason in why. */
	int (*probe)(char *why, size_t whylen);
	const struct rb_model_ops *model;   /* NULL: not built */
	const struct rb_poller_ops *poller; /* the readiness model's backend, else NULL */
};

/* The entry for e (never AUTO), or NULL. */
const struct rb_engine_desc *rb__engine_find(enum rb_engine e);
/* The first entry that may be chosen by auto and whose probe succeeds, or NULL. */
const struct rb_engine_desc *rb__engine_auto(void);

/* The models (reactor.c, proactor_uring.c). */
extern const struct rb_model_ops rb__reactor_model;
extern const struct rb_model_ops rb__uring_model;

#endif
