/* SPDX-License-Identifier: MIT */
/*
 * poll(2) backend, level-triggered. The pollfd array stays compact: a
 * descriptor's slot is found through an fd-indexed table and removal swaps
 * the last slot into the hole, so add, mod and del are O(1).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "poller.h"
#include "timer.h"

struct rb_poller {
	struct pollfd *fds;
	void **ptrs;   /* ptrs[i] belongs to fds[i] */
	int *slot;     /* slot[fd] = index in fds, or -1 */
	size_t n, cap; /* used and allocated pollfd slots */
	size_t nslot;  /* entries in slot[] */
	size_t cursor; /* where the next scan starts, so no slot is always last */
};

static int pl_probe(void)
{
	return 0;
}

static int pl_create(struct rb_poller **out, enum rb_trigger trigger, unsigned hint)
{
	struct rb_poller *p = calloc(1, sizeof(*p));

	(void)trigger;
	(void)hint;
	if (!p)
		return -ENOMEM;
	*out = p;
	return 0;
}

static void pl_destroy(struct rb_poller *p)
{
	if (!p)
		return;
	free(p->fds);
	free(p->ptrs);
	free(p->slot);
	free(p);
}

static short to_poll(uint32_t events)
{
	short e = 0;

	if (events & RB_READ)
		e |= POLLIN | POLLRDHUP;
	if (events & RB_WRITE)
		e |= POLLOUT;
	return e;
}

static int grow(struct rb_poller *p, int fd)
{
	if ((size_t)fd >= p->nslot) {
		size_t n = p->nslot ? p->nslot : 64;
		int *s;
		while (n <= (size_t)fd)
			n *= 2;
		s = realloc(p->slot, n * sizeof(*s));
		if (!s)
			return -ENOMEM;
		for (size_t i = p->nslot; i < n; i++)
			s[i] = -1;
		p->slot = s;
		p->nslot = n;
	}
	if (p->n == p->cap) {
		size_t n = p->cap ? p->cap * 2 : 64;
		struct pollfd *f = realloc(p->fds, n * sizeof(*f));
		if (!f)
			return -ENOMEM;
		p->fds = f;
		void **q = realloc(p->ptrs, n * sizeof(*q));
		if (!q)
			return -ENOMEM;
		p->ptrs = q;
		p->cap = n;
	}
	return 0;
}

static int pl_add(struct rb_poller *p, int fd, void *ptr, uint32_t events)
{
	int err;

	if (fd < 0)
		return -EBADF;
	err = grow(p, fd);
	if (err < 0)
		return err;
	if (p->slot[fd] >= 0)
		return -EEXIST;
	p->fds[p->n] = (struct pollfd){.fd = fd, .events = to_poll(events)};
	p->ptrs[p->n] = ptr;
	p->slot[fd] = (int)p->n;
	p->n++;
	return 0;
}

static int pl_mod(struct rb_poller *p, int fd, void *ptr, uint32_t events)
{
	if (fd < 0 || (size_t)fd >= p->nslot || p->slot[fd] < 0)
		return -ENOENT;
	p->fds[p->slot[fd]].events = to_poll(events);
	p->ptrs[p->slot[fd]] = ptr;
	return 0;
}

static int pl_del(struct rb_poller *p, int fd, void *ptr)
{
	size_t i, last;

	(void)ptr;
	if (fd < 0 || (size_t)fd >= p->nslot || p->slot[fd] < 0)
		return -ENOENT;
	i = (size_t)p->slot[fd];
	last = p->n - 1;
	if (i != last) {
		p->fds[i] = p->fds[last];
		p->ptrs[i] = p->ptrs[last];
		p->slot[p->fds[i].fd] = (int)i;
	}
	p->slot[fd] = -1;
	p->n--;
	return 0;
}

static int pl_wait(struct rb_poller *p, struct rb_event *ev, int max, int64_t timeout_us)
{
	struct timespec ts = rb__timeout_ts(timeout_us);
	int ready = ppoll(p->fds, (nfds_t)p->n, timeout_us < 0 ? NULL : &ts, NULL), out = 0;

	if (ready < 0)
		return -errno;
	if (p->cursor >= p->n)
		p->cursor = 0;
	/* Report at most max; level-triggered, the rest are reported next time. */
	for (size_t k = 0; k < p->n && ready > 0 && out < max; k++) {
		size_t i = (p->cursor + k) % p->n;
		short re = p->fds[i].revents;
		uint32_t r = 0;
		if (!re)
			continue;
		ready--;
		if (re & POLLIN)
			r |= RB_READ;
		if (re & POLLOUT)
			r |= RB_WRITE;
		if (re & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
			r |= RB_HUP;
		if (re & (POLLHUP | POLLERR | POLLNVAL))
			r |= RB_ERR;
		ev[out].ptr = p->ptrs[i];
		ev[out].events = r;
		out++;
	}
	p->cursor++;
	return out;
}

static bool pl_is_edge(const struct rb_poller *p)
{
	(void)p;
	return false;
}

const struct rb_poller_ops rb__poller_poll = {
        .name = "poll",
        .engine = RB_ENGINE_POLL,
        .probe = pl_probe,
        .create = pl_create,
        .destroy = pl_destroy,
        .add = pl_add,
        .mod = pl_mod,
        .del = pl_del,
        .wait = pl_wait,
        .is_edge = pl_is_edge,
        .max_fd = -1,
};
