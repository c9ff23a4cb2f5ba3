/* SPDX-License-Identifier: MIT */
/*
 * select(2) backend, level-triggered. select can only watch descriptors
 * below FD_SETSIZE: add() refuses larger ones and FD_SET is never called
 * with them (the reactor refuses such connections before that; see
 * .max_fd). The listener and control descriptors are opened at start-up,
 * so they are among the lowest.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

#include "poller.h"
#include "timer.h"

struct rb_poller {
	fd_set rd, wr;          /* interest */
	void *ptrs[FD_SETSIZE]; /* ptrs[fd], NULL if not watched */
	int maxfd;              /* highest watched descriptor, -1 if none */
	int cursor;             /* where the next scan starts */
};

static int sl_probe(void)
{
	return 0;
}

static int sl_create(struct rb_poller **out, enum rb_trigger trigger, unsigned hint)
{
	struct rb_poller *p = calloc(1, sizeof(*p));

	(void)trigger;
	(void)hint;
	if (!p)
		return -ENOMEM;
	FD_ZERO(&p->rd);
	FD_ZERO(&p->wr);
	p->maxfd = -1;
	*out = p;
	return 0;
}

static void sl_destroy(struct rb_poller *p)
{
	free(p);
}

static void set_interest(struct rb_poller *p, int fd, uint32_t events)
{
	if (events & RB_READ)
		FD_SET(fd, &p->rd);
	else
		FD_CLR(fd, &p->rd);
	if (events & RB_WRITE)
		FD_SET(fd, &p->wr);
	else
		FD_CLR(fd, &p->wr);
}

static int sl_add(struct rb_poller *p, int fd, void *ptr, uint32_t events)
{
	if (fd < 0)
		return -EBADF;
	if (fd >= FD_SETSIZE)
		return -EMFILE;
	if (p->ptrs[fd])
		return -EEXIST;
	p->ptrs[fd] = ptr;
	set_interest(p, fd, events);
	if (fd > p->maxfd)
		p->maxfd = fd;
	return 0;
}

static int sl_mod(struct rb_poller *p, int fd, void *ptr, uint32_t events)
{
	if (fd < 0 || fd >= FD_SETSIZE || !p->ptrs[fd])
		return -ENOENT;
	p->ptrs[fd] = ptr;
	set_interest(p, fd, events);
	return 0;
}

static int sl_del(struct rb_poller *p, int fd, void *ptr)
{
	(void)ptr;
	if (fd < 0 || fd >= FD_SETSIZE || !p->ptrs[fd])
		return -ENOENT;
	set_interest(p, fd, 0);
	p->ptrs[fd] = NULL;
	while (p->maxfd >= 0 && !p->ptrs[p->maxfd])
		p->maxfd--;
	return 0;
}

static int sl_wait(struct rb_poller *p, struct rb_event *ev, int max, int64_t timeout_us)
{
	fd_set rd = p->rd, wr = p->wr;
	struct timespec ts = rb__timeout_ts(timeout_us);
	int ready, out = 0, n = p->maxfd + 1;

	ready = pselect(n, &rd, &wr, NULL, timeout_us < 0 ? NULL : &ts, NULL);
	if (ready < 0)
		return -errno;
	if (p->cursor >= n)
		p->cursor = 0;
	for (int k = 0; k < n && ready > 0 && out < max; k++) {
		int fd = (p->cursor + k) % n;
		uint32_t r = 0;
		if (FD_ISSET(fd, &rd)) {
			r |= RB_READ;
			ready--;
		}
		if (FD_ISSET(fd, &wr)) {
			r |= RB_WRITE;
			ready--;
		}
		if (!r)
			continue;
		ev[out].ptr = p->ptrs[fd];
		ev[out].events = r;
		out++;
	}
	p->cursor++;
	return out;
}

static bool sl_is_edge(const struct rb_poller *p)
{
	(void)p;
	return false;
}

const struct rb_poller_ops rb__poller_select = {
        .name = "select",
        .engine = RB_ENGINE_SELECT,
        .probe = sl_probe,
        .create = sl_create,
        .destroy = sl_destroy,
        .add = sl_add,
        .mod = sl_mod,
        .del = sl_del,
        .wait = sl_wait,
        .is_edge = sl_is_edge,
        .max_fd = FD_SETSIZE - 1,
};
