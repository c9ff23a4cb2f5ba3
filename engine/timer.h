/* SPDX-License-Identifier: MIT */
/*
 * Per-worker timers (timer.c): an intrusive binary min-heap ordered by
 * deadline (microseconds on CLOCK_MONOTONIC: rb__now_us), ties in the
 * order they were armed.
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
#include <time.h>
#include <linux/time_types.h>

/* Configured times are whole ms (rebound.h); deadlines are microseconds. */
#define RB_US_PER_MS 1000u
static inline uint64_t rb__ms_to_us(uint64_t ms)
{
	return ms * RB_US_PER_MS;
}

struct rb_timer;
typedef void rb_timer_fn(struct rb_timer *t, void *arg);

struct rb_timer {
	struct rb_timer *parent, *left, *right;
	uint64_t when; /* deadline, us */
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
/* Fire at `when` (us); an armed timer is moved. */
void rb__timer_arm(struct rb_timers *h, struct rb_timer *t, uint64_t when);
/* Disarm; a timer that is not armed is left alone. */
void rb__timer_cancel(struct rb_timers *h, struct rb_timer *t);

static inline bool rb__timer_armed(const struct rb_timer *t)
{
	return t->armed;
}

/* The earliest deadline, or UINT64_MAX if no timer is armed. */
uint64_t rb__timers_next(const struct rb_timers *h);
/* The longest wait rb__timers_timeout returns: INT32_MAX ms (24.8 days). */
#define RB_TIMEOUT_MAX_US ((int64_t)INT32_MAX * RB_US_PER_MS)
/* Microseconds from now to the earliest deadline (0 if due), -1 if none;
 * at most RB_TIMEOUT_MAX_US. Exact: a wait of that long from a clock read
 * after `now` ends at or after the deadline, never before. */
int64_t rb__timers_timeout(const struct rb_timers *h, uint64_t now);

/*
 * A wait's timeout (us, -1 for none) for the system calls that take one:
 * a timespec (epoll_pwait2, ppoll, pselect, io_uring) is exact; whole ms
 * (epoll_wait, poll) are rounded up, so a wait for part of a millisecond
 * is never 0 (which would return at once, before the deadline, and spin).
 */
static inline struct timespec rb__timeout_ts(int64_t us)
{
	return (struct timespec){.tv_sec = (time_t)(us / 1000000),
	                         .tv_nsec = (long)(us % 1000000) * 1000};
}
/* The same for a system call that takes the kernel's own timespec
 * (io_uring_enter, epoll_pwait2 without a libc wrapper). */
static inline struct __kernel_timespec rb__timeout_kts(int64_t us)
{
	struct timespec t = rb__timeout_ts(us);

	return (struct __kernel_timespec){.tv_sec = t.tv_sec, .tv_nsec = t.tv_nsec};
}
static inline int rb__timeout_ms_up(int64_t us)
{
	if (us < 0)
		return -1;
	if (us > RB_TIMEOUT_MAX_US)
		return INT32_MAX;
	return (int)((us + RB_US_PER_MS - 1) / RB_US_PER_MS);
}
/* Fire, in deadline order, every timer due at `now` (each is disarmed
 * before its fn runs, which may arm it again, for a later time or not:
 * one armed for `now` or earlier fires in the next call). Returns how
 * many fired. */
unsigned rb__timers_run(struct rb_timers *h, uint64_t now, void *arg);

#endif
