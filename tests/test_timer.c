/* SPDX-License-Identifier: MIT */
/* The per-worker timer heap (engine/timer.c), against a plain model; the
 * waits that its deadlines bound, to the microsecond. */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "poller.h"
#include "timer.h"

#define N 512

struct rec {
	struct rb_timer t;
	int id;
};

struct log {
	int ids[4 * N];
	uint64_t when[4 * N];
	size_t n;
};

static void record(struct rb_timer *t, void *arg)
{
	struct rec *r = (struct rec *)(void *)t;
	struct log *lg = arg;

	lg->ids[lg->n] = r->id;
	lg->when[lg->n] = t->when;
	lg->n++;
}

Test(timer, empty_heap)
{
	struct rb_timers h;
	struct log lg = {0};

	rb__timers_init(&h);
	cr_assert_eq(rb__timers_timeout(&h, 100), -1);
	cr_assert_eq(rb__timers_next(&h), UINT64_MAX);
	cr_assert_eq(rb__timers_run(&h, UINT64_MAX, &lg), 0);
}

Test(timer, fires_in_deadline_order_ties_first_armed_first)
{
	static const uint64_t when[] = {50, 10, 30, 10, 20, 50, 5, 30};
	static const int expect[] = {6, 1, 3, 4, 2, 7, 0, 5};
	struct rec r[8];
	struct rb_timers h;
	struct log lg = {0};

	rb__timers_init(&h);
	for (int i = 0; i < 8; i++) {
		rb__timer_init(&r[i].t, record);
		r[i].id = i;
		rb__timer_arm(&h, &r[i].t, when[i]);
	}
	cr_assert_eq(rb__timers_timeout(&h, 0), 5);
	cr_assert_eq(rb__timers_timeout(&h, 7), 0);
	cr_assert_eq(rb__timers_run(&h, 4, &lg), 0);
	cr_assert_eq(rb__timers_run(&h, 20, &lg), 4);
	cr_assert_eq(rb__timers_timeout(&h, 20), 10);
	cr_assert_eq(rb__timers_run(&h, 1000, &lg), 4);
	cr_assert_eq(lg.n, 8);
	for (int i = 0; i < 8; i++)
		cr_expect_eq(lg.ids[i], expect[i], "position %d: timer %d, expected %d", i,
		             lg.ids[i], expect[i]);
	cr_assert_eq(rb__timers_timeout(&h, 1000), -1);
}

Test(timer, cancel_and_rearm)
{
	struct rec a = {.id = 1}, b = {.id = 2}, c = {.id = 3};
	struct rb_timers h;
	struct log lg = {0};

	rb__timers_init(&h);
	rb__timer_init(&a.t, record);
	rb__timer_init(&b.t, record);
	rb__timer_init(&c.t, record);
	rb__timer_cancel(&h, &a.t); /* not armed: nothing happens */
	rb__timer_arm(&h, &a.t, 10);
	rb__timer_arm(&h, &b.t, 20);
	rb__timer_arm(&h, &c.t, 30);
	rb__timer_cancel(&h, &b.t);
	cr_assert(!rb__timer_armed(&b.t));
	rb__timer_arm(&h, &a.t, 40); /* moved, not duplicated */
	cr_assert_eq(rb__timers_next(&h), 30);
	cr_assert_eq(rb__timers_run(&h, 100, &lg), 2);
	cr_assert_eq(lg.n, 2);
	cr_assert_eq(lg.ids[0], 3);
	cr_assert_eq(lg.ids[1], 1);
	cr_assert(!rb__timer_armed(&a.t));
}

/* A timer whose callback arms it again for a time already due must not keep
 * one run going for ever: it fires again in the next run. */
static void rearm_now(struct rb_timer *t, void *arg)
{
	struct rb_timers *h = arg;

	rb__timer_arm(h, t, t->when);
}

Test(timer, rearming_callback_fires_once_per_run)
{
	struct rb_timer t;
	struct rb_timers h;

	rb__timers_init(&h);
	rb__timer_init(&t, rearm_now);
	rb__timer_arm(&h, &t, 5);
	cr_assert_eq(rb__timers_run(&h, 10, &h), 1);
	cr_assert(rb__timer_armed(&t));
	cr_assert_eq(rb__timers_run(&h, 10, &h), 1);
	rb__timer_cancel(&h, &t);
	cr_assert_eq(rb__timers_run(&h, 10, &h), 0);
}

Test(timer, timeout_is_clamped)
{
	struct rb_timer t;
	struct rb_timers h;

	rb__timers_init(&h);
	rb__timer_init(&t, NULL);
	rb__timer_arm(&h, &t, UINT64_MAX - 1);
	cr_assert_eq(rb__timers_timeout(&h, 0), RB_TIMEOUT_MAX_US);
	cr_assert_eq(rb__timeout_ms_up(rb__timers_timeout(&h, 0)), INT32_MAX);
}

/* ---- microsecond deadlines (issue 13: delays exact to well under 1 ms) ---- */

/* Deadlines a few us apart, all within one millisecond, fire in their
 * order and only once due, to the microsecond. */
Test(timer, deadlines_under_a_millisecond_apart)
{
	static const uint64_t when[] = {1000250, 1000001, 1000999, 1000250, 1000000, 1000500};
	static const int expect[] = {4, 1, 0, 3, 5, 2};
	struct rec r[6];
	struct rb_timers h;
	struct log lg = {0};

	rb__timers_init(&h);
	for (int i = 0; i < 6; i++) {
		rb__timer_init(&r[i].t, record);
		r[i].id = i;
		rb__timer_arm(&h, &r[i].t, when[i]);
	}
	cr_assert_eq(rb__timers_timeout(&h, 999999), 1);
	cr_assert_eq(rb__timers_run(&h, 999999, &lg), 0);
	cr_assert_eq(rb__timers_run(&h, 1000000, &lg), 1);
	cr_assert_eq(rb__timers_timeout(&h, 1000000), 1);
	cr_assert_eq(rb__timers_run(&h, 1000249, &lg), 1);
	cr_assert_eq(rb__timers_timeout(&h, 1000249), 1);
	cr_assert_eq(rb__timers_run(&h, 1000250, &lg), 2);
	cr_assert_eq(rb__timers_timeout(&h, 1000250), 250);
	cr_assert_eq(rb__timers_run(&h, 1000998, &lg), 1);
	cr_assert_eq(rb__timers_timeout(&h, 1000998), 1);
	cr_assert_eq(rb__timers_run(&h, 1000999, &lg), 1);
	cr_assert_eq(lg.n, 6);
	for (int i = 0; i < 6; i++) {
		cr_expect_eq(lg.ids[i], expect[i], "position %d: timer %d, expected %d", i,
		             lg.ids[i], expect[i]);
		cr_expect_eq(lg.when[i], when[expect[i]]);
	}
	cr_assert_eq(rb__timers_timeout(&h, 1000999), -1);
}

/* The wait before a deadline is never 0 (a wait that returns at once, and
 * a loop that spins until the deadline), and never ends before it: in us,
 * exactly the time left; in whole ms (epoll_wait, poll), rounded up. */
Test(timer, timeout_is_never_zero_before_due)
{
	struct rb_timer t;
	struct rb_timers h;
	uint64_t due = 5000000;

	rb__timers_init(&h);
	rb__timer_init(&t, NULL);
	rb__timer_arm(&h, &t, due);
	for (uint64_t now = due - 3000; now < due; now++) {
		int64_t us = rb__timers_timeout(&h, now);
		int ms = rb__timeout_ms_up(us);
		cr_assert_eq(us, (int64_t)(due - now), "at %" PRIu64 ": %" PRId64 " us", now, us);
		cr_assert_geq((int64_t)ms * 1000, us, "at %" PRIu64 ": %d ms for %" PRId64 " us",
		              now, ms, us);
		cr_assert_lt((int64_t)ms * 1000, us + 1000,
		             "at %" PRIu64 ": %d ms for %" PRId64 " us", now, ms, us);
		cr_assert_gt(ms, 0);
	}
	cr_assert_eq(rb__timers_timeout(&h, due), 0);
	cr_assert_eq(rb__timers_timeout(&h, due + 7), 0);
	cr_assert_eq(rb__timeout_ms_up(0), 0);
	cr_assert_eq(rb__timeout_ms_up(-1), -1);
	cr_assert_eq(rb__timeout_ms_up(1), 1);
	cr_assert_eq(rb__timeout_ms_up(1000), 1);
	cr_assert_eq(rb__timeout_ms_up(1001), 2);
}

Test(timer, timeout_as_a_timespec_is_exact)
{
	struct timespec ts = rb__timeout_ts(1);

	cr_assert_eq(ts.tv_sec, 0);
	cr_assert_eq(ts.tv_nsec, 1000);
	ts = rb__timeout_ts(2999999);
	cr_assert_eq(ts.tv_sec, 2);
	cr_assert_eq(ts.tv_nsec, 999999000);
	ts = rb__timeout_ts(RB_TIMEOUT_MAX_US);
	cr_assert_eq(ts.tv_sec, (time_t)INT32_MAX / 1000);
	cr_assert_eq(ts.tv_nsec, (long)(INT32_MAX % 1000) * 1000000);
}

/*
 * Each readiness backend, as the reactor drives it: a deadline a fraction
 * of a millisecond away is reached by one wait, with nothing to wake it
 * early (no zero-timeout spin) and no wake before it (the clock has passed
 * the deadline when the wait returns). Whole-ms waits failed both ways:
 * 0 ms (spin) or a wait ending up to a millisecond late or, with the
 * deadline rounded, early.
 */
static void one_wait_reaches_the_deadline(const struct rb_poller_ops *ops)
{
	struct rb_poller *p;
	struct rb_event ev[4];
	struct rb_timers h;
	struct rec r = {.id = 1};
	struct log lg = {0};
	int fds[2];

	cr_assert_eq(pipe(fds), 0);
	cr_assert_eq(ops->create(&p, RB_TRIGGER_LEVEL, 4), 0, "%s", ops->name);
	/* Something watched that never becomes ready. */
	cr_assert_eq(ops->add(p, fds[0], &r, RB_READ), 0, "%s", ops->name);
	rb__timers_init(&h);
	rb__timer_init(&r.t, record);
	for (uint64_t wait_us = 50; wait_us <= 1550; wait_us += 250) {
		uint64_t due = rb__now_us() + wait_us, now;
		unsigned waits = 0;
		rb__timer_arm(&h, &r.t, due);
		lg.n = 0;
		do {
			int n = ops->wait(p, ev, 4, rb__timers_timeout(&h, rb__now_us()));
			cr_assert(n == 0 || n == -EINTR, "%s: wait: %d", ops->name, n);
			now = rb__now_us();
			waits++;
			rb__timers_run(&h, now, &lg);
		} while (lg.n == 0 && waits < 100);
		cr_assert_eq(lg.n, 1, "%s: %" PRIu64 " us: no fire in %u waits", ops->name, wait_us,
		             waits);
		cr_assert_geq(now, due, "%s: %" PRIu64 " us: woke %" PRIu64 " us early", ops->name,
		              wait_us, due - now);
		cr_assert_eq(waits, 1, "%s: %" PRIu64 " us: %u waits to reach the deadline",
		             ops->name, wait_us, waits);
	}
	ops->destroy(p);
	close(fds[0]);
	close(fds[1]);
}

Test(timer, epoll_waits_to_the_microsecond)
{
	one_wait_reaches_the_deadline(&rb__poller_epoll);
}

Test(timer, poll_waits_to_the_microsecond)
{
	one_wait_reaches_the_deadline(&rb__poller_poll);
}

Test(timer, select_waits_to_the_microsecond)
{
	one_wait_reaches_the_deadline(&rb__poller_select);
}

/*
 * Random arms, re-arms, cancels and runs, checked against a model that
 * keeps (deadline, arming order) per timer and fires by linear search.
 */
struct model {
	bool armed[N];
	uint64_t when[N], seq[N], next_seq;
};

static int model_pop(struct model *m, uint64_t now)
{
	int best = -1;

	for (int i = 0; i < N; i++) {
		if (!m->armed[i] || m->when[i] > now)
			continue;
		if (best < 0 || m->when[i] < m->when[best] ||
		    (m->when[i] == m->when[best] && m->seq[i] < m->seq[best]))
			best = i;
	}
	if (best >= 0)
		m->armed[best] = false;
	return best;
}

Test(timer, random_operations_match_a_model)
{
	static struct rec r[N];
	static struct model m;
	static struct log lg;
	struct rb_timers h;
	uint64_t now = 0;
	unsigned seed = 12345;

	rb__timers_init(&h);
	for (int i = 0; i < N; i++) {
		rb__timer_init(&r[i].t, record);
		r[i].id = i;
	}
	for (int step = 0; step < 200000; step++) {
		int op = rand_r(&seed) % 10, i = rand_r(&seed) % N;
		if (op < 5) {
			uint64_t when = now + (uint64_t)(rand_r(&seed) % 200);
			rb__timer_arm(&h, &r[i].t, when);
			m.armed[i] = true;
			m.when[i] = when;
			m.seq[i] = m.next_seq++;
		} else if (op < 8) {
			rb__timer_cancel(&h, &r[i].t);
			m.armed[i] = false;
		} else {
			size_t fired;
			now += (uint64_t)(rand_r(&seed) % 50);
			lg.n = 0;
			fired = rb__timers_run(&h, now, &lg);
			cr_assert_eq(fired, lg.n);
			for (size_t k = 0; k < lg.n; k++) {
				int want = model_pop(&m, now);
				cr_assert_eq(lg.ids[k], want, "step %d: fired %d, model %d", step,
				             lg.ids[k], want);
			}
			cr_assert_eq(model_pop(&m, now), -1, "step %d: a due timer did not fire",
			             step);
		}
		size_t armed = 0;
		for (int k = 0; k < N; k++)
			armed += m.armed[k];
		cr_assert_eq(h.n, armed);
		for (int k = 0; k < N; k++)
			cr_assert_eq(rb__timer_armed(&r[k].t), m.armed[k]);
	}
}
