/* SPDX-License-Identifier: MIT */
/*
 * Impairments on a flow's bytes (impair.h): what a session gets when it
 * opens, and, for a flow that got any, how much it may send now and when
 * to look again. Nothing here sleeps or reads the clock: the model passes
 * its cached time.
 */
#include <stdlib.h>
#include <string.h>

#include "impair.h"

/* A byte in the token bucket's unit: its 8 bits times the 1,000,000 us of
 * the second the rate is per (a us of a b bit/s rate adds b units). */
#define BYTE_U 8000000ull

uint64_t rb__rng_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

bool rb__rng_chance(uint64_t *state, unsigned p)
{
	if (p == 0)
		return false;
	if (p >= RB_PROB_ONE)
		return true;
	/* The top 32 bits scaled to millionths. */
	return ((rb__rng_next(state) >> 32) * RB_PROB_ONE >> 32) < p;
}

unsigned rb__rng_upto(uint64_t *state, unsigned n)
{
	return (unsigned)(((rb__rng_next(state) >> 32) * ((uint64_t)n + 1)) >> 32);
}

uint64_t rb__rng_delay_us(uint64_t *state, unsigned delay_ms, unsigned jitter_ms)
{
	uint64_t us = rb__ms_to_us(delay_ms);

	if (jitter_ms)
		us += rb__rng_upto(state, jitter_ms * RB_US_PER_MS);
	return us;
}

uint64_t rb__rng_seed(uint64_t seed, unsigned worker, uint64_t n)
{
	uint64_t s = seed ^ ((uint64_t)worker << 48) ^ (n * 0xd1b54a32d192ed03ull);

	/* Two rounds, so neighbouring numbers start far apart. */
	rb__rng_next(&s);
	return rb__rng_next(&s);
}

/* Draw what one flow gets from its settings; false if nothing. */
static bool flow_init(struct rb_flow_impair *fi, const struct rb_impair_flow *c, uint64_t *rng,
                      uint64_t now)
{
	bool any = false;

	memset(fi, 0, sizeof(*fi));
	if (rb__rng_chance(rng, c->delay_p) && (c->delay_ms || c->jitter_ms)) {
		fi->delay = true;
		fi->delay_us = rb__ms_to_us(c->delay_ms);
		fi->jitter_us = rb__ms_to_us(c->jitter_ms);
		any = true;
	}
	if (rb__rng_chance(rng, c->rate_p)) {
		/* 20 ms of the rate, at least a byte; it starts full. */
		uint64_t depth = c->rate_bps / 400;
		fi->rate_bps = c->rate_bps;
		fi->depth_u = (depth ? depth : 1) * BYTE_U;
		fi->tokens_u = fi->depth_u;
		fi->fill_us = now;
		any = true;
	}
	if (rb__rng_chance(rng, c->slice_p)) {
		fi->slice_size = c->slice_size;
		fi->slice_us = rb__ms_to_us(c->slice_ms);
		any = true;
	}
	/* Of the cuts that apply, the one after the fewest bytes. */
	if (rb__rng_chance(rng, c->reset_p)) {
		fi->cut = RB_CUT_RESET;
		fi->cut_after = c->reset_after;
	}
	if (rb__rng_chance(rng, c->close_p) &&
	    (fi->cut == RB_CUT_NONE || c->close_after < fi->cut_after)) {
		fi->cut = RB_CUT_CLOSE;
		fi->cut_after = c->close_after;
	}
	if (rb__rng_chance(rng, c->stall_p) &&
	    (fi->cut == RB_CUT_NONE || c->stall_after < fi->cut_after)) {
		fi->cut = RB_CUT_STALL;
		fi->cut_after = c->stall_after;
	}
	return any || fi->cut != RB_CUT_NONE;
}

struct rb_session_impair *rb__impair_session_new(const struct rb_impair *cfg, unsigned worker,
                                                 uint64_t id, unsigned n_flows, bool relay,
                                                 uint64_t now)
{
	struct rb_session_impair *si = malloc(sizeof(*si));
	bool any = false;

	if (!si)
		return NULL;
	memset(si, 0, offsetof(struct rb_session_impair, flow));
	si->rng = rb__rng_seed(cfg->seed, worker, id);
	si->refuse = rb__rng_chance(&si->rng, cfg->refuse_p);
	if (rb__rng_chance(&si->rng, cfg->accept_delay_p) && cfg->accept_delay_ms)
		si->gate_us = now + rb__ms_to_us(cfg->accept_delay_ms);
	for (unsigned i = 0; i < n_flows && i < 2; i++)
		any |= flow_init(&si->flow[i], relay && i == 0 ? &cfg->up : &cfg->down, &si->rng,
		                 now);
	if (!any && !si->refuse && !si->gate_us) {
		free(si);
		return NULL;
	}
	return si;
}

/*
 * No room for a mark due at `due`: two neighbours become one, at the
 * later's due: the pair that makes the earliest bytes in it wait the least
 * longer (about 2 D / 64 at most when reads come steadily). True if that
 * is the last mark with the new bytes (the caller moves the last mark's
 * due); else a slot was freed.
 */
static bool marks_merge(struct rb_flow_impair *fi, uint64_t due)
{
	const unsigned n = RB_LIMIT_IMPAIR_MARKS;
	unsigned best = n - 1;
	uint64_t cost = due - fi->mark[(fi->m_first + n - 1) % n].first;

	for (unsigned k = 0; k + 1 < n; k++) {
		const struct rb_impair_mark *a = &fi->mark[(fi->m_first + k) % n];
		uint64_t c = fi->mark[(fi->m_first + k + 1) % n].due - a->first;
		if (c < cost) {
			cost = c;
			best = k;
		}
	}
	if (best == n - 1)
		return true;
	/* Mark best goes: its bytes are the next one's (offsets are ends).
	 * The marks before it move up a slot. */
	fi->mark[(fi->m_first + best + 1) % n].first = fi->mark[(fi->m_first + best) % n].first;
	for (unsigned k = best; k > 0; k--)
		fi->mark[(fi->m_first + k) % n] = fi->mark[(fi->m_first + k - 1) % n];
	fi->m_first = (fi->m_first + 1) % n;
	fi->m_n--;
	return false;
}

void rb__impair_arrived(struct rb_flow_impair *fi, uint64_t *rng, size_t n, uint64_t now)
{
	struct rb_impair_mark *last;
	uint64_t due;

	fi->in += n;
	if (!fi->delay)
		return;
	due = now + fi->delay_us + (fi->jitter_us ? rb__rng_upto(rng, (unsigned)fi->jitter_us) : 0);
	if (due < fi->last_due)
		due = fi->last_due; /* never before the bytes ahead of these */
	fi->last_due = due;
	last = fi->m_n ? &fi->mark[(fi->m_first + fi->m_n - 1) % RB_LIMIT_IMPAIR_MARKS] : NULL;
	if (last && last->due == due) {
		last->end = fi->in; /* the same moment: one mark */
		return;
	}
	if (fi->m_n == RB_LIMIT_IMPAIR_MARKS && marks_merge(fi, due)) {
		last->due = due; /* the new bytes' due was the closest: theirs */
		last->end = fi->in;
		return;
	}
	fi->mark[(fi->m_first + fi->m_n) % RB_LIMIT_IMPAIR_MARKS] =
	        (struct rb_impair_mark){.due = due, .end = fi->in, .first = due};
	fi->m_n++;
}

void rb__impair_eof(struct rb_flow_impair *fi, uint64_t *rng, uint64_t now)
{
	uint64_t due;

	if (!fi->delay || fi->eof_due)
		return;
	due = now + fi->delay_us + (fi->jitter_us ? rb__rng_upto(rng, (unsigned)fi->jitter_us) : 0);
	fi->eof_due = due > fi->last_due ? due : fi->last_due;
}

bool rb__impair_eof_ok(const struct rb_flow_impair *fi, uint64_t now)
{
	/* 0: the flow's end did not come from its source (a stop): no wait. */
	return !fi->delay || fi->eof_due <= now;
}

static void release_due(struct rb_flow_impair *fi, uint64_t now)
{
	while (fi->m_n && fi->mark[fi->m_first].due <= now) {
		fi->released = fi->mark[fi->m_first].end;
		fi->m_first = (fi->m_first + 1) % RB_LIMIT_IMPAIR_MARKS;
		fi->m_n--;
	}
}

static void refill(struct rb_flow_impair *fi, uint64_t now)
{
	uint64_t dt = now > fi->fill_us ? now - fi->fill_us : 0;

	if (dt > 1000000)
		dt = 1000000; /* more than fills any bucket; keeps the product small */
	fi->tokens_u += dt * fi->rate_bps;
	if (fi->tokens_u > fi->depth_u)
		fi->tokens_u = fi->depth_u;
	fi->fill_us = now;
}

/* What the bucket must hold before `n` bytes may go: half of it (so a
 * late wake-up still finds room to fill), or all n if fewer; a byte at
 * least. */
static uint64_t rate_need(const struct rb_flow_impair *fi, uint64_t n)
{
	uint64_t need = fi->depth_u / 2;

	if (n * BYTE_U < need)
		need = n * BYTE_U;
	return need < BYTE_U ? BYTE_U : need;
}

size_t rb__impair_allow(struct rb_flow_impair *fi, size_t pending, uint64_t now)
{
	uint64_t allow = pending;

	if (fi->cut != RB_CUT_NONE) {
		uint64_t left = fi->cut_after > fi->out ? fi->cut_after - fi->out : 0;
		if (left < allow)
			allow = left;
	}
	if (fi->delay) {
		release_due(fi, now);
		if (fi->released - fi->out < allow)
			allow = fi->released - fi->out;
	}
	if (fi->slice_size) {
		if (now < fi->slice_next_us)
			allow = 0;
		else if (fi->slice_size < allow)
			allow = fi->slice_size;
	}
	if (fi->rate_bps && allow > 0) {
		/* Nothing until the bucket holds what rb__impair_wake waits
		 * for: else, on a clock finer than a send takes, each send
		 * would find a few bytes' worth and the flow would trickle
		 * out in pieces, a wake-up each (io_uring: its completion). */
		refill(fi, now);
		if (fi->tokens_u < rate_need(fi, allow))
			allow = 0;
		else if (fi->tokens_u / BYTE_U < allow)
			allow = fi->tokens_u / BYTE_U;
	}
	return (size_t)allow;
}

uint64_t rb__impair_wake(const struct rb_flow_impair *fi, size_t pending, uint64_t now)
{
	uint64_t at = now;

	if (fi->cut != RB_CUT_NONE && fi->out >= fi->cut_after)
		return UINT64_MAX;
	if (fi->delay && fi->released == fi->out) {
		if (!fi->m_n)
			return UINT64_MAX;
		if (fi->mark[fi->m_first].due > at)
			at = fi->mark[fi->m_first].due;
	}
	if (fi->slice_size && fi->slice_next_us > at)
		at = fi->slice_next_us;
	if (fi->rate_bps) {
		/* What the other limits let go (as rb__impair_allow sees it),
		 * for which the bucket must fill up to rate_need. */
		uint64_t n = pending, need, t;
		if (fi->cut != RB_CUT_NONE && fi->cut_after - fi->out < n)
			n = fi->cut_after - fi->out;
		if (fi->delay && fi->released > fi->out && fi->released - fi->out < n)
			n = fi->released - fi->out;
		if (fi->slice_size && fi->slice_size < n)
			n = fi->slice_size;
		need = rate_need(fi, n);
		if (fi->tokens_u < need) {
			t = fi->fill_us + (need - fi->tokens_u + fi->rate_bps - 1) / fi->rate_bps;
			if (t > at)
				at = t;
		}
	}
	/* Nothing to wait for but the caller found nothing to send: look
	 * again in a millisecond rather than at once. */
	return at > now ? at : now + RB_US_PER_MS;
}

void rb__impair_sent(struct rb_flow_impair *fi, size_t n, uint64_t now)
{
	fi->out += n;
	if (fi->rate_bps) {
		uint64_t u = (uint64_t)n * BYTE_U;
		fi->tokens_u = fi->tokens_u > u ? fi->tokens_u - u : 0;
	}
	if (fi->slice_size && fi->slice_us && n > 0)
		fi->slice_next_us = now + fi->slice_us;
}

void rb__impair_dropped(struct rb_flow_impair *fi)
{
	fi->in = fi->released = fi->out;
	fi->m_first = fi->m_n = 0;
}
