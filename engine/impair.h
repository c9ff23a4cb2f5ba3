/* SPDX-License-Identifier: MIT */
/*
 * Impairments (issue 13; DESIGN.md, "Impairment (the test-bed echo)"):
 * faults applied where bytes are released, never by sleeping. A flow that
 * has any keeps a struct rb_flow_impair (a flow without one has a NULL
 * pointer and pays one well-predicted check per read and per flush): the
 * bytes it has taken in and sent, (due time, offset) marks for --delay, a
 * token bucket for --rate, the time of the next --slice, and the byte
 * count after which it is cut. The model asks how much it may send now
 * (rb__impair_allow) and, when that is nothing, when to ask again
 * (rb__impair_wake): the session's impairment timer. Every random choice
 * comes from the session's generator, seeded from --seed, the worker and
 * the session's number (splitmix64).
 */
#ifndef REBOUND_IMPAIR_H
#define REBOUND_IMPAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rb_limits.h"
#include "rebound/rebound.h"
#include "timer.h"

/* The impairments in force: published by the server, read by the workers
 * when a session opens (and per UDP batch). Never changed once published;
 * a replaced one is kept until the server is destroyed. */
struct rb_impair_set {
	struct rb_impair cfg; /* seed resolved */
	bool session;         /* anything for TCP and UNIX sessions */
	bool udp;             /* anything for datagrams */
	struct rb_impair_set *older;
};

enum rb_impair_cut { RB_CUT_NONE, RB_CUT_RESET, RB_CUT_CLOSE, RB_CUT_STALL };

struct rb_impair_mark {
	uint64_t due;   /* us */
	uint64_t end;   /* the flow's input offset up to which bytes are due then */
	uint64_t first; /* the due of its earliest bytes (marks merge when full) */
};

struct rb_flow_impair {
	/* What this flow got, drawn when the session opened. Times in us
	 * (the configured ones are whole ms). */
	uint64_t delay_us, jitter_us;
	bool delay;
	uint64_t rate_bps;          /* 0: no bucket */
	uint64_t depth_u, tokens_u; /* the bucket, in bits x us/s: 8,000,000 a byte */
	uint64_t fill_us;           /* when tokens were last added */
	unsigned slice_size;        /* 0: no slicing */
	uint64_t slice_us;
	uint64_t slice_next_us; /* no write before */
	enum rb_impair_cut cut;
	uint64_t cut_after;
	/* Progress: bytes taken in, sent, and released by the delay. */
	uint64_t in, out, released;
	uint64_t last_due; /* due times never go back: nothing is reordered */
	uint64_t eof_due;  /* the source's FIN passes on no earlier (0: not seen) */
	bool held;         /* bytes wait for the timer, not for the socket */
	bool cut_done;
	unsigned m_first, m_n;
	struct rb_impair_mark mark[RB_LIMIT_IMPAIR_MARKS];
};

struct rb_session;

struct rb_session_impair {
	struct rb_session *owner;
	uint64_t rng;
	struct rb_timer timer;
	uint64_t gate_us; /* --accept-delay: not served before (0: open) */
	bool refuse;
	uint64_t reset_by; /* a reset-after waits for the sink's queue to empty, until then */
	struct rb_flow_impair flow[2];
};

/* The generator: splitmix64. */
uint64_t rb__rng_next(uint64_t *state);
/* True with probability p (millionths); draws nothing at 0 or certainty. */
bool rb__rng_chance(uint64_t *state, unsigned p);
/* Uniform in [0, n]. */
unsigned rb__rng_upto(uint64_t *state, unsigned n);
/* A delay of delay_ms plus jitter uniform in [0, jitter_ms], in us (one draw,
 * none without jitter). */
uint64_t rb__rng_delay_us(uint64_t *state, unsigned delay_ms, unsigned jitter_ms);
/* A stream's seed from the run's seed, a worker and a number. */
uint64_t rb__rng_seed(uint64_t seed, unsigned worker, uint64_t n);

/* What a session of n_flows flows (flow 0 up for a relay, else down)
 * gets; NULL if nothing applies to it (or no memory: then it is served
 * unimpaired). Every `now` here is the worker's clock in us. */
struct rb_session_impair *rb__impair_session_new(const struct rb_impair *cfg, unsigned worker,
                                                 uint64_t id, unsigned n_flows, bool relay,
                                                 uint64_t now);

/* n bytes entered the flow at now. */
void rb__impair_arrived(struct rb_flow_impair *fi, uint64_t *rng, size_t n, uint64_t now);
/* The source's FIN arrived at now. */
void rb__impair_eof(struct rb_flow_impair *fi, uint64_t *rng, uint64_t now);
/* May the FIN be passed on now? */
bool rb__impair_eof_ok(const struct rb_flow_impair *fi, uint64_t now);
/* Bytes of pending that may be sent now (0: held). */
size_t rb__impair_allow(struct rb_flow_impair *fi, size_t pending, uint64_t now);
/* When to ask again after rb__impair_allow said 0 (UINT64_MAX: never). */
uint64_t rb__impair_wake(const struct rb_flow_impair *fi, size_t pending, uint64_t now);
/* n bytes were sent at now. */
void rb__impair_sent(struct rb_flow_impair *fi, size_t n, uint64_t now);
/* The flow's pending bytes were dropped. */
void rb__impair_dropped(struct rb_flow_impair *fi);
/* Is the flow due to be cut (reset, closed or stalled) now? */
static inline bool rb__impair_cut_due(const struct rb_flow_impair *fi)
{
	return fi->cut != RB_CUT_NONE && !fi->cut_done && fi->out >= fi->cut_after;
}

/* impair_conf.c */
bool rb__impair_flow_any(const struct rb_impair_flow *f);
bool rb__impair_session_any(const struct rb_impair *imp);
bool rb__impair_udp_any(const struct rb_impair *imp);
/* Ranges, and what applies to what (relay: --forward; echo: the echo service). */
int rb__impair_check(const struct rb_impair *imp, bool relay, bool echo, char *err, size_t errlen);
/* The flag of the first impairment configured, for a refusal. */
const char *rb__impair_first_flag(const struct rb_impair *imp);

#endif
