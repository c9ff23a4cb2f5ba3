/* SPDX-License-Identifier: MIT */
/* epoll backend, edge-triggered (the main engine) or level-triggered. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "poller.h"
#include "timer.h"

#define EPOLL_BATCH 256

struct rb_poller {
	int epfd;
	bool edge;
	bool no_pwait2; /* the kernel lacks epoll_pwait2: epoll_wait, whole ms */
	struct epoll_event evs[EPOLL_BATCH];
};

static int ep_probe(void)
{
	int fd = epoll_create1(EPOLL_CLOEXEC);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static int ep_create(struct rb_poller **out, enum rb_trigger trigger, unsigned hint)
{
	struct rb_poller *p = calloc(1, sizeof(*p));

	(void)hint;
	if (!p)
		return -ENOMEM;
	p->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (p->epfd < 0) {
		int err = -errno;
		free(p);
		return err;
	}
	p->edge = trigger == RB_TRIGGER_EDGE;
	*out = p;
	return 0;
}

static void ep_destroy(struct rb_poller *p)
{
	if (!p)
		return;
	close(p->epfd);
	free(p);
}

static uint32_t to_epoll(const struct rb_poller *p, uint32_t events)
{
	uint32_t e = 0;

	/* RDHUP only with read interest: level-triggered it would fire forever
	 * while a half-closed connection flushes its output. */
	if (events & RB_READ)
		e |= EPOLLIN | EPOLLRDHUP;
	if (events & RB_WRITE)
		e |= EPOLLOUT;
	if (p->edge)
		e |= EPOLLET;
	return e;
}

static int ep_ctl(struct rb_poller *p, int op, int fd, void *ptr, uint32_t events)
{
	struct epoll_event ev = {.events = to_epoll(p, events), .data.ptr = ptr};

	return epoll_ctl(p->epfd, op, fd, &ev) < 0 ? -errno : 0;
}

static int ep_add(struct rb_poller *p, int fd, void *ptr, uint32_t events)
{
	return ep_ctl(p, EPOLL_CTL_ADD, fd, ptr, events);
}

static int ep_mod(struct rb_poller *p, int fd, void *ptr, uint32_t events)
{
	return ep_ctl(p, EPOLL_CTL_MOD, fd, ptr, events);
}

static int ep_del(struct rb_poller *p, int fd, void *ptr)
{
	(void)ptr;
	return epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

/* epoll_pwait2 (Linux 5.11): glibc 2.35 wraps it; older ones, the system call. */
static int pwait2(int epfd, struct epoll_event *evs, int max, int64_t timeout_us)
{
#if defined(__GLIBC_PREREQ) && __GLIBC_PREREQ(2, 35)
	struct timespec ts = rb__timeout_ts(timeout_us);

	return epoll_pwait2(epfd, evs, max, timeout_us < 0 ? NULL : &ts, NULL);
#elif defined(__NR_epoll_pwait2)
	struct __kernel_timespec ts = rb__timeout_kts(timeout_us);

	return (int)syscall(__NR_epoll_pwait2, epfd, evs, max, timeout_us < 0 ? NULL : &ts, NULL,
	                    (size_t)0);
#else
	(void)epfd, (void)evs, (void)max, (void)timeout_us;
	errno = ENOSYS;
	return -1;
#endif
}

int rb__epoll_wait_us(int epfd, struct epoll_event *evs, int max, int64_t timeout_us,
                      bool *no_pwait2)
{
	int n;

	/* Without a timeout (or with none left) the two are the same call. */
	if (timeout_us <= 0 || *no_pwait2) {
		n = epoll_wait(epfd, evs, max, rb__timeout_ms_up(timeout_us));
		return n < 0 ? -errno : n;
	}
	n = pwait2(epfd, evs, max, timeout_us);
	if (n < 0 && errno == ENOSYS) {
		*no_pwait2 = true;
		n = epoll_wait(epfd, evs, max, rb__timeout_ms_up(timeout_us));
	}
	return n < 0 ? -errno : n;
}

static int ep_wait(struct rb_poller *p, struct rb_event *ev, int max, int64_t timeout_us)
{
	int n;

	if (max > EPOLL_BATCH)
		max = EPOLL_BATCH;
	n = rb__epoll_wait_us(p->epfd, p->evs, max, timeout_us, &p->no_pwait2);
	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		uint32_t e = p->evs[i].events, r = 0;
		if (e & EPOLLIN)
			r |= RB_READ;
		if (e & EPOLLOUT)
			r |= RB_WRITE;
		if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			r |= RB_HUP;
		if (e & (EPOLLHUP | EPOLLERR))
			r |= RB_ERR;
		ev[i].ptr = p->evs[i].data.ptr;
		ev[i].events = r;
	}
	return n;
}

/* epoll's busy-poll parameters (EPIOCSPARAMS, Linux 6.9; UAPI
 * include/uapi/linux/eventpoll.h): stable ABI, defined here for older headers. */
struct rb_epoll_params {
	uint32_t busy_poll_usecs;
	uint16_t busy_poll_budget;
	uint8_t prefer_busy_poll;
	uint8_t pad;
};
#ifndef EPIOCSPARAMS
#define EPIOCSPARAMS _IOW(0x8A, 0x01, struct rb_epoll_params)
#endif

static int ep_busy_poll(struct rb_poller *p, unsigned usec)
{
	struct rb_epoll_params ep = {.busy_poll_usecs = usec, .busy_poll_budget = 8};

	return ioctl(p->epfd, EPIOCSPARAMS, &ep) < 0 ? -errno : 0;
}

static bool ep_is_edge(const struct rb_poller *p)
{
	return p->edge;
}

const struct rb_poller_ops rb__poller_epoll = {
        .name = "epoll",
        .engine = RB_ENGINE_EPOLL,
        .probe = ep_probe,
        .create = ep_create,
        .destroy = ep_destroy,
        .add = ep_add,
        .mod = ep_mod,
        .del = ep_del,
        .wait = ep_wait,
        .is_edge = ep_is_edge,
        .busy_poll = ep_busy_poll,
        .max_fd = -1,
};
