/* SPDX-License-Identifier: MIT */
/* epoll backend, edge-triggered (the main engine) or level-triggered. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "poller.h"

#define EPOLL_BATCH 256

struct rb_poller {
	int epfd;
	bool edge;
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

static int ep_wait(struct rb_poller *p, struct rb_event *ev, int max, int timeout_ms)
{
	int n;

	if (max > EPOLL_BATCH)
		max = EPOLL_BATCH;
	n = epoll_wait(p->epfd, p->evs, max, timeout_ms);
	if (n < 0)
		return -errno;
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
