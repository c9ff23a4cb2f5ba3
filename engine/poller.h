/* SPDX-License-Identifier: MIT */
/*
 * The poller interface: a backend only translates OS readiness into
 * RB_READ|RB_WRITE|RB_HUP for an opaque pointer. Every decision about what to
 * read, write, pause or close lives in the reactor (reactor.c).
 */
#ifndef REBOUND_POLLER_H
#define REBOUND_POLLER_H

#include <stdbool.h>
#include <stdint.h>

#include "rebound/rebound.h"

enum {
	RB_READ = 1u << 0,
	RB_WRITE = 1u << 1,
	RB_HUP = 1u << 2, /* peer hung up or error: read and write will tell which */
	RB_ERR = 1u << 3, /* shut both ways or an error (EPOLLHUP/EPOLLERR): also sets RB_HUP */
};

struct rb_event {
	void *ptr;
	uint32_t events;
};

struct rb_poller;

struct rb_poller_ops {
	const char *name;
	enum rb_engine engine;
	/* 0 if this backend can run here, else -errno. */
	int (*probe)(void);
	/* Create a poller for about `hint` descriptors; 0 or -errno. */
	int (*create)(struct rb_poller **out, enum rb_trigger trigger, unsigned hint);
	void (*destroy)(struct rb_poller *p);
	/* Start watching fd for `events`, reporting ptr. 0 or -errno. */
	int (*add)(struct rb_poller *p, int fd, void *ptr, uint32_t events);
	/* Change the interest set (level-triggered backends only). 0 or -errno. */
	int (*mod)(struct rb_poller *p, int fd, void *ptr, uint32_t events);
	/* Stop watching fd (before close). 0 or -errno. */
	int (*del)(struct rb_poller *p, int fd, void *ptr);
	/* Wait up to timeout_us (-1 forever), never returning before it for
	 * want of events; number of events, or -errno (-EINTR too). */
	int (*wait)(struct rb_poller *p, struct rb_event *ev, int max, int64_t timeout_us);
	/* True if interest never needs changing (edge-triggered: register once). */
	bool (*is_edge)(const struct rb_poller *p);
	/* Busy-poll the sockets it watches for up to usec before sleeping
	 * (optional: NULL where the backend has no such thing). 0 or -errno. */
	int (*busy_poll)(struct rb_poller *p, unsigned usec);
	/* Highest descriptor this backend can watch, or -1 for no limit. */
	int max_fd;
};

extern const struct rb_poller_ops rb__poller_epoll;

/* epoll_wait with a timeout in us (-1 forever): epoll_pwait2 (Linux 5.11),
 * or, where the kernel lacks it (ENOSYS, remembered in *no_pwait2),
 * epoll_wait with the timeout rounded up to whole ms. Events or -errno. */
struct epoll_event;
int rb__epoll_wait_us(int epfd, struct epoll_event *evs, int max, int64_t timeout_us,
                      bool *no_pwait2);
extern const struct rb_poller_ops rb__poller_poll;
extern const struct rb_poller_ops rb__poller_select;

/* The readiness backends, in preference order (libevent's eventops[]). */
const struct rb_poller_ops *rb__poller_find(enum rb_engine e);

#endif
