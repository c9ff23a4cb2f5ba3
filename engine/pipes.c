/* SPDX-License-Identifier: MIT */
/*
 * Splice pipes: taken while a flow has bytes to move, from a per-worker
 * cache. A pipe goes back to the cache only if it is verifiably empty; one
 * with bytes left in it is closed, so no bug could ever hand a peer someone
 * else's bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "pipes.h"

int rb__pipe_max_size(void)
{
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
	int v = -1;

	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

void rb__pipe_cache_init(struct rb_pipe_cache *pc, size_t size)
{
	pc->n = 0;
	pc->size = size;
}

int rb__pipe_get(struct rb_pipe_cache *pc, struct rb_pipe *p)
{
	int fds[2], sz;

	if (pc->n > 0) {
		*p = pc->idle[--pc->n];
		p->bytes = 0;
		return 1;
	}
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
		return -errno;
	/* Best effort: the kernel may refuse a large pipe (per-user page limits);
	 * F_GETPIPE_SZ tells what we really have. */
	if (pc->size)
		fcntl(fds[1], F_SETPIPE_SZ, (int)pc->size);
	sz = fcntl(fds[1], F_GETPIPE_SZ);
	*p = (struct rb_pipe){.rd = fds[0], .wr = fds[1], .cap = sz > 0 ? (size_t)sz : 65536};
	return 0;
}

void rb__pipe_put(struct rb_pipe_cache *pc, struct rb_pipe *p, bool verify)
{
	int queued = 0;

	if (p->rd < 0)
		return;
	/* The count is exact (it adds and subtracts what splice reported), so a
	 * drained pipe goes straight back; verify double-checks with FIONREAD. */
	if (p->bytes == 0 && pc->n < RB_PIPE_CACHE &&
	    (!verify || (ioctl(p->rd, FIONREAD, &queued) == 0 && queued == 0))) {
		pc->idle[pc->n++] = *p;
	} else {
		close(p->rd);
		close(p->wr);
	}
	rb__pipe_init(p);
}

void rb__pipe_cache_fini(struct rb_pipe_cache *pc)
{
	while (pc->n > 0) {
		pc->n--;
		close(pc->idle[pc->n].rd);
		close(pc->idle[pc->n].wr);
	}
}
