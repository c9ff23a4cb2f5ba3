/* SPDX-License-Identifier: MIT */
/*
 * Per-worker timers (timer.c): an intrusive binary min-heap ordered by
 * deadline (ms on the rb__now_ms clock), ties in the order they were armed.
 * Arming and cancelling never allocate, so they cannot fail; both are
 * O(log n). The earliest deadline bounds the model's wait (epoll_wait's
 * timeout, an io_uring timeout); nothing polls the clock to find work.
 * One thread owns a heap: no locking.
 */
#ifndef REBOUND_TIMER_H
#define REBOUND_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rb_timer;
typedef void rb_timer_fn(struct rb_timer *t, void *arg);

struct rb_timer {
	struct rb_timer *parent, *left, *right;
	uint64_t when; /* deadline, ms */
	uint64_t seq;  /* arming order: equal deadlines fire first-armed first */
	rb_timer_fn *fn;
	bool armed;
};

struct rb_timers {
	struct rb_timer *root;
	size_t n;
	uint64_t seq;
};

void rb__timers_init(struct rb_timers *h);
/* A timer that calls fn when it fires; not armed. */
void rb__timer_init(struct rb_timer *t, rb_timer_fn *fn);
/* Fire at `when` (ms); an armed timer is moved. */
void rb__timer_arm(struct rb_timers *h, struct rb_timer *t, uint64_t when);
/* Disarm; a timer that is not armed is left alone. */
void rb__timer_cancel(struct rb_timers *h, struct rb_timer *t);

static inline bool rb__timer_armed(const struct rb_timer *t)
{
	return t->armed;
}

/* The earliest deadline, or UINT64_MAX if no timer is armed. */
uint64_t rb__timers_next(const struct rb_timers *h);
/* Milliseconds from now to the earliest deadline (0 if due), -1 if none;
 * at most INT32_MAX. */
int rb__timers_timeout(const struct rb_timers *h, uint64_t now);
/* Fire, in deadline order, every timer due at `now` (each is disarmed
 * before its fn runs, which may arm it again, for a later time or not:
 * one armed for `now` or earlier fires in the next call). Returns how
 * many fired. */
unsigned rb__timers_run(struct rb_timers *h, uint64_t now, void *arg);

#endif
